"""Tables (JSONL/CSV/TSV/Parquet files or URLs, `save_to_disk` folders) as memory-mapped Arrow datasets.

`datasets` builds and caches the Arrow file (``Dataset.from_generator``; a second open is a cache hit) and
memory-maps it, so a row costs no Python memory in the trainer or its DataLoader workers. The line reader below
is our own because `datasets`' json/csv builders abort the whole load on one malformed or non-UTF-8 line: here
such a line becomes a row whose ``_skipped`` column says why, counted as a skipped sample each time it is drawn
(a stray CSV/TSV quote too: `altclip.common.records.delimited_records` bounds a quoted field's span).

A big table is built by several processes: `table_chunks` cuts each file into byte ranges that start where a
record starts and keep their first line number, which `datasets`' ``num_proc`` splits among processes (the row
order, locations and cache key stay those of one process). `built_first` lets the other ranks wait for the build
in a barrier whose timeout covers it, instead of ``main_process_first``'s, which ``ddp_timeout`` bounds.
"""

import contextlib
import csv
import datetime
import hashlib
import io
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet
import torch

from altclip.common.files import replace_atomically
from altclip.common.records import (
    NOT_UTF8,
    QUOTED_SPAN_LINES,
    DataFormatError,
    Line,
    check_utf8,
    delimited_records,
    text_lines,
)

from .sources import Source, folder_of, is_remote, open_stream

logger = logging.getLogger(__name__)

WHERE, SKIPPED = "_where", "_skipped"
READER_VERSION = 2  # part of the cache key: raise it when the rows a file gives change (2: bounded quotes)
CHUNK_BYTES = 4 << 20  # a file is built in pieces of about this size, several at a time (`num_proc`)
BUILD_BYTES_PER_SECOND = 200_000  # about half the slowest one-process build measured (420 kB/s, a loaded node)
CHUNK_SEARCH_BYTES = 1 << 20  # how far past a piece's nominal end its true start (a record start) is looked for


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


def _jsonl_rows(url: str, raw, columns: Sequence[str], number: int, offset: int, end: int | None) -> Iterator[dict]:
    """Rows of the JSON lines of `raw` that start before byte `end`; the first is line `number` at `offset`."""
    for line in raw:
        if end is not None and offset >= end:
            return
        where, number, offset = f"{url}:{number}", number + 1, offset + len(line)
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


def _delimited_rows(url: str, lines: Iterator[Line], columns: Sequence[str], header: list[str], delimiter: str, end):
    index = {name: position for position, name in enumerate(header)}
    for line, fields in delimited_records(lines, delimiter, len(header), end):
        where = f"{url}:{line.number}"
        if isinstance(fields, str):
            yield _bad(where, fields, columns)
        else:
            yield _checked(where, {column: fields[index[column]] for column in columns if column in index}, columns)


def _rows(chunks: list[tuple], kind: str, columns: tuple[str, ...], reader_version: int) -> Iterator[dict]:
    """Generator of `datasets.Dataset.from_generator`: the rows of byte-range `chunks` (url, start, end, first line
    number, stamp), in order. ``num_proc`` hands each process a run of chunks; the stamps and `reader_version`
    only key the cache."""
    for url, start, end, first_line, _stamp in chunks:
        with open_stream(url) as raw:
            header = raw.readline() if kind != "jsonl" else b""
            if start is not None and start != len(header):
                raw.seek(start)
            offset = len(header) if start is None else start
            if kind == "jsonl":
                yield from _jsonl_rows(url, raw, columns, first_line, offset, end)
            else:
                lines = text_lines(raw, first_line, offset)
                delimiter = "," if kind == "csv" else "\t"
                header_text = header.decode("utf-8-sig", errors="replace")  # a byte-order mark is not a column name
                names = next(csv.reader([header_text], delimiter=delimiter), [])
                yield from _delimited_rows(url, lines, columns, names, delimiter, end)


def _stamp(url: str):
    if is_remote(url):
        return url
    stat = os.stat(url)
    return url, stat.st_size, stat.st_mtime_ns


