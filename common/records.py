"""Rows from JSONL, CSV and TSV files and from folders written by `datasets.save_to_disk`.

A file that cannot be read, or whose first row lacks a required column, is a `DataFormatError` naming the file
and row: the input is wrong as a whole. A later malformed row is yielded as `Skipped` so that long jobs count it
and go on (open_clip's ``log_and_continue``).
"""

import csv
import json
import logging
import re
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from altclip.common.errors import InputDataError

logger = logging.getLogger(__name__)

TEXT_TABLE_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv"}


class DataFormatError(InputDataError):
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


# A quoted CSV/TSV field may hold newlines (legal CSV), but one stray opening quote would otherwise run on to the
# next quote, however far: a whole file read as one caption. A record that spans more than these is the stray
# quote's line, skipped and counted; the lines after it are read again as rows. Captions and sentences fit well
# inside both bounds; raising them costs nothing but a later resynchronisation after a stray quote.
NOT_UTF8 = re.compile("[\udc80-\udcff]")  # bytes that surrogateescape kept: the line was not UTF-8
QUOTED_SPAN_LINES = 8
QUOTED_SPAN_CHARS = 16_384


STRAY_QUOTE = (
    'stray quote (a field opened with " on this line does not close within {lines} lines / {chars} characters as '
    "a {width}-column row; the next lines are read as rows)"
)


class Line(NamedTuple):
    """A physical line of a text table: 1-based number, byte offset of its start, text (newline kept)."""

    number: int
    offset: int
    text: str


class _Unclosed(Exception):
    """A quoted field runs past QUOTED_SPAN_LINES / QUOTED_SPAN_CHARS or past the end of the data."""


def _quoted_record(first: Line, pull, delimiter: str) -> tuple[list[str] | None, list[Line]]:
    """The fields of the record that starts at `first` (csv quoting, newlines inside quotes allowed within the
    bounds) and the lines it took; None for fields where a quoted field does not close within them."""
    taken, chars = [first], len(first.text)

    def feed() -> Iterator[str]:
        nonlocal chars
        yield first.text
        while True:  # csv asks for another line only while a quoted field is open
            if len(taken) >= QUOTED_SPAN_LINES or chars > QUOTED_SPAN_CHARS:
                raise _Unclosed
            line = pull()
            if line is None:
                raise _Unclosed
            taken.append(line)
            chars += len(line.text)
            yield line.text

    try:
        return next(csv.reader(feed(), delimiter=delimiter)), taken
    except (_Unclosed, csv.Error):
        return None, taken


def _swallows_rows(taken: list[Line], fields: list[str], delimiter: str, width: int) -> bool:
    """A record over several lines that is a stray quote's rather than a quoted field with newlines: its column
    count is off, its quotes are not as a CSV writer puts them (a closing quote not followed by the delimiter or
    the line's end: a stray quote closed by an unrelated one), or (TSV) a field holds a tab, which prose does not."""
    if len(fields) != width:
        return True
    try:
        next(csv.reader([line.text for line in taken], delimiter=delimiter, strict=True))
    except csv.Error:
        return True
    return delimiter == "\t" and any(delimiter in field for field in fields)


def delimited_records(
    lines: Iterable[Line], delimiter: str, width: int, end: int | None = None
) -> Iterator[tuple[Line, list[str] | str]]:
    """(first line, fields) of every CSV/TSV record in `lines` (the header already read: it has `width` columns),
    or (line, reason) for a record that cannot be used. Records that start at byte offset `end` or later are left
    to the next chunk. A stray quote costs its own line only: the lines it would have swallowed are read again."""
    source = iter(lines)
    pending: deque[Line] = deque()

    def pull() -> Line | None:
        return pending.popleft() if pending else next(source, None)

    while (first := pull()) is not None and (end is None or first.offset < end):
        if not first.text.strip("\r\n"):
            continue  # a blank line, as csv skips it
        if '"' not in first.text:
            fields = first.text.rstrip("\r\n").split(delimiter)  # what csv gives for a line without quotes
        else:
            fields, taken = _quoted_record(first, pull, delimiter)
            if fields is None or (len(taken) > 1 and _swallows_rows(taken, fields, delimiter, width)):
                pending.extendleft(reversed(taken[1:]))
                yield first, STRAY_QUOTE.format(lines=QUOTED_SPAN_LINES, chars=QUOTED_SPAN_CHARS, width=width)
                continue
        if len(fields) != width:
            yield first, f"has {width} columns in the header but {len(fields)} in this row"
            continue
        yield first, fields


