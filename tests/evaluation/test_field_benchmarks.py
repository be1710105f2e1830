"""XM3600, XTD200, Flickr30k-200 and Multi30k: their publishers' layouts, the two scoring protocols checked against
CLIP_benchmark's own metric code, the reference comparison, and 2-process evaluation against 1 process."""

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from dataset_layouts import write_flickr30k_200, write_multi30k, write_xm3600, write_xtd200
from eval_runs import eval_flags, run_eval
from ports import free_port
from stage_runs import REPO, torchrun_env

import altclip.evaluation.retrieval
from altclip.evaluation.cli import main
from altclip.evaluation.field_sets import FIELD_LOADERS, translated_languages
from altclip.evaluation.loaders import RetrievalSet
from altclip.evaluation.references import load_references
from altclip.evaluation.retrieval import PROTOCOLS, apply_protocol, retrieval_scores

FIELD_RUN = dict(batch_size=3, device="cpu")  # the runs of these tests: small batches, on the CPU


@pytest.mark.parametrize(
    "write, dataset, language, nested, captions",
    [
        (write_xm3600, "xm3600", "de", False, 6),  # images 0..3 carry 1, 2, 1, 2 captions
        (write_xm3600, "xm3600", "zh", True, 6),  # CLIP_benchmark's ROOT/xm3600/
        (write_xtd200, "xtd200", "deu_Latn", False, 4),
        (write_xtd200, "xtd200", "zho_Hans", True, 4),  # NLLB-CLIP's files in a ROOT/xtd200/ sub-folder
        (write_flickr30k_200, "flickr30k_200", "eng_Latn", None, 4),
        (write_multi30k, "multi30k", "cs", None, 4),  # gzip-compressed raw captions
    ],
)
def test_each_layout_is_read_as_published(tmp_path, write, dataset, language, nested, captions):
    write(tmp_path, **({} if nested is None else {"nested": nested}))
    loaded = FIELD_LOADERS[dataset](tmp_path, language)
    assert len(loaded.images) == 4 and all(path.is_file() for path in loaded.images)
    assert len(loaded.captions) == captions == len(loaded.caption_image)
    assert loaded.captions[0].endswith("0" if dataset != "xm3600" else "0 #0")
    assert loaded.caption_image == sorted(loaded.caption_image)  # caption j describes image caption_image[j]


@pytest.mark.parametrize(
    "dataset, write, missing, flags",
    [
        ("xm3600", write_xm3600, "captions.jsonl", []),
        ("xm3600", write_xm3600, "images", []),
        ("xtd200", write_xtd200, "deu_Latn.txt", ["--languages", "deu_Latn"]),
        ("xtd200", write_xtd200, "test_image_names.txt", []),
        ("flickr30k_200", write_flickr30k_200, "filenames.txt", ["--languages", "eng_Latn"]),
        ("multi30k", write_multi30k, "data/task1/raw/test_2016_flickr.cs.gz", []),
        ("multi30k", write_multi30k, "data/task1/image_splits/test_2016_flickr.txt", []),
    ],
)
def test_a_missing_file_is_named_in_one_line(tmp_path, cli, dataset, write, missing, flags):
    data = write(tmp_path / "data")
    shutil.rmtree(data / missing) if (data / missing).is_dir() else (data / missing).unlink()
    # the data is checked before any model loads
    argv = eval_flags("retrieval", tmp_path / "no-model", dataset, data, tmp_path / "out", *flags, **FIELD_RUN)
    cli.refusal(main, *argv, only_line=True, contains=[f"{data / missing} is missing"])