def _chunk_start(handle, target: int, quoted: bool) -> int | None:
    """The first line start at or after byte `target` where a record surely starts: any line start for JSONL; for
    CSV/TSV one after QUOTED_SPAN_LINES - 1 lines without a quote, so that no record (bounded by that span) runs
    across it. None if there is none within CHUNK_SEARCH_BYTES."""
    handle.seek(target)
    if target:
        handle.readline()  # the rest of the line `target` falls in
    position, quote_free = handle.tell(), 0
    while position - target < CHUNK_SEARCH_BYTES:
        if not quoted or quote_free >= QUOTED_SPAN_LINES - 1:
            return position
        line = handle.readline()
        if not line:
            return None
        quote_free = quote_free + 1 if b'"' not in line else 0
        position += len(line)
    return None


def table_chunks(url: str, kind: str, cache_dir: str | None = None) -> list[tuple]:
    """The byte ranges (url, start, end, first line number, stamp) that `_rows` reads of one file, about
    CHUNK_BYTES each and cut where a record starts, so that processes build them apart and still report every
    skipped row with its true line number. Remote files are one chunk (read as a stream). Finding them reads the
    file once (line numbers); they are kept beside the Arrow cache, so a cache hit does not read it again."""
    if is_remote(url):
        return [(url, None, None, 1 if kind == "jsonl" else 2, _stamp(url))]
    key = json.dumps([_stamp(url), kind, CHUNK_BYTES, READER_VERSION])
    kept = Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / "altclip_table_chunks"
    kept = kept / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"
    try:
        starts, numbers = json.loads(kept.read_text())
    except (OSError, ValueError):
        starts, numbers = _find_chunks(url, kind)
        try:
            kept.parent.mkdir(parents=True, exist_ok=True)
            # a temporary name unique across the nodes sharing the cache, removed when the write fails
            replace_atomically(kept, lambda partial: partial.write_text(json.dumps([starts, numbers])))
        except OSError as error:  # a read-only cache: found again next time
            logger.debug("Could not keep the chunks of %s in %s: %s", url, kept, error)
    ends = [*starts[1:], None]
    return [(url, start, end, number, _stamp(url)) for start, end, number in zip(starts, ends, numbers)]


def _find_chunks(url: str, kind: str) -> tuple[list[int], list[int]]:
    """(start offsets, first line numbers) of `table_chunks`."""
    first_line = 1 if kind == "jsonl" else 2
    size, starts = os.path.getsize(url), []
    with open(url, "rb") as handle:
        starts.append(len(handle.readline()) if kind != "jsonl" else 0)
        target = starts[0] + CHUNK_BYTES
        while target < size:
            start = _chunk_start(handle, target, quoted=kind != "jsonl")
            if start is not None and starts[-1] < start < size:
                starts.append(start)
            target = (start or target) + CHUNK_BYTES
        numbers = [first_line]
        handle.seek(starts[0])
        for previous, start in zip(starts, starts[1:]):
            newlines = sum(block.count(b"\n") for block in _blocks(handle, start - previous))
            numbers.append(numbers[-1] + newlines)
    return starts, numbers


def _blocks(handle, length: int, block: int = 1 << 24) -> Iterator[bytes]:
    while length > 0:
        data = handle.read(min(block, length))
        if not data:
            return
        length -= len(data)
        yield data


def _check_header(url: str, kind: str, columns: Sequence[str]) -> None:
    """Refuses a file whose header (CSV/TSV) or first JSON object lacks a column, or that is in another encoding
    than UTF-8 (`check_utf8`): the input is wrong as a whole."""
    with open_stream(url) as raw:
        check_utf8(raw, url)
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


def open_table(
    source: Source, columns: Sequence[str], cache_dir: str | None = None, processes: int | None = None
) -> datasets.Dataset:
    """The source's rows as one memory-mapped Arrow dataset with `columns` (and ``_where``/``_skipped`` for
    line-based formats); built once (by `processes`, default every CPU), then opened from `datasets`' cache."""
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
        dataset = _built_table(source, columns, cache_dir, processes)
    _require_columns(dataset, columns, source.spec)
    keep = [name for name in dataset.column_names if name in (*columns, WHERE, SKIPPED)]
    dataset = dataset.select_columns(keep)
    for column, feature in dataset.features.items():
        if isinstance(feature, datasets.Image):  # decoded by our image loader, where errors are counted
            dataset = dataset.cast_column(column, datasets.Image(decode=False))
    if len(dataset) == 0:
        raise DataFormatError(f"{source.spec} holds no row.")
    return dataset


