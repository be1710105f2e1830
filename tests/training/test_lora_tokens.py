"""LoRA with trainable token embeddings, and the fine-tuning flags that used to do the wrong thing silently.

What is protected: a LoRA run trains (and saves in its adapter) exactly the embeddings of the tokens in its training
captions, which load wherever an adapter folder is a model (`load_altclip`, ``altclip-eval``) and equal the merged
checkpoint; an adapter trained from a relative ``--model_name_or_path`` loads from any other working directory;
``--lora_r 0`` with LoRA flags, ``--lora_alpha 0`` and a ``--wise_ft_metric`` language that is not scored are refused
before anything loads.
"""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from stage_runs import run_stage, shapes_image_folder, stage_refusal, torchrun

from altclip.common.adapters import adapter_base_model, load_altclip
from altclip.evaluation.cli import main as eval_main
from altclip.training.data.sources import parse_sources
from altclip.training.data.tables import TableRows
from altclip.training.finetune.new_tokens import (
    TOKEN_CACHE,
    WORD_EMBEDDINGS,
    counted_token_ids,
    ids_digest,
    parse_token_choice,
    tokens_of_texts,
)
from modeling_altclip import AltCLIPModel, AltCLIPProcessor
from modeling_altclip.assets import load_xlmr_tokenizer

DELTA = f"base_model.model.{WORD_EMBEDDINGS}.token_adapter.trainable_tokens_delta"


@pytest.fixture(scope="module")
def relative_lora_run(tmp_path_factory, toy, start_without_dropout) -> Path:
    """Three LoRA steps on the text tower, started from a RELATIVE --model_name_or_path inside a working folder;
    tokens chosen by default (auto), merged model saved too."""
    work = tmp_path_factory.mktemp("workdir")
    shutil.copytree(start_without_dropout, work / "start")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)
        flags = [
            "--model_name_or_path", "start", "--train_files", str(toy["captions"]),
            "--per_device_train_batch_size", "16", "--learning_rate", "1e-2", "--max_steps", "3",
            "--save_strategy", "no", "--lora_r", "4", "--lora_alpha", "8", "--merge_adapter", "true",
        ]  # fmt: skip
        run_stage("contrastive", Path("run"), *flags)
    return work / "run"


