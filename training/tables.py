"""Tables (JSONL/CSV/TSV/Parquet files or URLs, `save_to_disk` folders) as memory-mapped Arrow datasets.

`datasets` builds and caches the Arrow file (``Dataset.from_generator``; a second open is a cache hit) and
memory-maps it, so a row costs no Python memory in the trainer or its DataLoader workers. The line reader below
is our own because `datasets`' json/csv builders abort the whole load on one malformed or non-UTF-8 line: here
such a line becomes a row whose ``_skipped`` column says why, counted as a skipped sample each time it is drawn.
"""

import csv
import io
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence

import datasets
import numpy as np
import pyarrow.parquet

from altclip.common.records import DataFormatError

from .sources import Source, folder_of, is_remote, open_stream

logger = logging.getLogger(__name__)

WHERE, SKIPPED = "_where", "_skipped"
NOT_UTF8 = re.compile("[\udc80-\udcff]")  # bytes that surrogateescape kept: the line was not UTF-8


def _bad(where: str, reason: str, columns: Sequence[str]) -> dict:
    return {**dict.fromkeys(columns), WHERE: where, SKIPPED: reason}


def _checked(where: str, fields, columns: Sequence[str]) -> dict:
    """The row's `columns` as text, or a skipped row naming the missing or non-text column (or non-UTF-8 bytes,
    which the CSV reader keeps as surrogate escapes)."""
    if not isinstance(fields, dict):
        return _bad(where, f"a JSON {type(fields).__name__}, not an object", columns)
    if missing := [column for column in columns if column not in fields]:
        return _bad(where, f"missing column(s) {', '.join(missing)}", columns)
    for column in columns:
        value = fields[column]
        if not isinstance(value, str):
            return _bad(where, f"{column} is {type(value).__name__}, not text", columns)
        if NOT_UTF8.search(value):
            return _bad(where, "not UTF-8 text", columns)
    return {**{column: fields[column] for column in columns}, WHERE: where, SKIPPED: None}


def _jsonl_rows(url: str, raw, columns: Sequence[str]) -> Iterator[dict]:
    for line_number, line in enumerate(raw, start=1):
        where = f"{url}:{line_number}"
        try:
            text = line.decode("utf-8-sig")
        except UnicodeDecodeError:
            yield _bad(where, "not UTF-8 text", columns)
            continue
        if not text.strip():
            continue
        try:
            fields = json.loads(text)
        except json.JSONDecodeError as error:
            yield _bad(where, f"not valid JSON ({error.msg})", columns)
            continue
        yield _checked(where, fields, columns)


def _delimited_rows(url: str, raw, columns: Sequence[str], delimiter: str) -> Iterator[dict]:
    # utf-8-sig: a leading byte-order mark (spreadsheet exports write one) is not part of the first column's name
    text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")
    reader = csv.DictReader(text, delimiter=delimiter)
    for fields in reader:
        where = f"{url}:{reader.line_num}"
        if None in fields or any(value is None for value in fields.values()):
            yield _bad(where, f"has {len(reader.fieldnames)} columns in the header but not in this row", columns)
            continue
        yield _checked(where, fields, columns)


def _rows(urls: list[str], kind: str, columns: tuple[str, ...], stamps: tuple) -> Iterator[dict]:
    """Generator of `datasets.Dataset.from_generator`; `stamps` (size, mtime) only key the cache."""
    for url in urls:
        with open_stream(url) as raw:
            if kind == "jsonl":
                yield from _jsonl_rows(url, raw, columns)
            else:
                yield from _delimited_rows(url, raw, columns, "," if kind == "csv" else "\t")


def _stamp(url: str):
    if is_remote(url):
        return url
    stat = os.stat(url)
    return url, stat.st_size, stat.st_mtime_ns


def _check_header(url: str, kind: str, columns: Sequence[str]) -> None:
    """Refuses a file whose header (CSV/TSV) or first JSON object lacks a column: the input is wrong as a whole."""
    with open_stream(url) as raw:
        if kind == "jsonl":
            for line_number, line in enumerate(raw, start=1):
                try:
                    fields = json.loads(line.decode("utf-8-sig"))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    continue
                if isinstance(fields, dict):
                    if missing := [column for column in columns if column not in fields]:
                        raise DataFormatError(
                            f"{url}:{line_number}: missing column(s) {', '.join(missing)} (the row has: "
                            f"{', '.join(fields)}); name the columns with --english_column/--translation_column or "
                            "--image_column/--caption_column."
                        )
                    return
            raise DataFormatError(f"{url} holds no JSON object line.")
        header = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="").readline()
        names = next(csv.reader([header], delimiter="," if kind == "csv" else "\t"), [])
        if missing := [column for column in columns if column not in names]:
            raise DataFormatError(
                f"{url}:1: the header lacks column(s) {', '.join(missing)} (it has: {', '.join(names) or 'nothing'})."
            )


