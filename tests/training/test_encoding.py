"""Table encodings: UTF-8 with or without a byte-order mark is read; a table in another encoding (a Latin-1 or cp1252
export) is refused in one line naming the file and its first bad line, before any model loads, instead of training
on mojibake or skipping every accented row; a few bad lines in a UTF-8 file stay counted skips."""

import csv
import io

import pytest
from stage_runs import stage_refusal, toy_teacher_inputs

from altclip.common.errors import InputDataError
from altclip.common.records import Record, iter_records

ROWS = [
    ("a red circle", "un cercle rouge"),
    ("a green square", "un carré vert"),
    ("a blue triangle", "un triangle bleu"),
    ("a small red square", "un petit carré rouge"),
    ("a big circle", "un grand cercle très rond"),
    ("two shapes", "deux formes à côté"),
] * 3


def csv_bytes(encoding: str) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["english", "translation"])
    writer.writerows(ROWS)
    return text.getvalue().encode(encoding)


@pytest.mark.parametrize("encoding", ["latin-1", "cp1252"])
def test_a_table_in_another_encoding_is_refused_before_models_load(cli, tmp_path, toy, monkeypatch, encoding):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the table's encoding was checked")

    monkeypatch.setattr("altclip.training.stages.load_or_build_model", no_model)
    table = tmp_path / "parallel.csv"
    table.write_bytes(csv_bytes(encoding))
    flags = [*toy_teacher_inputs(toy)[:4], "--train_files", str(table), "--max_steps", "1"]
    message = stage_refusal(cli, "teacher", tmp_path / "out", *flags)
    assert message.startswith(f"altclip-train: {table}:3: not UTF-8 (byte 0xe9;")  # line 3: "carré"
    assert "iconv -f LATIN1 -t UTF-8 parallel.csv > utf8-parallel.csv" in message


def test_utf8_with_and_without_bom_is_read_and_a_few_bad_lines_are_counted_not_refused(tmp_path):
    plain, bom = tmp_path / "plain.csv", tmp_path / "bom.csv"
    plain.write_bytes(csv_bytes("utf-8"))
    bom.write_bytes(csv_bytes("utf-8-sig"))
    for path in (plain, bom):
        rows = list(iter_records(path, ["english", "translation"]))
        assert [row.fields["translation"] for row in rows] == [translation for _, translation in ROWS]
    two_bad = tmp_path / "two_bad.csv"
    lines = csv_bytes("utf-8").split(b"\n")
    lines[2], lines[5] = b"x,caf\xe9", b"y,\xff"
    two_bad.write_bytes(b"\n".join(lines))
    rows = list(iter_records(two_bad, ["english", "translation"]))
    assert sum(isinstance(row, Record) for row in rows) == len(ROWS) - 2  # the two bad lines: skipped rows


def test_the_row_reader_of_the_other_jobs_refuses_another_encoding_too(tmp_path):
    table = tmp_path / "captions.tsv"
    table.write_bytes(
        "image\tcaption\n".encode() + "".join(f"{i}.png\tun carré n°{i}\n" for i in range(5)).encode("cp1252")
    )
    with pytest.raises(InputDataError, match=r"captions\.tsv:2: not UTF-8 \(byte 0xe9; 5 of 5 lines"):
        list(iter_records(table, ["image", "caption"]))
