"""Every lost sample counted: stray quotes in CSV/TSV tables, cut, empty and mis-sized shards, tables that changed
under a checkpoint; and tables built in parallel (the same rows, order and line numbers as one process)."""

import json
import random
import shutil
import statistics
import tarfile
from collections import Counter
from pathlib import Path

import pytest
from stage_runs import run_stage, stage_refusal, torchrun, toy_teacher_inputs, trained_keys

from altclip.common.records import DataFormatError, Record, Skipped, iter_records
from altclip.training.data import tables
from altclip.training.data.shard_stream import ShardStream
from altclip.training.data.sources import parse_sources

KEYS = ["--record_trained_keys", "true", "--logging_steps", "1"]


def caption_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_tsv(path: Path, rows: list[dict], stray_at: int) -> list[str]:
    """A TSV of (image, caption) whose row `stray_at` opens an unclosed quote; returns the keys of the other rows."""
    lines = ["image\tcaption\n"]
    for index, row in enumerate(rows):
        caption = f'"{row["caption"]}' if index == stray_at else row["caption"]
        lines.append(f"{row['image']}\t{caption}\n")
    path.write_text("".join(lines))
    return [f"{path}:{number}" for number in range(2, len(lines) + 1) if number != stray_at + 2]


def test_tsv_with_a_stray_quote_trains_every_other_row_and_counts_one_skip(tmp_path, toy, teacher_model_dir):
    """2 processes x 2 workers; before bounded quotes, the quote swallowed every later row into one caption."""
    table = Path(toy["captions"]).parent / "stray_quote.tsv"
    expected = write_tsv(table, caption_rows(toy["captions"]), stray_at=40)
    result = torchrun(
        "contrastive", tmp_path, 2, "--model_name_or_path", str(teacher_model_dir), "--train_files", str(table),
        "--per_device_train_batch_size", "8", "--dataloader_num_workers", "2", "--num_train_epochs", "1",
        "--save_strategy", "no", "--table_build_processes", "2", *KEYS,
    )  # fmt: skip
    assert trained_keys(tmp_path) == Counter(expected) and len(expected) == 179
    wait = "image-caption tables: built (or opened) by the first process of each node with 2 process(es); the others"
    assert f"{wait} wait up to 30 min for it (ddp_timeout: 30 min)" in result.stdout  # their own barrier
    summary = json.loads((tmp_path / "training_summary.json").read_text())
    assert summary["skipped_records"] == 1
    assert list(summary["skipped_by_reason_on_rank0"].values()) in ([], [1])  # the skip fell to either rank


def test_quoted_fields_with_newlines_are_kept_and_a_stray_quote_costs_its_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(
        'english,translation\na cat,"eine ""Katze"", grau"\n'
        '"a dog\nover two lines",ein Hund\n'
        'a "stray,open quote\n'
        "a bird,ein Vogel\n"
        '"never closed,eine Maus\n' + "".join(f"row {n},Zeile {n}\n" for n in range(10))
    )
    read = list(iter_records(path, ("english", "translation")))
    assert read[0].fields["translation"] == 'eine "Katze", grau'
    assert read[1].fields["english"] == "a dog\nover two lines" and read[1].where.endswith(":3")
    assert read[2].fields["english"] == 'a "stray'  # a quote inside a field is text, as in csv
    assert read[3].where.endswith(":6") and read[3].fields["english"] == "a bird"
    assert isinstance(read[4], Skipped) and read[4].where.endswith(":7") and read[4].reason.startswith("stray quote")
    assert [row.where.rsplit(":", 1)[1] for row in read[5:]] == [str(n) for n in range(8, 18)]
    assert all(isinstance(row, Record) for row in read[5:])