def caption_tokens(toy, processor: AltCLIPProcessor) -> set[int]:
    """Token ids of the toy captions, computed here from the caption file (specials excluded)."""
    captions = [json.loads(line)["caption"] for line in Path(toy["captions"]).read_text().splitlines() if line.strip()]
    ids = set()
    for text in captions:
        ids.update(processor.tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids - set(processor.tokenizer.all_special_ids)


def test_lora_trains_and_saves_the_embeddings_of_the_caption_tokens(relative_lora_run, toy, start_without_dropout):
    processor = AltCLIPProcessor.from_pretrained(relative_lora_run)
    expected = sorted(caption_tokens(toy, processor))
    config = json.loads((relative_lora_run / "adapter_config.json").read_text())
    assert config["trainable_token_indices"] == {WORD_EMBEDDINGS: expected}
    adapter = load_file(relative_lora_run / "adapter_model.safetensors")
    assert adapter[DELTA].shape == (len(expected), 32)  # the toy text tower's width
    summary = json.loads((relative_lora_run / "training_summary.json").read_text())
    assert summary["lora"]["trainable_tokens"] == len(expected)
    assert summary["trainable_parameters"] == sum(tensor.numel() for tensor in adapter.values())

    start = AltCLIPModel.from_pretrained(start_without_dropout).state_dict()[f"{WORD_EMBEDDINGS}.weight"]
    merged = load_file(relative_lora_run / "merged" / "model.safetensors")[f"{WORD_EMBEDDINGS}.weight"]
    changed = (merged != start).any(dim=1).nonzero().flatten().tolist()
    assert changed and set(changed) <= set(expected)  # only trained tokens' rows moved (3 steps: not all seen)
    torch.testing.assert_close(merged[expected], adapter[DELTA])


def test_an_adapter_from_a_relative_base_path_loads_from_another_folder(
    relative_lora_run, toy, tmp_path, monkeypatch, start_without_dropout
):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    base = adapter_base_model(relative_lora_run)
    assert Path(base).is_absolute() and Path(base) == relative_lora_run.parent / "start"
    processor = AltCLIPProcessor.from_pretrained(relative_lora_run)
    inputs = processor(text=["a red circle", "ein blaues Quadrat"], return_tensors="pt", padding=True)
    with torch.no_grad():
        adapted = load_altclip(relative_lora_run).eval().get_text_features(**inputs)
        merged = AltCLIPModel.from_pretrained(relative_lora_run / "merged").eval().get_text_features(**inputs)
    torch.testing.assert_close(adapted, merged, rtol=1e-5, atol=1e-5)

    folder = shapes_image_folder(toy, tmp_path / "shapes")
    results = {}
    for name, model in (("adapter", relative_lora_run), ("merged", relative_lora_run / "merged")):
        eval_main([
            "zeroshot", "--model", str(model), "--dataset", "image_folder", "--data_dir", str(folder),
            "--languages", "en,de", "--templates", "a {c}", "--num_workers", "0", "--cache_dir", "",
            "--output_dir", name,
        ])  # fmt: skip
        results[name] = json.loads((elsewhere / name / "results.json").read_text())["results"]
    assert [row["metrics"] for row in results["adapter"]] == [row["metrics"] for row in results["merged"]]


def test_tokens_of_texts_and_explicit_choices():
    tokenizer = load_xlmr_tokenizer()
    found = tokens_of_texts([["ein Kreis", None, ""], ["ein Kreis und ein Quadrat"]], tokenizer)
    assert found == set(tokenizer("ein Kreis und ein Quadrat", add_special_tokens=False)["input_ids"])
    assert not found & set(tokenizer.all_special_ids)
    assert parse_token_choice("7, 3,7") == [3, 7] and parse_token_choice("Auto") == "auto"


def flags(toy, *extra: str) -> list[str]:
    return ["--model_name_or_path", "x/y", "--train_files", str(toy["captions"]), "--max_steps", "1", *extra]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lora_alpha", "32"], "--lora_alpha set an adapter, but --lora_r is 0"),
        (["--lora_r", "0", "--lora_targets", "text", "--lora_layers=mlp"], "--lora_targets, --lora_layers set an"),
        (["--lora_r", "4", "--lora_alpha", "0"], "--lora_alpha 0 scales the adapter's update to nothing"),
        (["--lora_r", "4", "--lora_trainable_tokens", "some"], "--lora_trainable_tokens 'some': give auto"),
        (["--lora_r", "4", "--lora_targets", "vision", "--lora_trainable_tokens", "5"], "text token embeddings"),
    ],
)
def test_lora_flags_that_would_do_nothing_or_something_else_are_refused(tmp_path, toy, cli, extra, message):
    stage_refusal(cli, "contrastive", tmp_path / "out", *flags(toy, *extra), match=message)
    assert not (tmp_path / "out").exists()  # refused before the run wrote anything


@pytest.mark.parametrize(
    "metric, message",
    [
        ("zeroshot/image_folder/de/top1", "names language 'de', which is not scored"),
        ("zeroshot/cifar10/en/top1", "a zero-shot score reads like zeroshot/image_folder/en/top1"),
    ],
    ids=["a language not scored", "another dataset"],
)
def test_a_wise_ft_metric_that_is_not_scored_is_refused_at_start(tmp_path, toy, cli, metric, message):
    folder = shapes_image_folder(toy, tmp_path / "shapes")
    extra = ["--zeroshot_data_dir", str(folder), "--zeroshot_languages", "en", "--wise_ft_sweep", "0,1"]
    stage_refusal(cli, "contrastive", tmp_path / "out", *flags(toy, *extra, "--wise_ft_metric", metric), match=message)


