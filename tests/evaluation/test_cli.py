"""``altclip-eval`` end to end on a tiny saved model and small copies of every layout; its numbers checked against
the model's own forward pass, its files, its class-embedding cache and its errors."""

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from dataset_layouts import (
    CLASSES,
    write_caption_table,
    write_chinese_clip_format,
    write_cifar,
    write_image_folder,
    write_imagenet_val,
    write_karpathy,
    write_xtd,
)
from eval_runs import eval_flags, run_eval
from huggingface_hub import constants

import altclip.evaluation.zeroshot
from altclip.common.embedding import Embedder
from altclip.common.images import open_rgb_image
from altclip.evaluation.cli import main
from altclip.evaluation.loaders import load_caption_table, load_image_folder
from altclip.evaluation.prompts import class_prompts, prompts_dir
from modeling_altclip import AltCLIPModel, AltCLIPProcessor


@torch.no_grad()
def model_scores(model_dir, images, texts) -> torch.Tensor:
    """[images, texts] logits straight from AltCLIPModel.forward: the reference the CLI must agree with."""
    model, processor = AltCLIPModel.from_pretrained(model_dir).eval(), AltCLIPProcessor.from_pretrained(model_dir)
    inputs = processor(
        text=texts, images=[open_rgb_image(image) for image in images], padding=True, return_tensors="pt"
    )
    return model(**inputs).logits_per_image