def clip_benchmark_recalls(images: torch.Tensor, texts: torch.Tensor, caption_image: list[int], ks=(1, 5, 10)) -> dict:
    """CLIP_benchmark's own retrieval metric (clip_benchmark/metrics/zeroshot_retrieval.py evaluate(): recall_at_k
    through batchify, > 0, averaged), on given embeddings, in this package's metric names and percent."""
    from clip_benchmark.metrics.zeroshot_retrieval import batchify, recall_at_k

    scores = texts @ images.t()
    positive_pairs = torch.zeros_like(scores, dtype=bool)
    positive_pairs[torch.arange(len(scores)), caption_image] = True
    metrics = {}
    for k in ks:  # its topk needs k <= the number of candidates
        t2i = (batchify(recall_at_k, scores, positive_pairs, 4, "cpu", k=k) > 0).float().mean().item()
        i2t = (batchify(recall_at_k, scores.T, positive_pairs.T, 4, "cpu", k=k) > 0).float().mean().item()
        metrics[f"text_to_image_recall@{k}"], metrics[f"image_to_text_recall@{k}"] = t2i, i2t
    return {name: round(100 * value, 2) for name, value in metrics.items()}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_metrics_equal_clip_benchmark_on_the_same_embeddings(protocol):
    torch.manual_seed(0)
    counts = [1, 3, 2, 1, 2, 3, 1, 1, 2, 2, 1, 3]  # captions per image: 12 images, 22 captions
    caption_image = [image for image, count in enumerate(counts) for _ in range(count)]
    text_vectors = torch.nn.functional.normalize(torch.randn(len(caption_image), 8), dim=-1)
    dataset = RetrievalSet("x", list(range(12)), [str(i) for i in range(len(caption_image))], caption_image)
    scored = apply_protocol(dataset, protocol)
    texts = text_vectors[[int(text) for text in scored.captions]]
    images = torch.nn.functional.normalize(torch.randn(12, 8), dim=-1)
    ours = retrieval_scores(images, texts, scored.caption_image)
    theirs = clip_benchmark_recalls(images, texts, scored.caption_image)
    assert {name: ours[name] for name in theirs} == theirs
    assert len(scored.captions) == (12 if protocol == "first_caption" else 22)


def test_first_caption_and_all_captions_give_the_expected_different_numbers():
    """Image 0's first caption points at image 1; its second caption and image 1's caption are right. Text->image
    R@1: first caption 1 of 2 queries right (50%), all captions 2 of 3 (66.67%); image->text R@1 is 100 both ways."""
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    captions = {"c0": [0.2, 0.98], "c1": [1.0, 0.0], "c2": [0.0, 1.0]}
    dataset = RetrievalSet("crafted", [0, 1], list(captions), [0, 0, 1])
    expected = {"first_caption": 50.0, "all_captions": 66.67}
    for protocol, t2i in expected.items():
        scored = apply_protocol(dataset, protocol)
        texts = torch.tensor([captions[name] for name in scored.captions])
        scores = retrieval_scores(images, texts, scored.caption_image)
        assert scores["text_to_image_recall@1"] == t2i
        assert scores["image_to_text_recall@1"] == 100.0
        assert scores == {**scores, **clip_benchmark_recalls(images, texts, scored.caption_image, ks=(1,))}


def test_xm3600_defaults_to_the_reference_protocol_and_embeds_images_once(tmp_path, tiny_model_dir, monkeypatch):
    data = write_xm3600(tmp_path / "xm3600")
    calls = []
    original = altclip.evaluation.retrieval.Embedder.images
    monkeypatch.setattr(
        altclip.evaluation.retrieval.Embedder, "images", lambda self, *a: calls.append(a) or original(self, *a)
    )
    first = run_eval(
        "retrieval", tiny_model_dir, "xm3600", data, tmp_path / "first", "--languages", "en,de,zh", **FIELD_RUN
    )
    assert len(calls) == 1  # one image set, three languages
    flags = ("--languages", "en,de,zh", "--protocol", "all_captions")
    every = run_eval("retrieval", tiny_model_dir, "xm3600", data, tmp_path / "all", *flags, **FIELD_RUN)
    assert [r["language"] for r in first] == ["en", "de", "zh", "avg"]
    assert {r["protocol"] for r in first} == {"first_caption"} and {r["protocol"] for r in every} == {"all_captions"}
    assert [r["num_captions"] for r in first[:3]] == [4, 4, 4] and [r["num_captions"] for r in every[:3]] == [6, 6, 6]
    for name, value in first[3]["metrics"].items():  # the average over languages, unweighted
        assert value == pytest.approx(sum(r["metrics"][name] for r in first[:3]) / 3, abs=0.01)


def test_translated_sets_default_to_every_language_file(tmp_path, tiny_model_dir):
    data = write_xtd200(tmp_path / "xtd200", nested=True)
    results = run_eval("retrieval", tiny_model_dir, "xtd200", tmp_path / "xtd200", tmp_path / "out", **FIELD_RUN)
    assert [r["language"] for r in results] == ["deu_Latn", "eng_Latn", "zho_Hans", "avg"]
    assert data.is_dir() and results[-1]["dataset"] == "xtd200"


