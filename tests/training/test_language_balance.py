"""Language balancing: n^alpha shares, the epoch a language plan draws, and the plan and trained samples of an
``altclip-train`` run in two real processes."""

import json
import re
import tracemalloc
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pyarrow as pa
import pytest
from stage_runs import torchrun, trained_keys

from altclip.common.errors import UsageError
from altclip.common.records import DataFormatError
from altclip.training.data import language_balance
from altclip.training.data.epoch_plan import GlobalBatchSampler
from altclip.training.data.language_balance import (
    NO_LANGUAGE,
    LanguagePlan,
    check_balancing_flags,
    language_plan,
    shares,
    size_weights,
)
from altclip.training.data.sources import parse_sources
from altclip.training.data.tables import SKIPPED, TableRows
from benchmarks.language_balance_memory import per_row_language_plan  # the algorithm replaced


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


# --- the language plan computed in Arrow and NumPy equals the per-row Python algorithm it replaced ---------------


def assert_same_plan(new: LanguagePlan, old: LanguagePlan, seed: int) -> None:
    """Same groups (source, language, row indices bit for bit, samples) and the same epochs drawn."""
    assert [(g.source, g.language, g.samples_per_epoch) for g in new.groups] == [
        (g.source, g.language, g.samples_per_epoch) for g in old.groups
    ]
    for new_group, old_group in zip(new.groups, old.groups):
        assert type(new_group.language) is str and new_group.indices.dtype == old_group.indices.dtype == np.int64
        assert np.array_equal(new_group.indices, old_group.indices)
    assert new.report() == old.report()
    for epoch in range(2):
        drawn = new.draw(np.random.default_rng([seed, epoch]))
        assert drawn.dtype == np.int64
        assert np.array_equal(drawn, old.draw(np.random.default_rng([seed, epoch])))


class ArrowTable:
    """What `open_table` returns, as far as the plan reads it: ``.data.column``, ``column_names`` and a length."""

    def __init__(self, table: pa.Table):
        self.data, self.column_names = table, table.column_names

    def __len__(self) -> int:
        return self.data.num_rows


CELLS = ["en", "de", "fr", " en", "en ", "\tde\n", "EN", "", " ", "  ", None, "中文", "é", "(none)", "zz", "a" * 40]
REASONS = [None, None, None, "", "not valid JSON (Expecting value)", "caption is int, not text"]


def random_column(rng: np.random.Generator, rows: int) -> pa.ChunkedArray:
    """A language column of `rows` cells of a random type (text, large text, dictionary-encoded text, integers,
    floats with NaN and -0.0, booleans, all-null, lists, which Arrow cannot hash), randomly chunked."""
    kind = rng.choice(["string", "string", "string", "large_string", "dictionary", "int", "float", "bool", "null"])
    kind = "list" if rng.random() < 0.03 else kind
    pool = list(rng.choice(np.array(CELLS, dtype=object), size=rng.integers(1, 7), replace=False))
    if kind == "int":
        pool = [int(value) for value in rng.integers(-3, 300, size=4)] + [None]
    elif kind == "float":
        pool = [0.0, -0.0, float("nan"), 1.5, None]
    elif kind == "bool":
        pool = [True, False, None]
    elif kind == "null":
        pool = [None]
    elif kind == "list":
        pool = [[1], [1, 2], [], None]
    cells = [pool[index] for index in rng.integers(0, len(pool), size=rows)]
    array_type = {"large_string": pa.large_string(), "null": pa.null()}.get(kind)
    array = pa.array(cells, type=array_type) if kind != "dictionary" else pa.array(cells).dictionary_encode()
    return chunked(rng, array)


def chunked(rng: np.random.Generator, array: pa.Array) -> pa.ChunkedArray:
    cuts = sorted(rng.integers(0, len(array) + 1, size=rng.integers(0, 4)).tolist())
    bounds = [0, *cuts, len(array)]
    pieces = [array.slice(start, stop - start) for start, stop in zip(bounds, bounds[1:])]
    if isinstance(array.type, pa.DictionaryType):  # each chunk a dictionary of its own, as a Parquet reader gives
        pieces = [piece.dictionary_decode().dictionary_encode() for piece in pieces]
    return pa.chunked_array(pieces, type=array.type)


def random_tables(rng: np.random.Generator) -> list[pa.Table | None]:
    """1-3 sources; each a table with a language column (and sometimes a ``_skipped`` column), or None: a source
    without the column."""
    tables = []
    for _ in range(rng.integers(1, 4)):
        rows = int(rng.choice([0, 1, 2, 5, 17, 64, 300]))
        if rng.random() < 0.1:
            tables.append(None if rng.random() < 0.5 else pa.table({"other": pa.array([1] * rows)}))
            continue
        columns = {"language": random_column(rng, rows)}
        if rng.random() < 0.5:
            reasons = [REASONS[index] for index in rng.integers(0, len(REASONS), size=rows)]
            columns[SKIPPED] = chunked(rng, pa.array(reasons, type=pa.string()))
        tables.append(pa.table(columns))
    return tables


