"""Language balancing: n^alpha shares, the epoch a language plan draws, and the plan and trained samples of an
``altclip-train`` run in two real processes."""

import json
import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from stage_runs import torchrun, trained_keys

from altclip.common.errors import UsageError
from altclip.training.data.epoch_plan import GlobalBatchSampler
from altclip.training.data.language_balance import check_balancing_flags, language_plan, shares, size_weights
from altclip.training.data.sources import parse_sources
from altclip.training.data.tables import TableRows


def test_shares_follow_n_to_the_alpha_and_sum_to_the_total():
    sizes = [720, 72, 72]
    assert shares(864, sizes, None) == sizes  # no alpha: every row once
    assert shares(864, sizes, 1.0) == sizes  # the natural mix
    assert shares(864, sizes, 0.0) == [288, 288, 288]  # every language alike
    third = shares(864, sizes, 0.3)
    expected = 864 * np.array(size_weights(sizes, 0.3)) / sum(size_weights(sizes, 0.3))
    assert sum(third) == 864 and np.abs(np.array(third) - expected).max() < 1
    assert third[0] < 720 and third[1] > 72  # English subsampled, the small languages repeated


def skewed_table(path: Path, images: list[str], english_copies: int = 10) -> Path:
    """de and fr rows once, English rows `english_copies` times (distinct captions, so that keys tell rows apart)."""
    rows = [
        {"image": images[i % len(images)], "caption": f"{language} caption {i}", "language": language}
        for language, count in (("de", 6), ("fr", 6), ("en", 6 * english_copies))
        for i in range(count)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_language_plan_draws_each_language_its_share_and_every_row_once_without_alpha(tmp_path):
    table = skewed_table(tmp_path / "skewed.jsonl", ["images/0.png"])
    rows = TableRows(parse_sources([str(table)]), ("image", "caption"), str(tmp_path / "cache"))
    languages = [row[1]["caption"].split()[0] for row in map(rows.row, range(len(rows)))]

    plan = language_plan(rows, "language", None, None, str(tmp_path / "cache"))
    drawn = GlobalBatchSampler(rows.sizes, 4, language_plan=plan, seed=1).epoch_indices()
    assert sorted(drawn.tolist()) == list(range(len(rows)))  # exactly once
    assert {group["language"]: group["samples_per_epoch"] for group in plan.report()} == {"de": 6, "en": 60, "fr": 6}

    weighted = language_plan(rows, "language", None, [1.0], str(tmp_path / "cache"))  # one source: all its rows
    assert {group["language"]: group["samples_per_epoch"] for group in weighted.report()} == {
        "de": 6,
        "en": 60,
        "fr": 6,
    }

    balanced = language_plan(rows, "language", 0.0, None, str(tmp_path / "cache"))
    sampler = GlobalBatchSampler(rows.sizes, 4, language_plan=balanced, seed=1)
    drawn = sampler.epoch_indices()
    assert len(drawn) == sampler.samples_per_epoch == len(rows) == 72
    assert Counter(languages[index] for index in drawn) == {"de": 24, "en": 24, "fr": 24}
    de = [index for index in drawn if languages[index] == "de"]
    assert Counter(Counter(de).values()) == {4: 6}  # 6 rows, each 4 times: every row before any row again


def test_balancing_flags_are_checked(tmp_path):
    table = skewed_table(tmp_path / "t.jsonl", ["images/0.png"])
    arguments = dict(language_sampling_alpha=None, train_file_weights=None, language_column=None)
    cases = [
        ({"language_sampling_alpha": 1.5}, "--language_sampling_alpha 1.5: give a value in 0..1"),
        ({"language_sampling_alpha": 0.3, "train_file_weights": [1.0]}, "drop --train_file_weights"),
    ]
    for changes, message in cases:
        with pytest.raises(UsageError, match=re.escape(message)):
            check_balancing_flags(SimpleNamespace(**{**arguments, **changes}), parse_sources([str(table)]))


FLAGS = ["--dataloader_num_workers", "0", "--num_train_epochs", "1", "--logging_steps", "1", "--save_strategy", "no"]
FLAGS += ["--per_device_train_batch_size", "4", "--record_trained_keys", "true", "--language_column", "language"]


def language_of_key(key: str, table: Path) -> str:
    line = int(key.rsplit(":", 1)[1])
    return json.loads(table.read_text().splitlines()[line - 1])["language"]


@pytest.mark.slow
def test_balanced_run_trains_the_planned_samples_per_language(tmp_path, toy, start_without_dropout):
    """2 processes, a table with 10x more English: the plan (printed before step 1) gives each language its n^0
    share, and the samples the run trained per language are exactly those; without alpha, every row once."""
    images = sorted(f"images/{path.name}" for path in (Path(toy["captions"]).parent / "images").glob("*.png"))
    table = skewed_table(tmp_path / "skewed.jsonl", images)
    (tmp_path / "images").symlink_to(Path(toy["captions"]).parent / "images")
    model = ["--model_name_or_path", str(start_without_dropout), "--train_files", str(table)]
    result = torchrun("contrastive", tmp_path / "balanced", 2, *model, *FLAGS, "--language_sampling_alpha", "0")
    output = result.stdout + result.stderr
    for language in ("de", "en", "fr"):
        assert re.search(rf"language {language} in \S+skewed.jsonl: \d+ rows, 24 samples per epoch", output), output
    assert output.index("samples per epoch") < output.index("'loss'")  # the plan comes before step 1
    counts = Counter()
    for key, times in trained_keys(tmp_path / "balanced").items():
        counts[language_of_key(key, table)] += times
    assert counts == {"de": 24, "en": 24, "fr": 24}

    torchrun("contrastive", tmp_path / "plain", 2, *model, *FLAGS)
    keys = trained_keys(tmp_path / "plain")
    assert len(keys) == 72 and set(keys.values()) == {1}


def test_alpha_weighs_shard_sources_by_their_samples_in_the_plan(toy, capsys):
    """Shards: two sources of 6 and 2 shards; alpha 0 gives them equal samples per epoch (the epoch keeps its
    length), alpha 1 their sizes; the plan names the repeated and subsampled source."""
    from altclip.training.cli import main as train_main

    shards = Path(toy["shards"]).parent
    flags = ["plan", "--stage", "contrastive", "--clip_model_name_or_path", str(toy["clip"])]
    flags += ["--text_encoder_name_or_path", str(toy["xlmr"]), "--max_text_length", "64", "--format", "json"]
    flags += ["--train_files", str(shards / "shard-{0000..0005}.tar"), str(shards / "shard-{0006..0007}.tar")]
    reports = {}
    for alpha in ("0", "1"):
        train_main([*flags, "--language_sampling_alpha", alpha])
        reports[alpha] = json.loads(capsys.readouterr().out)
    samples = [source["samples"] for source in reports["0"]["sources"]]
    assert samples[0] > samples[1]
    per_epoch = [source["samples_per_epoch"] for source in reports["0"]["sources"]]
    assert abs(per_epoch[0] - per_epoch[1]) <= 1 and sum(per_epoch) == sum(samples)
    assert any("rows repeat" in note for note in reports["0"]["notes"])
    assert [source["samples_per_epoch"] for source in reports["1"]["sources"]] == samples