def _require_columns(dataset: datasets.Dataset, columns: Sequence[str], spec: str) -> None:
    if missing := [column for column in columns if column not in dataset.column_names]:
        raise DataFormatError(
            f"{spec}: the dataset lacks column(s) {', '.join(missing)} (it has: {', '.join(dataset.column_names)})."
        )


def check_columns(source: Source, columns: Sequence[str]) -> None:
    """Refuses a table source that lacks one of `columns` (header, first JSON object or schema), cheaply: before
    any model loads and before the Arrow file is built."""
    if source.kind == "saved":
        open_table(source, columns)  # memory-mapped: opening is cheap, and it checks the columns
        return
    for url in source.urls:
        if source.kind == "parquet":
            with open_stream(url) as handle:
                names = pyarrow.parquet.read_schema(handle).names
            if missing := [column for column in columns if column not in names]:
                raise DataFormatError(
                    f"{url}: the table lacks column(s) {', '.join(missing)} (it has: {', '.join(names)})."
                )
        else:
            _check_header(url, source.kind, columns)


def open_table(source: Source, columns: Sequence[str], cache_dir: str | None = None) -> datasets.Dataset:
    """The source's rows as one memory-mapped Arrow dataset with `columns` (and ``_where``/``_skipped`` for
    line-based formats); built once, then opened from `datasets`' cache."""
    columns = list(columns)
    if source.kind == "saved":
        dataset = datasets.load_from_disk(source.urls[0])
        if isinstance(dataset, datasets.DatasetDict):
            if "train" not in dataset:
                raise DataFormatError(f"{source.spec} holds splits {list(dataset)}; point at one split's folder.")
            dataset = dataset["train"]
    elif source.kind == "parquet":
        dataset = datasets.load_dataset("parquet", data_files=list(source.urls), split="train", cache_dir=cache_dir)
    else:
        for url in source.urls:
            _check_header(url, source.kind, columns)
        features = datasets.Features({name: datasets.Value("string") for name in [*columns, WHERE, SKIPPED]})
        dataset = datasets.Dataset.from_generator(
            _rows,
            features=features,
            cache_dir=cache_dir,
            gen_kwargs={
                "urls": list(source.urls),
                "kind": source.kind,
                "columns": tuple(columns),  # tuples: datasets would take every list here for a shard list
                "stamps": tuple(_stamp(url) for url in source.urls),
            },
        )
    _require_columns(dataset, columns, source.spec)
    keep = [name for name in dataset.column_names if name in (*columns, WHERE, SKIPPED)]
    dataset = dataset.select_columns(keep)
    for column, feature in dataset.features.items():
        if isinstance(feature, datasets.Image):  # decoded by our image loader, where errors are counted
            dataset = dataset.cast_column(column, datasets.Image(decode=False))
    if len(dataset) == 0:
        raise DataFormatError(f"{source.spec} holds no row.")
    return dataset


class TableRows:
    """Rows of several sources' tables addressed by one global index (sources back to back)."""

    def __init__(self, sources: Sequence[Source], columns: Sequence[str], cache_dir: str | None = None):
        self.sources = list(sources)
        self.tables = [open_table(source, columns, cache_dir) for source in sources]
        self.sizes = [len(table) for table in self.tables]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        source = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return source, int(index - self.offsets[source])

    def row(self, index: int) -> tuple[str, dict]:
        """(where, fields) of a row; ``fields[_skipped]`` is set for a line that could not be used."""
        source, local = self.locate(index)
        fields = self.tables[source][local]
        where = fields.pop(WHERE, None) or f"{self.sources[source].spec}[{local}]"
        return where, fields

    def column_batches(self, column: str, batch_rows: int = 65_536) -> Iterator[list]:
        """A column of every source in order, as Python lists of at most `batch_rows` values."""
        for table in self.tables:
            data = table.data.column(column)
            for start in range(0, len(table), batch_rows):
                yield data.slice(start, batch_rows).to_pylist()

    def skipped_mask(self) -> np.ndarray:
        """True where a row is a skipped line."""
        parts = []
        for table in self.tables:
            if SKIPPED in table.column_names:
                parts.append(np.asarray(table.data.column(SKIPPED).is_valid()))
            else:
                parts.append(np.zeros(len(table), dtype=bool))
        return np.concatenate(parts)


def source_folder(where: str) -> str:
    """The folder of the table a row came from (``file:line`` or ``spec[i]``), for relative image paths."""
    table = where.rsplit(":", 1)[0] if not where.endswith("]") else where.rsplit("[", 1)[0]
    return folder_of(table)
