"""Record readers: formats, errors that name the file and row, skipped rows."""

import json

import datasets
import pytest

from altclip.common.records import DataFormatError, Record, SkipCounter, Skipped, iter_records


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