def test_zero_shot_image_folder_in_three_languages(tmp_path, tiny_model_dir):
    data = write_image_folder(tmp_path / "folder", per_class=3)
    results = run_eval(
        "zeroshot",
        tiny_model_dir,
        "image_folder",
        data,
        tmp_path / "out",
        "--languages",
        "en,de,zh",
        "--cache_dir",
        tmp_path / "cache",
    )
    assert [r["language"] for r in results] == ["en", "de", "zh"]
    dataset = load_image_folder(data)
    labels = torch.tensor(dataset.labels)
    for result in results:
        scores = model_scores(tiny_model_dir, dataset.images, CLASSES[result["language"]])
        expected_top1 = 100 * (scores.argmax(dim=1) == labels).float().mean().item()
        assert result["metrics"]["top1"] == pytest.approx(expected_top1, abs=0.01)
        assert result["num_images"] == 9 and result["num_classes"] == 3 and "top5" not in result["metrics"]
    for name in ("results.md", "model_index.json"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert (tmp_path / "out" / "results.png").read_bytes()[:4] == b"\x89PNG"
    index = json.loads((tmp_path / "out" / "model_index.json").read_text())
    assert {"task_type": "zero-shot-image-classification", "metric_type": "top1"}.items() <= index[0].items()
    assert len(list((tmp_path / "cache").glob("classes-*.safetensors"))) == 3


def test_class_embeddings_come_from_the_disk_cache(tmp_path, tiny_model_dir, monkeypatch):
    data = write_image_folder(tmp_path / "folder")
    flags = ("--languages", "de", "--cache_dir", tmp_path / "cache", "--templates", "ein Foto von {c}", "{c}")
    first = run_eval("zeroshot", tiny_model_dir, "image_folder", data, tmp_path / "a", *flags)

    def fail(*args):
        raise AssertionError("class embeddings were recomputed")

    monkeypatch.setattr(altclip.evaluation.zeroshot, "class_embeddings", fail)
    assert run_eval("zeroshot", tiny_model_dir, "image_folder", data, tmp_path / "b", *flags) == first
    with pytest.raises(AssertionError, match="recomputed"):  # other templates: another cache entry
        run_eval("zeroshot", tiny_model_dir, "image_folder", data, tmp_path / "c", *flags[:-1])


@pytest.mark.parametrize("damage", ["truncated", "empty", "other shape"])
def test_a_corrupt_class_embedding_cache_is_reported_and_recomputed(tmp_path, tiny_model_dir, caplog, damage):
    """Once an IndexError on every later run; now a warning naming the file, then the same scores as a fresh run."""
    from safetensors.torch import save_file

    data = write_image_folder(tmp_path / "folder")
    flags = ("--languages", "de", "--cache_dir", tmp_path / "cache")
    first = run_eval("zeroshot", tiny_model_dir, "image_folder", data, tmp_path / "a", *flags)
    (cached,) = (tmp_path / "cache").glob("classes-*.safetensors")
    if damage == "truncated":
        cached.write_bytes(cached.read_bytes()[:40])
    elif damage == "empty":
        cached.write_bytes(b"")
    else:
        save_file({"class_embeddings": torch.zeros(2, 3)}, cached)
    assert run_eval("zeroshot", tiny_model_dir, "image_folder", data, tmp_path / "b", *flags) == first
    assert f"Class-embedding cache {cached} is unusable" in caplog.text
    assert run_eval("zeroshot", tiny_model_dir, "image_folder", data, tmp_path / "c", *flags) == first  # rewritten


def test_zero_shot_cifar_with_published_templates(tmp_path, tiny_model_dir):
    (result,) = run_eval("zeroshot", tiny_model_dir, "cifar10", write_cifar(tmp_path / "cifar"), tmp_path / "out")
    assert result["num_classes"] == 10 and result["num_templates"] == len(
        class_prompts("cifar10", "en", prompts_dir(), ["x"] * 10).templates
    )
    assert set(result["metrics"]) == {"top1", "top5", "mean_per_class_recall"}


@pytest.mark.slow
def test_zero_shot_imagenet_english_and_babel_german(tmp_path, tiny_model_dir):
    german_labels = class_prompts("imagenet1k", "de", prompts_dir()).labels
    outside = next(label for label in range(1000) if label not in german_labels)
    data = write_imagenet_val(tmp_path / "imagenet", images_in=(german_labels[0], german_labels[1], outside))
    english, german = run_eval(
        "zeroshot",
        tiny_model_dir,
        "imagenet1k",
        data,
        tmp_path / "out",
        "--languages",
        "en,de",
        "--cache_dir",
        "",
        "--batch_size",
        "512",
    )
    assert english["num_images"] == 3 and english["num_classes"] == 1000
    assert german["num_images"] == 2 and german["num_classes"] == len(german_labels)  # only its classes' images


def test_retrieval_matches_the_model_forward(tmp_path, tiny_model_dir):
    data = write_caption_table(tmp_path / "table")
    (result,) = run_eval("retrieval", tiny_model_dir, "captions", data, tmp_path / "out", "--languages", "de")
    dataset = load_caption_table(data, "de")
    scores = model_scores(tiny_model_dir, dataset.images, dataset.captions)
    owner = torch.tensor(dataset.caption_image)
    image_to_text_r1 = (owner[scores.argmax(dim=1)] == torch.arange(len(dataset.images))).float().mean()
    text_to_image_r1 = (scores.argmax(dim=0) == owner).float().mean()
    assert result["metrics"]["image_to_text_recall@1"] == pytest.approx(100 * image_to_text_r1.item(), abs=0.01)
    assert result["metrics"]["text_to_image_recall@1"] == pytest.approx(100 * text_to_image_r1.item(), abs=0.01)
    assert result["num_images"] == 4 and result["num_captions"] == 8 and len(result["metrics"]) == 7


def test_retrieval_layouts(tmp_path, tiny_model_dir, monkeypatch):
    (flickr,) = run_eval("retrieval", tiny_model_dir, "flickr30k", write_karpathy(tmp_path / "f30k"), tmp_path / "a")
    assert (flickr["language"], flickr["num_images"], flickr["num_captions"]) == ("en", 4, 8)
    (chinese,) = run_eval(
        "retrieval",
        tiny_model_dir,
        "flickr30k_cn",
        write_chinese_clip_format(tmp_path / "cn"),
        tmp_path / "b",
        "--num_workers",
        "2",
    )  # base64 images decoded in worker processes
    assert (chinese["language"], chinese["num_images"], chinese["skipped_images"]) == ("zh", 4, 0)

    calls = []
    original = Embedder.images
    monkeypatch.setattr(Embedder, "images", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    xtd = run_eval(
        "retrieval", tiny_model_dir, "xtd10", write_xtd(tmp_path / "xtd"), tmp_path / "c", "--languages", "en,de,zh"
    )
    assert [r["dataset"] for r in xtd] == ["xtd10_en", "xtd10_de", "xtd10_zh", "xtd10"]  # then their average
    assert len(calls) == 1  # one image set, embedded once for the three languages


def test_unreadable_images_are_skipped_and_counted(tmp_path, tiny_model_dir):
    data = write_caption_table(tmp_path / "table")
    (data / "images" / "2.png").write_bytes(b"not a png")
    (result,) = run_eval("retrieval", tiny_model_dir, "captions", data, tmp_path / "out", "--languages", "en")
    assert (result["num_images"], result["num_captions"], result["skipped_images"]) == (3, 6, 1)


@pytest.mark.parametrize(
    "task, dataset, make, flags, message",
    [
        ("zeroshot", "image_folder", lambda p: p / "nowhere", [], "nowhere is missing. Expected layout"),
        (
            "zeroshot",
            "image_folder",
            write_image_folder,
            ["--languages", "fr"],
            "classnames.json has no 'fr' names; it has en, de, zh",
        ),
        ("zeroshot", "imagenet1k", write_image_folder, [], "holds 0 WordNet-id class folders"),
        ("zeroshot", "cifar10", write_cifar, ["--languages", "tlh"], "No cifar10 class names in 'tlh'"),
        ("zeroshot", "mnist_digits", write_image_folder, [], "unknown --dataset 'mnist_digits'"),
        ("retrieval", "flickr30k_cn", lambda p: p, [], "test_imgs.tsv is missing"),
        ("retrieval", "xtd10", write_xtd, ["--languages", "de,xx"], "XTD10 has no xx"),
    ],
)
def test_errors_name_the_problem_before_loading_the_model(tmp_path, cli, task, dataset, make, flags, message):
    data = make(tmp_path / "data")
    argv = eval_flags(task, tmp_path / "no-model-here", dataset, data, tmp_path / "out", *flags)
    cli.refusal(main, *argv, contains=[message])
    assert not (tmp_path / "out").exists()


def test_a_quantised_run_and_one_without_onednn_score_the_same_images(tmp_path, tiny_model_dir):
    data = write_image_folder(tmp_path / "folder")
    plain = run_eval(
        "zeroshot", tiny_model_dir, "image_folder", data, tmp_path / "a", "--languages", "de", "--cache_dir", ""
    )
    int8 = run_eval(
        "zeroshot",
        tiny_model_dir,
        "image_folder",
        data,
        tmp_path / "b",
        "--languages",
        "de",
        "--cache_dir",
        "",
        "--quantization",
        "int8",
        "--reduced_decoding",
        "false",
    )
    assert int8[0]["num_images"] == plain[0]["num_images"] == 6
    nn_linear = run_eval(
        "zeroshot",
        tiny_model_dir,
        "image_folder",
        data,
        tmp_path / "d",
        "--languages",
        "de",
        "--cache_dir",
        "",
        "--onednn_linear",
        "false",
    )
    assert (
        nn_linear[0]["metrics"]["top1"] == plain[0]["metrics"]["top1"]
    )  # oneDNN's fp32 Linear gives the same predictions


def test_non_finite_embeddings_are_refused(tmp_path, tiny_model_dir, monkeypatch):
    """Even from finite weights (e.g. an overflow in float16): no score is made of NaN embeddings."""
    embedder = Embedder.from_pretrained(tiny_model_dir, device="cpu", num_workers=0)
    monkeypatch.setattr(
        embedder.model,
        "get_text_features",
        lambda **k: type(
            "O",
            (),
            {"pooler_output": torch.full((len(k["input_ids"]), embedder.model.config.projection_dim), float("inf"))},
        )(),
    )
    with pytest.raises(ValueError, match="2 of 2 prompts have NaN or infinite embeddings"):
        embedder.texts(["a cat", "a dog"], "prompts")


def test_broken_caption_rows_are_counted_not_silently_dropped(tmp_path, tiny_model_dir, caplog):
    data = write_caption_table(tmp_path / "table")
    table = data / "captions.jsonl"
    lines = table.read_text().splitlines()
    table.write_text("\n".join([lines[0], '{"image": "images/0.png", "caption": ', *lines[1:], "not json"]) + "\n")
    (result,) = run_eval("retrieval", tiny_model_dir, "captions", data, tmp_path / "out")
    assert result["skipped_rows"] == 2
    assert f"{table}:2" in caplog.text and "2 unusable row(s)" in caplog.text


# One-line refusals of a zero-shot run on an image folder (`given.data`): each case returns the --model, the flags
# and what `assert_one_line_error` expects of the line.
def a_bad_dtype(given):
    return given.model, ["--dtype", "float8"], dict(contains=["invalid choice: 'float8'"])


def an_unknown_flag(given):
    return given.model, ["--bogus", "1"], dict(contains=["unknown flag(s) --bogus 1"])


def a_batch_size_that_is_not_a_number(given):
    return given.model, ["--batch_size", "many"], dict(contains=["invalid int value: 'many'"])


def a_mistyped_local_model(given):
    return "./outputs/my-rn", [], dict(match=r"--model ./outputs/my-rn: no such folder")


def a_mistyped_hub_name_without_a_slash(given):
    """Offline with an empty cache (transformers would say "couldn't connect to huggingface.co" after retries)."""
    given.monkeypatch.setattr(constants, "HF_HUB_CACHE", str(given.tmp_path / "cache"))
    given.monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    line = (
        "altclip-eval zeroshot: --model altclipp: no such local folder, and not in the Hub cache (HF_HUB_OFFLINE is "
        "set). Check the name."
    )
    return "altclipp", [], dict(line=line)


def a_model_folder_without_tokenizer_files(given):
    folder = given.tmp_path / "model"
    shutil.copytree(given.model, folder)
    (folder / "tokenizer_config.json").unlink()
    line = (
        f"altclip-eval zeroshot: --model {folder} has no tokenizer_config.json: copy the tokenizer and image-processor "
        "files from the model it was trained from, or save them there with AltCLIPProcessor.save_pretrained."
    )
    return folder, [], dict(line=line)


def an_unknown_quantisation(given):
    return given.model, ["--languages", "de", "--quantization", "int4"], dict(match="Unknown quantization 'int4'")


def a_model_with_nan_weights(given):
    """A NaN text_projection once scored 57% top-1 here; now it is refused, naming the tensor."""
    model = AltCLIPModel.from_pretrained(given.model)
    with torch.no_grad():
        model.text_projection.weight.fill_(float("nan"))
    model.save_pretrained(given.tmp_path / "nan")
    AltCLIPProcessor.from_pretrained(given.model).save_pretrained(given.tmp_path / "nan")
    return given.tmp_path / "nan", [], dict(match=r"NaN or infinite weights in text_projection.weight")


def a_text_length_beyond_the_positions(given):
    return given.model, ["--max_text_length", 600], dict(match=r"--max_text_length 600 is outside 1..512")


def classnames_that_are_not_json(given):
    (given.data / "classnames.json").write_text("{not json")
    return given.model, [], dict(contains=[f"{given.data / 'classnames.json'} ", "is not valid JSON"])


def classnames_that_are_a_list(given):
    (given.data / "classnames.json").write_text('["cat", "dog"]')
    expected = [f"{given.data / 'classnames.json'} ", "should map languages to lists of names"]
    return given.model, [], dict(contains=expected)


REFUSED_RUNS = [
    a_bad_dtype,
    an_unknown_flag,
    a_batch_size_that_is_not_a_number,
    a_mistyped_local_model,
    a_mistyped_hub_name_without_a_slash,
    a_model_folder_without_tokenizer_files,
    an_unknown_quantisation,
    a_model_with_nan_weights,
    a_text_length_beyond_the_positions,
    classnames_that_are_not_json,
    classnames_that_are_a_list,
]


@pytest.mark.parametrize("case", REFUSED_RUNS, ids=[case.__name__ for case in REFUSED_RUNS])
def test_a_refused_run_is_one_line_and_scores_nothing(case, tmp_path, cli, tiny_model_dir, monkeypatch):
    data = write_image_folder(tmp_path / "data")
    given = SimpleNamespace(tmp_path=tmp_path, model=tiny_model_dir, data=data, monkeypatch=monkeypatch)
    model, flags, expected = case(given)
    cli.refusal(main, *eval_flags("zeroshot", model, "image_folder", data, tmp_path / "out", *flags), **expected)
    assert not (tmp_path / "out" / "results.json").exists()
