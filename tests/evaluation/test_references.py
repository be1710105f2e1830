"""references.json: every published number carries its source, protocol and languages; --compare reference puts
only like beside like and says why every other published row is not comparable."""

import datetime
import re

import pytest

from altclip.evaluation.cli import TASKS
from altclip.evaluation.field_sets import XM3600_LANGUAGES
from altclip.evaluation.loaders import XTD_LANGUAGES
from altclip.evaluation.references import (
    COMPARED,
    COMPARED_ZERO_SHOT,
    NOT_STATED,
    ONE_CAPTION_SETS,
    PROTOCOLS,
    REQUIRED_FIELDS,
    compare,
    comparison_markdown,
    load_references,
)

ROWS = load_references()
SIX = COMPARED[:6]


@pytest.mark.parametrize("row", ROWS, ids=[f"{r['dataset']}-{r['model'][:40]}" for r in ROWS])
def test_every_published_number_carries_its_source_protocol_and_languages(row):
    assert set(REQUIRED_FIELDS) <= set(row), sorted(set(REQUIRED_FIELDS) - set(row))
    task_datasets = {"retrieval": TASKS["retrieval"], "zeroshot": TASKS["zeroshot"]}[row["task"]]
    assert row["dataset"] in task_datasets and row["protocol"] in PROTOCOLS[row["task"]]
    assert row["source"].startswith("https://") and row["source_detail"] and row["found_via"]
    assert datetime.date.fromisoformat(row["read_on"]) and isinstance(row["self_reported"], bool)
    assert row["model"] and row["size"] and row["protocol_basis"] and row["languages_averaged"]
    if row["protocol"] == NOT_STATED:
        assert row["protocol_stated"] is False
    assert row["languages"] is None or (row["languages"] and all(isinstance(code, str) for code in row["languages"]))
    allowed = COMPARED if row["task"] == "retrieval" else COMPARED_ZERO_SHOT
    assert row["metrics"] and set(row["metrics"]) <= set(allowed)
    assert all(0 < value <= 100 for value in row["metrics"].values())
    if row["task"] == "retrieval":  # the mean only where all six recalls are published, and then their mean
        assert ("mean_recall" in row["metrics"]) == (set(SIX) <= set(row["metrics"]))
        if "mean_recall" in row["metrics"]:
            mean = sum(row["metrics"][name] for name in SIX) / 6
            assert row["metrics"]["mean_recall"] == pytest.approx(mean, abs=0.006)


def test_the_field_leaders_and_both_altclip_rows_are_there():
    models = " / ".join(row["model"] for row in ROWS)
    for family in ("Meta CLIP 2", "SigLIP 2", "mSigLIP", "MEXMA-SigLIP2", "MRL", "CN-CLIP ViT-H/14", "M2-Encoder"):
        assert family in models, family
    altclip = [row for row in ROWS if row["model"].startswith("BAAI/AltCLIP card")]
    assert {(row["dataset"], "∗" in row["model"]) for row in altclip} == {
        (dataset, starred) for dataset in ("flickr30k", "flickr30k_cn") for starred in (False, True)
    }
    assert all("huggingface.co/BAAI/AltCLIP" in row["source"] for row in altclip)
    assert all(row["self_reported"] for row in ROWS if "MEXMA" in row["model"])


def run_result(dataset: str, protocol: str, languages: list[str], task: str = "retrieval") -> dict:
    metrics = {name: 10.0 for name in (COMPARED if task == "retrieval" else ("top1", "top5"))}
    if task != "retrieval":
        return {"task": "zero-shot classification", "dataset": dataset, "language": languages[0], "metrics": metrics}
    if len(languages) == 1:
        return {"task": task, "dataset": dataset, "language": languages[0], "protocol": protocol, "metrics": metrics}
    return {
        "task": task,
        "dataset": dataset,
        "language": "avg",
        "protocol": protocol,
        "averaged_over": languages,
        "metrics": metrics,
    }