def text_lines(handle, start_number: int = 1, start_offset: int = 0) -> Iterator[Line]:
    """The lines of a binary stream as `Line`s, decoded as UTF-8 (bytes that are not stay as surrogate escapes)."""
    number, offset = start_number, start_offset
    for raw in handle:
        yield Line(number, offset, raw.decode("utf-8", errors="surrogateescape"))
        number, offset = number + 1, offset + len(raw)


ENCODING_SCAN_BYTES = 1 << 20  # how much of each table the encoding check reads (a source may hold thousands)
ENCODING_MIN_BAD_LINES = 3  # fewer non-UTF-8 lines than this are bad records (skipped and counted), not an encoding


def check_utf8(lines: Iterable[bytes], where: str, limit: int = ENCODING_SCAN_BYTES) -> None:
    """Refuses a table in another encoding (a Latin-1 or cp1252 export), whose captions would otherwise be skipped
    line by line or read as mojibake: among the lines with non-ASCII bytes (in the first `limit` bytes), at least
    ENCODING_MIN_BAD_LINES and more than half are not UTF-8. A few bad lines in a UTF-8 file stay counted skips.
    Raises `InputDataError` naming `where`, the first bad line and the fix."""
    bad, good, first_bad, seen = 0, 0, None, 0
    for number, line in enumerate(lines, start=1):
        seen += len(line)
        if line.isascii():
            pass
        else:
            try:
                line.decode("utf-8")
                good += 1
            except UnicodeDecodeError as error:
                bad += 1
                if first_bad is None:
                    first_bad = (number, line[error.start])
        if seen >= limit:
            break
    if bad >= ENCODING_MIN_BAD_LINES and bad > good:
        number, byte = first_bad
        name = where.rsplit("/", 1)[-1]
        raise InputDataError(
            f"{where}:{number}: not UTF-8 (byte 0x{byte:02x}; {bad} of {bad + good} lines with non-ASCII text are not "
            f"UTF-8): the file is in another encoding, e.g. Latin-1 or cp1252. Convert it to UTF-8 (with or without "
            f"BOM), e.g. iconv -f LATIN1 -t UTF-8 {name} > utf8-{name}"
        )


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
    with path.open("rb") as handle:
        first = handle.readline()
        # utf-8-sig: a leading byte-order mark (spreadsheet exports write one) is not part of the first column's name
        header = next(csv.reader([first.decode("utf-8-sig")], delimiter=delimiter), [])
        if missing := _missing(header, required):
            raise DataFormatError(
                f"{path}:1: the header lacks column(s) {', '.join(missing)} (it has: {', '.join(header) or 'nothing'})."
            )
        for line, fields in delimited_records(text_lines(handle, 2, len(first)), delimiter, len(header)):
            where = f"{path}:{line.number}"
            if isinstance(fields, str):
                yield Skipped(where, fields)
            elif any(NOT_UTF8.search(value) for value in fields):
                yield Skipped(where, "not UTF-8 text")
            else:
                yield Record(where, dict(zip(header, fields)))


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
    """Rows of a JSONL/CSV/TSV file or a saved dataset; the first row must carry every `required` column. A file
    in another encoding than UTF-8 is refused (`check_utf8`)."""
    path = Path(path)
    kind = record_format(path)
    if kind in ("jsonl", "csv", "tsv"):
        with path.open("rb") as handle:
            check_utf8(handle, str(path))
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