def plans_of(tables, monkeypatch, rng):
    """(new plan, old plan) of `tables` as the sources of one dataset, with a random alpha and weights."""
    sizes = [0 if table is None else table.num_rows for table in tables]
    sources = [SimpleNamespace(spec=f"source{index}.jsonl") for index in range(len(tables))]
    by_spec = dict(zip((source.spec for source in sources), tables))

    def open_language_table(source, columns, cache_dir=None):
        table = by_spec[source.spec]
        if table is None or table.num_rows == 0 or columns[0] not in table.column_names:
            raise DataFormatError(f"{source.spec}: no such column")  # as open_table: a missing column, no row
        return ArrowTable(table)

    monkeypatch.setattr(language_balance, "open_table", open_language_table)
    rows = SimpleNamespace(
        sources=sources, sizes=sizes, offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    )
    alpha = [None, 0.0, 0.3, 1.0, float(rng.random())][rng.integers(0, 5)]
    weights = None if rng.random() < 0.5 else [float(w) for w in rng.random(len(tables)) + 0.01]
    new = language_plan(rows, "language", alpha, weights)
    old = per_row_language_plan(rows, "language", alpha, weights)
    return new, old


def test_the_plan_equals_the_per_row_algorithm_on_thousands_of_random_tables(monkeypatch):
    """3,000 random datasets (empty and one-language sources, None, empty and whitespace cells, skipped lines,
    sources without the column, every column type): the same groups, row indices and drawn epochs, bit for bit."""
    rng = np.random.default_rng(20240601)
    kinds = Counter()
    for case in range(3000):
        monkeypatch.setattr(language_balance, "SLICE_ROWS", int(rng.choice([1, 3, 64, 1 << 20])))  # rows a lookup
        tables = random_tables(rng)
        new, old = plans_of(tables, monkeypatch, rng)
        assert_same_plan(new, old, seed=case)
        kinds.update(len({g.language for g in new.groups if g.source == s}) for s in range(len(tables)))
    assert kinds[0] and kinds[1] and max(kinds) >= 5  # empty, one-language and many-language sources were drawn


def test_the_plan_of_a_real_table_with_skipped_lines_equals_the_per_row_algorithm(tmp_path):
    lines = [json.dumps({"image": "a.png", "caption": f"c{i}", "language": language}) for i, language in
             enumerate(["de", " en", "en", "", "  ", "fr", "de", "en\t", "zh"] * 7)]  # fmt: skip
    lines[3] = "{not json"  # a skipped line: no language
    lines[10] = json.dumps({"image": "a.png", "caption": "c", "language": 7})  # not text: skipped as well
    table = tmp_path / "t.jsonl"
    table.write_text("\n".join(lines) + "\n")
    other = skewed_table(tmp_path / "skewed.jsonl", ["images/0.png"])
    rows = TableRows(parse_sources([str(table), str(other)]), ("image", "caption"), str(tmp_path / "cache"))
    for alpha, weights in ((None, None), (0.3, None), (0.0, [1.0, 3.0]), (None, [2.0, 1.0])):
        new = language_plan(rows, "language", alpha, weights, str(tmp_path / "cache"))
        assert_same_plan(new, per_row_language_plan(rows, "language", alpha, weights, str(tmp_path / "cache")), seed=1)
    assert NO_LANGUAGE in {group.language for group in new.groups} and "" in {group.language for group in new.groups}


def python_bytes_at_peak(function) -> int:
    """Peak bytes Python allocated (objects, lists, NumPy arrays; not Arrow's buffers) while `function` ran."""
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_the_plan_builds_no_python_object_per_row(tmp_path):
    """200,000 rows: the plan allocates about 17 bytes a row (NumPy codes, the row order and its sort buffer), where
    a Python list of the rows takes 8 bytes a row plus a string per cell (the per-row algorithm: about 100)."""
    rows_count = 200_000
    languages = np.array(["en", "de", "fr", "zh", "sw"])[np.random.default_rng(0).integers(0, 5, rows_count)]
    datasets.Dataset.from_dict({"caption": ["c"] * rows_count, "language": languages.tolist()}).save_to_disk(
        tmp_path / "saved"
    )
    rows = TableRows(parse_sources([str(tmp_path / "saved")]), ("caption",))
    new = python_bytes_at_peak(lambda: language_plan(rows, "language", 0.3, None))
    old = python_bytes_at_peak(lambda: per_row_language_plan(rows, "language", 0.3, None))
    assert new < 24 * rows_count, f"{new / rows_count:.1f} bytes a row"
    assert old > 60 * rows_count  # what the test would have measured before: lists and strings of every row