def test_a_tsv_quote_closing_lines_later_does_not_merge_the_rows_between(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text('english\ttranslation\na\t"b\nc\td\ne\tf"\ng\th\n')
    read = list(iter_records(path, ("english", "translation")))
    assert isinstance(read[0], Skipped) and read[0].where.endswith(":2") and read[0].reason.startswith("stray quote")
    assert [(row.where.rsplit(":", 1)[1], row.fields["english"]) for row in read[1:]] == [
        ("3", "c"),
        ("4", "e"),
        ("5", "g"),
    ]


def test_tables_built_in_chunks_by_two_processes_equal_one_process_build(tmp_path, monkeypatch):
    """Small chunks, quotes on a third of the lines, legal multi-line fields and stray quotes near chunk ends:
    the same rows in the same order with the same line numbers (and skips) as the one-process build."""
    rng = random.Random(0)
    lines = ["english\ttranslation\n"]
    for number in range(2, 3002):
        if number % 500 == 0:
            lines.append(f'"stray {number}\tno close\n')
        elif number % 333 == 0:
            lines.append(f'"multi\nline {number}"\tzwei\n')
        else:
            quoted = ' "quoted"' if rng.random() < 0.3 else ""
            lines.append(f"english {number}{quoted}\tTeil {number}\n")
    path = tmp_path / "big.tsv"
    path.write_text("".join(lines))
    monkeypatch.setattr(tables, "CHUNK_BYTES", 2000)
    source = parse_sources([str(path)])[0]
    chunks = tables.table_chunks(str(path), "tsv", str(tmp_path / "c1"))
    assert len(chunks) > 10
    monkeypatch.setattr(tables, "_find_chunks", None)  # kept: a second open (other ranks, cache hits) reads nothing
    assert tables.table_chunks(str(path), "tsv", str(tmp_path / "c1")) == chunks
    monkeypatch.undo()
    monkeypatch.setattr(tables, "CHUNK_BYTES", 2000)
    built = {
        processes: tables.open_table(source, ("english", "translation"), str(tmp_path / f"c{processes}"), processes)
        for processes in (1, 2)
    }
    assert built[1].to_list() == built[2].to_list()
    expected = list(iter_records(path, ("english", "translation")))
    assert [row["_where"] for row in built[2]] == [row.where for row in expected]
    skipped = [row["_where"].rsplit(":", 1)[1] for row in built[2] if row["_skipped"]]
    physical = {str(n) for n, line in enumerate(path.read_text().splitlines(), start=1) if line.startswith('"stray')}
    assert set(skipped) == physical and len(skipped) == 6
    assert any(row["english"] == f"multi\nline {333 * 3}" for row in built[2] if not row["_skipped"])


def test_the_cache_key_follows_the_file_not_the_process_count(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"english": f"e{n}", "translation": f"t{n}"}) + "\n" for n in range(20)))
    source = parse_sources([str(path)])[0]
    first = tables.open_table(source, ("english", "translation"), str(tmp_path / "cache"), 1)
    again = tables.open_table(source, ("english", "translation"), str(tmp_path / "cache"), 2)
    assert first._fingerprint == again._fingerprint
    path.write_text(path.read_text() + json.dumps({"english": "new", "translation": "neu"}) + "\n")
    changed = tables.open_table(source, ("english", "translation"), str(tmp_path / "cache"), 1)
    assert len(changed) == 21 and changed._fingerprint != first._fingerprint


@pytest.mark.parametrize("ddp_timeout,expected", [(1800, 1800), (1, 5)])
def test_the_build_wait_covers_the_bytes_at_the_floor_rate(tmp_path, ddp_timeout, expected):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"x" * 1_000_000)
    wait = tables.build_wait_seconds(parse_sources([str(path)]), ddp_timeout)
    assert wait == expected  # 1 MB at 200 kB/s: 5 s


def copy_shards(toy, folder: Path, keep_sizes: bool) -> dict[str, int]:
    """The toy shards (8 of 22-23 samples) in `folder`, with or without their sizes.json; returns the sizes."""
    source = Path(toy["shards"]).parent
    sizes = json.loads((source / "sizes.json").read_text())
    folder.mkdir()
    for name in sizes:
        shutil.copy(source / name, folder / name)
    if keep_sizes:
        shutil.copy(source / "sizes.json", folder / "sizes.json")
    return sizes


def read_epoch(spec: str, **kwargs) -> tuple[Counter, Counter]:
    """(trained keys, skipped samples by reason) of one epoch of a ShardStream over `spec` (one reader)."""
    stream = ShardStream(parse_sources([spec]), lambda raw: {"key": raw["where"]}, batch_size=7, **kwargs)
    trained, skipped = Counter(), Counter()
    for batch in stream:
        assert len([row for row in batch if "key" in row]) <= 7
        for row in batch:
            if "skipped" in row:
                skipped[row["skipped"].reason.split(" (")[0]] += 1
            else:
                trained[row["key"]] += 1
    return trained, skipped


def cut_at(path: Path, member: int, into: int) -> int:
    """Truncates a tar `into` bytes past the start of its `member`-th file's header (512 and more: inside its
    data); returns the samples (two files each) complete before the cut."""
    with tarfile.open(path) as archive:
        offset = archive.getmembers()[member].offset
    with open(path, "r+b") as handle:
        handle.truncate(offset + into)
    return member // 2


