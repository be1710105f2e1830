"""Record readers: formats, errors that name the file and row, skipped rows."""

import json

import datasets
import pytest

from altclip.common.records import DataFormatError, Record, SkipCounter, Skipped, iter_records
from altclip.training.data.epoch_plan import GlobalBatchSampler, epoch_rng, weighted_draw


def rows_of(path, required=("english", "translation")):
    return list(iter_records(path, required))


def test_jsonl_csv_tsv_and_saved_datasets_give_the_same_rows(tmp_path):
    rows = [{"english": "a cat", "translation": "un chat"}, {"english": "a dog", "translation": "ein Hund"}]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "a.csv").write_text("english,translation\na cat,un chat\na dog,ein Hund\n")
    (tmp_path / "a.tsv").write_text("english\ttranslation\na cat\tun chat\na dog\tein Hund\n")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    for name in ("a.jsonl", "a.csv", "a.tsv", "saved"):
        read = rows_of(tmp_path / name)
        assert all(isinstance(row, Record) for row in read), name
        assert [{k: row.fields[k] for k in ("english", "translation")} for row in read] == rows, name


def test_missing_column_in_a_header_names_file_row_and_columns(tmp_path):
    (tmp_path / "a.csv").write_text("english,text\na cat,un chat\n")
    with pytest.raises(
        DataFormatError, match=r"a\.csv:1: the header lacks column\(s\) translation \(it has: english, text\)"
    ):
        rows_of(tmp_path / "a.csv")


def test_first_jsonl_row_without_a_column_is_an_error_later_ones_are_skipped(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"english": "a"}\n')
    with pytest.raises(DataFormatError, match=r"bad\.jsonl:1: missing column\(s\) translation"):
        rows_of(tmp_path / "bad.jsonl")
    (tmp_path / "ok.jsonl").write_text('{"english": "a", "translation": "b"}\n{"english": "c"}\n{oops\n[1]\n')
    read = rows_of(tmp_path / "ok.jsonl")
    assert isinstance(read[0], Record)
    assert [(type(r), r.where.rsplit(":", 1)[1]) for r in read[1:]] == [(Skipped, "2"), (Skipped, "3"), (Skipped, "4")]
    assert "missing column(s) translation" in read[1].reason and "not valid JSON" in read[2].reason


@pytest.mark.parametrize("name", ["a.csv", "a.tsv", "a.jsonl"])
def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path, name):
    """A spreadsheet's UTF-8 export starts with a BOM; it was read as part of 'english' (reported missing)."""
    body = {
        "a.csv": "english,translation\na cat,un chat\n",
        "a.tsv": "english\ttranslation\na cat\tun chat\n",
        "a.jsonl": json.dumps({"english": "a cat", "translation": "un chat"}) + "\n",
    }[name]
    (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + body.encode())
    (record,) = rows_of(tmp_path / name)
    assert isinstance(record, Record) and record.fields == {"english": "a cat", "translation": "un chat"}


def test_csv_row_with_too_few_fields_is_skipped(tmp_path):
    (tmp_path / "a.csv").write_text("english,translation\na cat,un chat\nlonely\n")
    read = rows_of(tmp_path / "a.csv")
    assert isinstance(read[1], Skipped) and read[1].where.endswith("a.csv:3")


def test_unreadable_unknown_and_missing_inputs_are_named(tmp_path):
    (tmp_path / "binary.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataFormatError, match=r"cannot read .*binary\.jsonl"):
        rows_of(tmp_path / "binary.jsonl")
    (tmp_path / "data.parquet").write_text("x")
    with pytest.raises(DataFormatError, match=r"data\.parquet: unknown data format"):
        rows_of(tmp_path / "data.parquet")
    with pytest.raises(DataFormatError, match=r"nothing\.jsonl does not exist"):
        rows_of(tmp_path / "nothing.jsonl")
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataFormatError, match="not one written by datasets' save_to_disk"):
        rows_of(tmp_path / "folder")


def test_saved_dataset_without_a_column_is_named(tmp_path):
    datasets.Dataset.from_list([{"english": "a"}]).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(DataFormatError, match=r"saved: the dataset lacks column\(s\) translation"):
        rows_of(tmp_path / "saved")


def test_skip_counter_groups_reasons():
    counter = SkipCounter()
    for where in ("a:1", "a:2"):
        counter.add(Skipped(where, "not valid JSON (Expecting value)"))
    counter.add(Skipped("a:3", "empty caption"))
    assert counter.total == 3 and counter.by_reason == {"not valid JSON": 2, "empty caption": 1}


def test_weighted_draw_follows_the_weights_and_changes_its_subsample_per_epoch():
    first = weighted_draw([100, 10], [1, 1], epoch_rng(0, 0))
    counts = [int((first < 100).sum()), int((first >= 100).sum())]
    assert counts == [55, 55]  # the small source is repeated, the large one subsampled
    assert set(first[first >= 100].tolist()) == set(range(100, 110))
    second = weighted_draw([100, 10], [1, 1], epoch_rng(0, 1))
    assert set(first[first < 100].tolist()) != set(second[second < 100].tolist())
    assert weighted_draw([100, 10], None, epoch_rng(0, 0)).tolist() == list(range(110))


@pytest.mark.parametrize("rows", [64, 61, 3])
def test_global_batches_hold_every_row_once_and_every_rank_the_same_steps(rows):
    def batches(world):
        batch = 16 // world  # the same global batch of 16 rows whatever the number of processes
        return [list(GlobalBatchSampler([rows], batch, seed=3, rank=rank, world_size=world)) for rank in range(world)]

    two = batches(2)
    assert len(two[0]) == len(two[1]) == len(GlobalBatchSampler([rows], 8, world_size=2)) == -(-rows // 16)
    assert sorted(index for rank in two for batch in rank for index in batch) == list(range(rows))
    (one,) = batches(1)  # the same global batches, whatever the number of processes
    assert [sorted(a + b) for a, b in zip(*two)] == [sorted(batch) for batch in one]


def test_explicit_equal_weights_mix_half_and_half_unlike_no_weights(tmp_path):
    from altclip.training.data.sources import parse_sources, source_weights

    for name in ("a", "b"):
        (tmp_path / f"{name}.jsonl").write_text("{}\n")
    specs = [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]
    assert source_weights(parse_sources(specs)) is None
    assert source_weights(parse_sources(specs, [1, 1])) == [1.0, 1.0]
    drawn = weighted_draw([90, 10], [1.0, 1.0], epoch_rng(0, 0))
    assert int((drawn >= 90).sum()) == 50  # the small source is repeated to half of the epoch