def test_compare_reference_separates_like_from_unlike_in_results_md(tmp_path, tiny_model_dir):
    data = write_xm3600(tmp_path / "xm3600")
    run_eval(
        "retrieval",
        tiny_model_dir,
        "xm3600",
        data,
        tmp_path / "out",
        "--languages",
        "en,de",
        "--compare",
        "reference",
        **FIELD_RUN,
    )
    table = (tmp_path / "out" / "results.md").read_text()
    comparison = table.split("## Compared with published numbers")[1]
    assert "### xm3600 (first_caption, mean of 2: en, de)" in comparison
    assert "No published number was measured like this run" in comparison  # 2 languages, not the 36 published
    like, _, unlike = comparison.partition("Not comparable as they stand")
    table_lines = [line for line in like.splitlines() if line.startswith("| ")]
    assert len(table_lines) == 2 and "(this run)" in table_lines[1]  # the header, then only this run
    xm3600_rows = [row for row in load_references() if row["dataset"] == "xm3600"]
    listed = [line for line in unlike.splitlines() if line.startswith("| ") and "https://" in line]
    assert len(listed) == len(xm3600_rows) and all("this run mean of 2: en, de" in line for line in listed[:6])
    assert (tmp_path / "out" / "results_reference.png").read_bytes()[:4] == b"\x89PNG"