@pytest.mark.parametrize("into", [100, 600], ids=["inside-a-header", "inside-a-member's-data"])
def test_a_cut_shard_without_sizes_json_counts_its_lost_samples_estimated_from_its_siblings(tmp_path, toy, into):
    sizes = copy_shards(toy, tmp_path / "shards", keep_sizes=False)
    cut = cut_at(tmp_path / "shards" / "shard-0002.tar", 12, into)
    trained, skipped = read_epoch(f"{tmp_path}/shards/shard-{{0000..0007}}.tar")
    intact = [size for name, size in sizes.items() if name != "shard-0002.tar"]
    found = sum(count for key, count in trained.items() if "shard-0002.tar" in key)
    assert found == (cut if into < 512 else cut - 1)  # a sample cut in its data is not yielded
    assert skipped == Counter({"cut shard": int(statistics.median(intact)) - found})
    assert sum(trained.values()) == sum(intact) + found and set(trained.values()) == {1}
    assert abs(skipped["cut shard"] + found - sizes["shard-0002.tar"]) <= 1  # the estimate: within one of the truth


def test_a_cut_shard_with_sizes_json_counts_what_it_says_is_missing(tmp_path, toy):
    sizes = copy_shards(toy, tmp_path / "shards", keep_sizes=True)
    cut = cut_at(tmp_path / "shards" / "shard-0005.tar", 8, 100)
    trained, skipped = read_epoch(f"{tmp_path}/shards/shard-{{0000..0007}}.tar")
    assert skipped == Counter({"cut shard": sizes["shard-0005.tar"] - cut})
    assert sum(trained.values()) == sum(sizes.values()) - sizes["shard-0005.tar"] + cut


def test_a_sizes_json_that_disagrees_with_its_shards_is_named_and_the_difference_counted(tmp_path, toy, caplog):
    sizes = copy_shards(toy, tmp_path / "shards", keep_sizes=True)
    said = {**sizes, "shard-0001.tar": sizes["shard-0001.tar"] - 3, "shard-0004.tar": sizes["shard-0004.tar"] + 2}
    (tmp_path / "shards" / "sizes.json").write_text(json.dumps(said))
    trained, skipped = read_epoch(f"{tmp_path}/shards/shard-{{0000..0007}}.tar")
    assert (
        skipped["not in sizes.json"] == 3
        and skipped[f"shard ended after {sizes['shard-0004.tar']} of {said['shard-0004.tar']} samples"] == 2
    )
    assert sum(trained.values()) == sum(sizes.values()) - 3
    messages = " ".join(record.getMessage() for record in caplog.records)
    assert (
        f"shard-0001.tar holds {sizes['shard-0001.tar']} samples where {said['shard-0001.tar']} were planned"
        in messages
    )
    assert f"shard-0004.tar holds {sizes['shard-0004.tar']} samples, not {said['shard-0004.tar']}" in messages


@pytest.mark.parametrize("keep_sizes", [False, True], ids=["counted", "sizes.json"])
def test_an_empty_shard_is_one_counted_bad_shard_and_only_empty_shards_are_refused(tmp_path, toy, keep_sizes):
    sizes = copy_shards(toy, tmp_path / "shards", keep_sizes=keep_sizes)
    with tarfile.open(tmp_path / "shards" / "shard-0003.tar", "w"):
        pass  # a whole tar with no member
    if keep_sizes:
        (tmp_path / "shards" / "sizes.json").write_text(json.dumps({**sizes, "shard-0003.tar": 0}))
    trained, skipped = read_epoch(f"{tmp_path}/shards/shard-{{0000..0007}}.tar")
    assert skipped == Counter({"empty shard": 1})
    assert sum(trained.values()) == sum(sizes.values()) - sizes["shard-0003.tar"]
    with pytest.raises(DataFormatError, match="the training shards hold no sample"):
        read_epoch(f"{tmp_path}/shards/shard-0003.tar")


def test_resuming_on_a_table_that_grew_is_refused_with_the_rows_then_and_now(tmp_path, toy, cli):
    table = tmp_path / "pairs.jsonl"
    shutil.copy(toy["parallel"], table)
    flags = [*toy_teacher_inputs(toy)[:4], "--train_files", str(table), "--save_steps", "2"]
    run_stage("teacher", tmp_path / "out", *flags, "--max_steps", "2")
    before = table.stat().st_size
    table.write_text(table.read_text() + json.dumps({"english": "a new cat", "translation": "eine neue Katze"}) + "\n")
    resume = ["--max_steps", "4", "--resume_from_checkpoint", "true", "--overwrite_output_dir", "true"]
    message = stage_refusal(cli, "teacher", tmp_path / "out", *flags, *resume)
    assert f"{table}: 72 rows then, 73 now ({table} {before} -> {table.stat().st_size} bytes)" in message
    assert "\n" not in message and message.startswith("altclip-train: ")