def build_processes(requested: int | None = None) -> int:
    """Processes that build a table: `requested`, else every CPU this process may use."""
    return max(1, requested or len(os.sched_getaffinity(0)))


def _built_table(source: Source, columns: list[str], cache_dir: str | None, processes: int | None) -> datasets.Dataset:
    """A text table built by `_rows` over chunks of its files, several processes at once on a cache miss."""
    chunks = [chunk for url in source.urls for chunk in table_chunks(url, source.kind, cache_dir)]
    features = datasets.Features({name: datasets.Value("string") for name in [*columns, WHERE, SKIPPED]})
    processes = min(build_processes(processes), len(chunks))
    started = time.perf_counter()
    dataset = datasets.Dataset.from_generator(
        _rows,
        features=features,
        cache_dir=cache_dir,
        num_proc=processes if processes > 1 else None,
        gen_kwargs={
            "chunks": chunks,  # the list `num_proc` splits; its order is the row order
            "kind": source.kind,
            "columns": tuple(columns),  # tuples: datasets would take every list here for a list to split
            "reader_version": READER_VERSION,
        },
    )
    seconds = time.perf_counter() - started
    if seconds > 5:  # a build, not a cache hit
        logger.info(
            "Built %s: %d rows in %.0f s (%d rows/s, %d chunk(s), %d process(es))",
            source.spec,
            len(dataset),
            seconds,
            len(dataset) / seconds,
            len(chunks),
            processes,
        )
    return dataset


def _bytes_of(url: str) -> int | None:
    if not is_remote(url):
        return (
            sum(path.stat().st_size for path in Path(url).rglob("*") if path.is_file())
            if Path(url).is_dir()
            else os.path.getsize(url)
        )
    try:
        import fsspec

        return int(fsspec.open(url).fs.size(url))
    except Exception:  # a pipe: or a server that does not say: no size
        return None


def build_wait_seconds(sources: Sequence[Source], ddp_timeout: int) -> int:
    """How long the other processes may wait for a table build: the bytes at BUILD_BYTES_PER_SECOND, as if the
    build processes gained nothing (a busy node), never less than `ddp_timeout`; a day where a file's size cannot
    be known. Only a hung build waits it out: a failed one ends the job through torchrun at once."""
    sizes = [_bytes_of(url) for source in sources if not source.is_shards for url in source.urls]
    if any(size is None for size in sizes):
        return max(ddp_timeout, 24 * 3600)
    return max(ddp_timeout, math.ceil(sum(sizes) / BUILD_BYTES_PER_SECOND))


@contextlib.contextmanager
def built_first(training_args, sources: Sequence[Source], processes: int | None, what: str) -> Iterator[None]:
    """``training_args.main_process_first`` for table builds: each node's first process builds (or opens) the
    tables while the others wait in a barrier of their own, whose timeout covers the build (`build_wait_seconds`)
    rather than ``ddp_timeout``, which a 100M-row build outlasts; then the others open the cached Arrow files."""
    if training_args.world_size <= 1 or not torch.distributed.is_initialized():
        yield
        return
    processes = build_processes(processes)
    seconds = build_wait_seconds(sources, int(training_args.ddp_timeout))
    group = torch.distributed.new_group(backend="gloo", timeout=datetime.timedelta(seconds=seconds))
    first = training_args.local_process_index == 0
    if first:
        logger.info(
            "%s: built (or opened) by the first process of each node with %d process(es); the others wait up to "
            "%.0f min for it (ddp_timeout: %.0f min)",
            what,
            processes,
            seconds / 60,
            training_args.ddp_timeout / 60,
        )
    else:
        torch.distributed.barrier(group=group)
    yield
    if first:
        torch.distributed.barrier(group=group)
    torch.distributed.destroy_process_group(group)


class TableRows:
    """Rows of several sources' tables addressed by one global index (sources back to back)."""

    def __init__(
        self,
        sources: Sequence[Source],
        columns: Sequence[str],
        cache_dir: str | None = None,
        build_processes: int | None = None,
    ):
        self.sources = list(sources)
        self.tables = [open_table(source, columns, cache_dir, build_processes) for source in sources]
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
