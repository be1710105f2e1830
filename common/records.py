"""Rows from JSONL, CSV and TSV files and from folders written by `datasets.save_to_disk`.

A file that cannot be read, or whose first row lacks a required column, is a `DataFormatError` naming the file
and row: the input is wrong as a whole. A later malformed row is yielded as `Skipped` so that long jobs count it
and go on (open_clip's ``log_and_continue``).
"""

import csv
import json
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

TEXT_TABLE_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv"}


class DataFormatError(ValueError):
    """Input data that cannot be used at all: unreadable file, missing column, unknown format."""


@dataclass(frozen=True)
class Skipped:
    """A record that was left out, with where it was and why (counted and logged, never fatal)."""

    where: str
    reason: str


@dataclass(frozen=True)
class Record:
    """One row: its location (``file:row``) and its fields."""

    where: str
    fields: dict[str, Any]


def record_format(path: str | Path) -> str:
    """``jsonl``, ``csv``, ``tsv``, ``datasets`` (a save_to_disk folder) or ``tar`` (webdataset shard)."""
    path = Path(path)
    if path.is_dir():
        if (
            (path / "dataset_info.json").is_file()
            or (path / "state.json").is_file()
            or (path / "dataset_dict.json").is_file()
        ):
            return "datasets"
        raise DataFormatError(f"{path} is a folder but not one written by datasets' save_to_disk.")
    if not path.exists():
        raise DataFormatError(f"{path} does not exist.")
    if path.suffix == ".tar":
        return "tar"
    try:
        return TEXT_TABLE_SUFFIXES[path.suffix.lower()]
    except KeyError:
        raise DataFormatError(
            f"{path}: unknown data format {path.suffix!r}; use .jsonl, .csv, .tsv, .tar or a datasets folder."
        ) from None


def _missing(fields: dict[str, Any] | Sequence[str], required: Sequence[str]) -> list[str]:
    return [column for column in required if column not in fields]


def _iter_jsonl(path: Path) -> Iterator[Record | Skipped]:
    with path.open(encoding="utf-8-sig") as handle:
        for line_number, line in enumerate(handle, start=1):
            where = f"{path}:{line_number}"
            if not line.strip():
                continue
            try:
                fields = json.loads(line)
            except json.JSONDecodeError as error:
                yield Skipped(where, f"not valid JSON ({error.msg})")
                continue
            if not isinstance(fields, dict):
                yield Skipped(where, f"a JSON {type(fields).__name__}, not an object")
                continue
            yield Record(where, fields)


def _iter_delimited(path: Path, delimiter: str, required: Sequence[str]) -> Iterator[Record | Skipped]:
    # utf-8-sig: a leading byte-order mark (spreadsheet exports write one) is not part of the first column's name
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        header = reader.fieldnames or []
        if missing := _missing(header, required):
            raise DataFormatError(
                f"{path}:1: the header lacks column(s) {', '.join(missing)} (it has: {', '.join(header) or 'nothing'})."
            )
        for fields in reader:
            where = f"{path}:{reader.line_num}"
            if None in fields or any(fields[column] is None for column in required):
                yield Skipped(where, f"has {len(header)} columns in the header but not in this row")
                continue
            yield Record(where, fields)


def _iter_saved_dataset(path: Path, required: Sequence[str]) -> Iterator[Record | Skipped]:
    import datasets

    dataset = datasets.load_from_disk(str(path))
    if isinstance(dataset, datasets.DatasetDict):
        if "train" not in dataset:
            raise DataFormatError(f"{path} holds splits {list(dataset)}; point at one split's folder.")
        dataset = dataset["train"]
    if missing := _missing(dataset.column_names, required):
        raise DataFormatError(
            f"{path}: the dataset lacks column(s) {', '.join(missing)} (it has: {', '.join(dataset.column_names)})."
        )
    for index, fields in enumerate(dataset):
        yield Record(f"{path}[{index}]", fields)


def iter_records(path: str | Path, required: Sequence[str]) -> Iterator[Record | Skipped]:
    """Rows of a JSONL/CSV/TSV file or a saved dataset; the first row must carry every `required` column."""
    path = Path(path)
    kind = record_format(path)
    if kind == "datasets":
        yield from _iter_saved_dataset(path, required)
        return
    if kind == "tar":
        raise DataFormatError(f"{path}: tar shards hold images and captions; use them for contrastive data.")
    try:
        rows = _iter_jsonl(path) if kind == "jsonl" else _iter_delimited(path, "," if kind == "csv" else "\t", required)
        first = True
        for row in rows:
            if isinstance(row, Record) and (missing := _missing(row.fields, required)):
                if first:
                    raise DataFormatError(
                        f"{row.where}: missing column(s) {', '.join(missing)} (the row has: {', '.join(row.fields)})."
                    )
                row = Skipped(row.where, f"missing column(s) {', '.join(missing)}")
            first = first and not isinstance(row, Record)
            yield row
    except (OSError, UnicodeDecodeError) as error:
        raise DataFormatError(f"cannot read {path}: {error}") from error


def write_jsonl(path: str | Path, rows: Sequence[dict]) -> Path:
    """Writes `rows` as JSON lines (UTF-8, non-ASCII kept), the table format `iter_records` reads first."""
    path = Path(path)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


class SkipCounter:
    """Counts skipped records by reason and logs the first few of each reason with their location."""

    def __init__(self, log_first: int = 3):
        self.by_reason: Counter[str] = Counter()
        self.log_first = log_first

    def add(self, skipped: Skipped) -> None:
        reason = skipped.reason.split(" (")[0]
        self.by_reason[reason] += 1
        if self.by_reason[reason] <= self.log_first:
            logger.warning("Skipping %s: %s", skipped.where, skipped.reason)

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())


def split_skipped(rows: list[dict]) -> tuple[list[dict], list[Skipped]]:
    """A batch's usable rows and its `Skipped` markers (there may be no usable row: the batch is then empty)."""
    skipped = [row["skipped"] for row in rows if "skipped" in row]
    usable = [row for row in rows if "skipped" not in row]
    return usable, skipped