def equivalent(dataset: str, theirs: str, ours: str) -> bool:
    return theirs == ours or (dataset in ONE_CAPTION_SETS and NOT_STATED not in (theirs, ours))


CASES = [
    ("xm3600", "first_caption", list(XM3600_LANGUAGES)),
    ("xm3600", "all_captions", list(XM3600_LANGUAGES)),
    ("xm3600", "first_caption", ["en", "de"]),
    ("xtd10", "all_captions", list(XTD_LANGUAGES)),
    ("flickr30k_cn", "all_captions", ["zh"]),
    ("flickr30k_cn", "first_caption", ["zh"]),
]


@pytest.mark.parametrize("dataset, protocol, languages", CASES)
def test_only_like_is_put_beside_like_and_every_other_row_says_why(dataset, protocol, languages):
    (comparison,) = compare([run_result(dataset, protocol, languages)], "my-model", ROWS)
    published = [row for row in ROWS if row["dataset"] == dataset and row["task"] == "retrieval"]
    assert len(comparison.like) + len(comparison.unlike) == len(published)  # none dropped, none twice
    for row in comparison.like:
        assert equivalent(dataset, row["protocol"], protocol) and sorted(row["languages"]) == sorted(languages)
    for row, reason in comparison.unlike:
        assert reason
        if not equivalent(dataset, row["protocol"], protocol):
            expected = (
                "does not state the protocol" if row["protocol"] == NOT_STATED else f"scored with `{row['protocol']}`"
            )
            assert expected in reason
        if row["languages"] is not None and sorted(row["languages"]) != sorted(languages):
            assert "this run mean of" in reason or "this run " + languages[0] in reason
    markdown = comparison_markdown([comparison])
    like_part, _, unlike_part = markdown.partition("Not comparable as they stand")
    assert all(row["model"] in like_part for row in comparison.like)
    for row, reason in comparison.unlike:  # a published row of another protocol only ever appears with its reason
        (line,) = [line for line in unlike_part.splitlines() if model_cell(line) == row["model"]]
        assert reason in line
        assert row["model"] not in {model_cell(line) for line in like_part.splitlines()}


def model_cell(line: str) -> str:
    """The model named in a markdown table line, without the self-reported mark."""
    return line.split(" | ")[0].removeprefix("| ").removesuffix(" (self-reported)")


def test_the_refreshed_xm3600_table_separates_the_two_protocols():
    first = compare([run_result("xm3600", "first_caption", list(XM3600_LANGUAGES))], "m", ROWS)[0]
    every = compare([run_result("xm3600", "all_captions", list(XM3600_LANGUAGES))], "m", ROWS)[0]
    assert first.like and every.like
    assert {row["protocol"] for row in first.like} == {"first_caption"}
    assert {row["protocol"] for row in every.like} == {"all_captions"}
    assert "rerun with `--protocol first_caption`" in comparison_markdown([every])
    assert "† the source does not state the protocol" in comparison_markdown([every])


def test_a_run_over_other_languages_is_told_it_stands_alone():
    (comparison,) = compare([run_result("xm3600", "first_caption", ["en", "de"])], "my-model", ROWS)
    markdown = comparison_markdown([comparison])
    assert not comparison.like and "No published number was measured like this run" in markdown
    assert re.search(r"\| \*\*my-model\*\* \(this run\) \|", markdown)
    assert "it averages mean of 36" in markdown and "this run mean of 2: en, de" in markdown


def test_zero_shot_imagenet_cn_is_never_ranked_against_a_number_of_unknown_prompts():
    (comparison,) = compare([run_result("imagenet1k", "", ["cn"], task="zeroshot")], "m", ROWS)
    assert not comparison.like
    reasons = {row["model"]: reason for row, reason in comparison.unlike}
    assert "does not state the protocol" in reasons["M2-Encoder-10B"]
    assert "does not state the languages" in reasons["Meta CLIP 2 (worldwide)"]