class CountingTokenizer:
    """A tokenizer that counts the texts it is called on (everything else is the wrapped tokenizer's)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.texts, self.calls = tokenizer, 0, 0

    def __call__(self, texts, **kwargs):
        self.texts, self.calls = self.texts + len(texts), self.calls + 1
        return self.tokenizer(texts, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_auto_token_ids_are_cached_for_a_requeue_and_recounted_for_other_texts(tmp_path, toy, caplog):
    """A second start (a requeue) reads the ids the first wrote under --output_dir/token_cache without calling
    the tokenizer; other columns, or a damaged file, are tokenized again; every text once, in batched calls."""
    rows = TableRows(parse_sources([str(toy["captions"])]), ("image", "caption"), str(tmp_path / "tables"))
    real = load_xlmr_tokenizer()
    tokenizer = CountingTokenizer(real)
    folder = tmp_path / "out" / TOKEN_CACHE
    first = counted_token_ids(rows, ["caption"], tokenizer, folder)
    assert tokenizer.texts == len(rows) and tokenizer.calls == 1  # one call for the whole (small) table
    files = list(folder.glob("tokens-*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["ids"] == first
    expected = set()
    for row in map(rows.row, range(len(rows))):
        expected.update(real(row[1]["caption"], add_special_tokens=False)["input_ids"])
    assert first == sorted(expected - set(real.all_special_ids))

    with caplog.at_level("INFO", logger="altclip.training.finetune.new_tokens"):
        again = counted_token_ids(rows, ["caption"], tokenizer, folder)
    assert again == first and tokenizer.calls == 1  # read from the cache: no tokenizer call
    assert "Reusing the" in caplog.text

    both = counted_token_ids(rows, ["caption", "image"], tokenizer, folder)  # another key: counted again
    assert tokenizer.calls == 3 and set(first) <= set(both) and len(list(folder.glob("tokens-*.json"))) == 2
    files[0].write_text(files[0].read_text()[:20])  # cut short (a file system that lost the end of the write)
    assert counted_token_ids(rows, ["caption"], tokenizer, folder) == first and tokenizer.calls == 4


@pytest.mark.slow
def test_auto_tokens_are_found_once_per_run_and_every_rank_trains_the_same(tmp_path, toy, start_without_dropout):
    """2 processes (gloo): rank 0 tokenizes the captions once and writes the cache; rank 1 receives the ids rather
    than tokenizing the table itself; both log the same ids (digest), those of the captions."""
    flags = [
        "--model_name_or_path", str(start_without_dropout), "--train_files", str(toy["captions"]),
        "--per_device_train_batch_size", "4", "--max_steps", "1", "--save_strategy", "no",
        "--lora_r", "4", "--lora_alpha", "8", "--log_level_replica", "info",
    ]  # fmt: skip
    result = torchrun("contrastive", tmp_path / "run", 2, *flags)
    output = result.stdout + result.stderr
    assert output.count("training texts (caption) once") == 1, output  # one rank tokenized, once
    assert re.search(r"Waiting up to \d+ min for rank 0 to find the token ids", output), output
    processor = AltCLIPProcessor.from_pretrained(start_without_dropout)
    expected = sorted(caption_tokens(toy, processor))
    digests = dict(re.findall(r"Rank (\d) trains the embeddings of the \d+ distinct tokens .*ids digest (\w+)", output))
    assert digests == {"0": ids_digest(expected), "1": ids_digest(expected)}, output
    (cache,) = (tmp_path / "run" / TOKEN_CACHE).glob("tokens-*.json")
    assert json.loads(cache.read_text())["ids"] == expected
    config = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert config["trainable_token_indices"] == {WORD_EMBEDDINGS: expected}