def test_two_processes_give_the_numbers_of_one(tmp_path, tiny_model_dir):
    data = write_xm3600(tmp_path / "xm3600", count=5)
    for key in (3, 4):  # the second process's whole share is unreadable: skipped and counted, as in one process
        (data / "images" / f"{key:016x}.jpg").write_bytes(b"not a jpeg")
    flags = ["--languages", "en,de", "--protocol", "all_captions"]
    single = run_eval("retrieval", tiny_model_dir, "xm3600", data, tmp_path / "one", *flags, **FIELD_RUN)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2"]
    launcher += ["--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "altclip.evaluation.cli"]
    command = launcher + eval_flags("retrieval", tiny_model_dir, "xm3600", data, tmp_path / "two", *flags, **FIELD_RUN)
    done = subprocess.run(command, cwd=REPO, env=torchrun_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    double = json.loads((tmp_path / "two" / "results.json").read_text())["results"]
    assert [r["metrics"] for r in double] == [r["metrics"] for r in single]
    assert [r.get("num_captions") for r in double] == [r.get("num_captions") for r in single]
    assert (double[0]["num_images"], double[0]["skipped_images"]) == (single[0]["num_images"], 2) == (3, 2)
    # inside the run: two processes, each embedding its share of the 5 images (3 + 2), none all of them
    assert double[0]["processes"] == 2 and double[0]["images_embedded_per_process"] == [3, 2]
    assert single[0]["processes"] == 1 and single[0]["images_embedded_per_process"] == [5]


def prepare_with_clip_benchmark(monkeypatch, root: str, dataset: str, languages: tuple[str, ...], count: int = 4):
    """Runs CLIP_benchmark's own create_annotation_file (clip_benchmark/datasets/xtd200.py, flickr30k_200.py) for
    each language, its two downloads (index and caption lines, the images tarball) served from local data; it imports
    torchvision only for its Dataset class, which preparation does not use, so a stand-in module is enough."""
    import importlib
    import types

    from tiny_models import random_images

    vision = types.ModuleType("torchvision.datasets")
    vision.VisionDataset = object
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(sys.modules, "torchvision.datasets", vision)
    module = importlib.import_module(f"clip_benchmark.datasets.{dataset}")
    names = [f"COCO_val2014_{i:012d}.jpg" for i in range(count)]

    def lines(url: str) -> list[str]:
        if url.endswith(module.IMAGE_INDEX_FILENAME):
            return names
        language = url.rsplit("/", 1)[1].removesuffix(".txt")
        return [f"{language} caption {i}" for i in range(count)]

    def images(out_path: str) -> None:  # what extracting its images.tar.gz leaves: out_path/images/<name>
        Path(out_path, "images").mkdir(parents=True)
        for name, image in zip(names, random_images(count, seed=5)):
            image.save(Path(out_path, "images", name))

    monkeypatch.setattr(module, "_get_lines", lines)
    monkeypatch.setattr(module, "_download_images", images)
    for language in languages:
        module.create_annotation_file(root, language)


@pytest.mark.parametrize("dataset, folder", [("xtd200", "xtd200"), ("flickr30k_200", "flickr30k-200")])
def test_a_root_clip_benchmark_prepared_is_read_as_it_left_it(tmp_path, monkeypatch, dataset, folder):
    monkeypatch.chdir(tmp_path)  # CLIP_benchmark is given a relative root, then the folder is moved
    prepare_with_clip_benchmark(monkeypatch, "cb", dataset, ("deu_Latn", "zho_Hans"))
    assert sorted(path.name for path in Path("cb").iterdir()) == sorted(
        [folder, f"{dataset}-deu_Latn.json", f"{dataset}-zho_Hans.json"]
    )  # no index or caption file: only its annotation files and the images
    moved = tmp_path / "elsewhere" / "root"
    moved.parent.mkdir()
    Path("cb").rename(moved)
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert translated_languages(dataset, moved) == ["deu_Latn", "zho_Hans"]
    loaded = FIELD_LOADERS[dataset](moved, "zho_Hans")
    assert loaded.captions == [f"zho_Hans caption {i}" for i in range(4)] and loaded.caption_image == [0, 1, 2, 3]
    assert [path.parent for path in loaded.images] == [moved / folder / "images"] * 4
    assert all(path.is_file() for path in loaded.images)


def test_altclip_eval_scores_a_clip_benchmark_root(tmp_path, monkeypatch, tiny_model_dir):
    prepare_with_clip_benchmark(monkeypatch, str(tmp_path / "cb"), "xtd200", ("deu_Latn", "eng_Latn"))
    results = run_eval("retrieval", tiny_model_dir, "xtd200", tmp_path / "cb", tmp_path / "out", **FIELD_RUN)
    assert [r["language"] for r in results] == ["deu_Latn", "eng_Latn", "avg"]
    assert all(r["num_images"] == 4 and r["skipped_images"] == 0 for r in results[:2])


def test_a_retrieval_set_without_captions_or_images_is_refused():
    with pytest.raises(ValueError, match=r"xtd200_deu_Latn: the set holds 2 images and 0 captions"):
        RetrievalSet("xtd200_deu_Latn", ["a.jpg", "b.jpg"], [], [])


# Data that cannot be scored, each named in one line before any model loads: each case prepares the data and
# returns the --dataset, the data folder, the flags and what the line holds.
def a_caption_file_that_does_not_match_its_image_list(given):
    data = write_xtd200(given.tmp_path / "xtd200")
    (data / "deu_Latn.txt").write_text("ein Foto 0\nein Foto 1\n", encoding="utf-8")  # 2 lines for 4 images
    expected = [f"{data / 'deu_Latn.txt'}: 2 captions for the 4 images of test_image_names.txt"]
    return "xtd200", data, ["--languages", "deu_Latn"], expected


def a_clip_benchmark_root_without_the_asked_language(given):
    prepare_with_clip_benchmark(given.monkeypatch, str(given.tmp_path / "cb"), "xtd200", ("deu_Latn",))
    expected = [f"{given.tmp_path / 'cb' / 'xtd200-fra_Latn.json'} is missing", "has deu_Latn"]
    return "xtd200", given.tmp_path / "cb", ["--languages", "fra_Latn"], expected


def an_xm3600_language_without_captions(given):
    data = write_xm3600(given.tmp_path / "data")
    table = data / "captions.jsonl"
    rows = [json.loads(line) for line in table.read_text(encoding="utf-8").splitlines()]
    for row in rows:
        row["de"] = {"caption": [], "caption/tokenized": []}
    table.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return "xm3600", data, ["--languages", "en,de"], [f"{table}: none of its 4 rows has a 'de' caption"]


UNUSABLE_DATA = [
    a_caption_file_that_does_not_match_its_image_list,
    a_clip_benchmark_root_without_the_asked_language,
    an_xm3600_language_without_captions,
]


@pytest.mark.parametrize("case", UNUSABLE_DATA, ids=[case.__name__ for case in UNUSABLE_DATA])
def test_unusable_data_is_named_in_one_line_before_the_model_loads(case, tmp_path, monkeypatch, cli):
    dataset, data, flags, expected = case(SimpleNamespace(tmp_path=tmp_path, monkeypatch=monkeypatch))
    argv = eval_flags("retrieval", tmp_path / "no-model", dataset, data, tmp_path / "out", *flags, **FIELD_RUN)
    cli.refusal(main, *argv, only_line=True, contains=expected)
