"""A collection as users give it (folders of images, image files, globs, ``{a..b}`` braces, tables with an image
column, webdataset shards, URLs) cut into parts: the unit of work a process embeds and writes, and resumes by.

The plan is a pure function of the sources, so every process computes the same parts and takes every N-th; a part
is the same whatever the number of processes, hence so are its batches and its embeddings.
"""

import glob
import hashlib
import io
import json
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import braceexpand

from altclip.common.collection_index import read_parquet_rows
from altclip.common.records import DataFormatError
from altclip.common.sources import folder_of, is_remote, join_url, open_stream, url_kind

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
SHARD_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
SHARD_CAPTION_KEYS = ("txt", "caption")


@dataclass
class Part:
    """A unit of work: ``files`` (locations and captions), ``table`` rows with image bytes, or one ``shard``."""

    name: str
    kind: str
    items: list[tuple[str, str | None]] = field(default_factory=list)  # files: (path or URL, caption)
    url: str = ""  # table or shard
    image_column: str = ""
    caption_column: str = ""
    start: int = 0  # table rows start..stop
    stop: int = 0

    @property
    def size(self) -> int | None:
        """Images in the part, None for a shard (known once read)."""
        return {"files": len(self.items), "table": self.stop - self.start}.get(self.kind)


@dataclass(frozen=True)
class Sample:
    """One image to embed: where it is (shown to users), what to open, its caption and its key inside a shard."""

    location: str
    source: object
    caption: str | None = None
    key: str | None = None


def _is_image(name: str) -> bool:
    return Path(name.split("?")[0]).suffix.lower() in IMAGE_SUFFIXES


def _expand(spec: str) -> list[str]:
    """A spec's locations: braces expanded, globs and folders listed (images found recursively in a folder)."""
    found: list[str] = []
    for entry in braceexpand.braceexpand(spec.strip()):
        if is_remote(entry):
            found.append(entry)
        elif any(character in entry for character in "*?["):
            found += sorted(path for path in glob.glob(entry, recursive=True) if Path(path).is_file())
        elif Path(entry).is_dir():
            found += sorted(str(path) for path in Path(entry).rglob("*") if path.is_file() and _is_image(path.name))
        elif Path(entry).is_file():
            found.append(entry)
        else:
            raise DataFormatError(f"--images {spec}: {entry} does not exist.")
    return found


def _kind(location: str) -> str:
    if _is_image(location):
        return "image"
    return url_kind(location)  # shards or a table format; anything else: one line naming it


def read_table(url: str, kind: str):
    """A table file or URL (JSONL, CSV, TSV, Parquet) as a pyarrow Table."""
    import pyarrow.csv
    import pyarrow.json
    import pyarrow.parquet

    try:
        with open_stream(url) as stream:
            if kind == "parquet":
                return pyarrow.parquet.read_table(io.BytesIO(stream.read()))
            if kind == "jsonl":
                return pyarrow.json.read_json(stream)
            delimiter = "\t" if kind == "tsv" else ","
            return pyarrow.csv.read_csv(stream, parse_options=pyarrow.csv.ParseOptions(delimiter=delimiter))
    except (pyarrow.ArrowInvalid, OSError) as error:
        raise DataFormatError(f"{url}: cannot be read as a {kind} table ({str(error).splitlines()[0]}).") from None


def _table_parts(url: str, kind: str, image_column: str, caption_column: str, part_size: int) -> list[Part]:
    import pyarrow

    table = read_table(url, kind)
    if image_column not in table.column_names:
        raise DataFormatError(
            f"{url}: no column {image_column!r} (it has {', '.join(table.column_names)}); name the image column "
            "with --image_column."
        )
    captions = table[caption_column].to_pylist() if caption_column in table.column_names else [None] * len(table)
    images = table[image_column]
    if not pyarrow.types.is_string(images.type) and not pyarrow.types.is_large_string(images.type):
        # image bytes (or datasets' {"bytes", "path"} cells): read again by the process that embeds the part
        return [
            Part("", "table", url=url, image_column=image_column, caption_column=caption_column, start=s, stop=e)
            for s, e in ((s, min(s + part_size, len(table))) for s in range(0, len(table), part_size))
        ]
    folder = folder_of(url)
    items = [
        (path if is_remote(path) or Path(path).is_absolute() else join_url(folder, path), None if c is None else str(c))
        for path, c in zip(images.to_pylist(), captions)
        if path
    ]
    return _file_parts(items, part_size)


def _file_parts(items: list[tuple[str, str | None]], part_size: int) -> list[Part]:
    return [Part("", "files", items=items[start : start + part_size]) for start in range(0, len(items), part_size)]


@dataclass
class CollectionPlan:
    """The parts to embed, and the locations left out because they were given twice (overlapping sources such as
    ``photos/ photos/2024/``) or are in the index already (``--add``)."""

    parts: list[Part]
    repeated: list[str] = field(default_factory=list)


def plan_collection(
    specs: Sequence[str],
    part_size: int = 4096,
    image_column: str = "image",
    caption_column: str = "caption",
    first_part: int = 0,
    indexed_locations: frozenset[str] | set[str] = frozenset(),
) -> CollectionPlan:
    """The parts of the sources in `specs`, named ``part-NNNNN`` from `first_part` on, each image location once and
    none of `indexed_locations` (a table or shard whose rows are indexed counts as indexed); empty sources refused."""
    if not specs:
        raise DataFormatError("give --images (folders, image files, globs, tables, shards or URLs).")
    containers = {location.split("#", 1)[0] for location in indexed_locations if "#" in location}
    seen, repeated = set(indexed_locations) | containers, []

    def first_time(location: str) -> bool:
        if location in seen:
            repeated.append(location)
            return False
        seen.add(location)
        return True

    parts: list[Part] = []
    for spec in specs:
        locations = _expand(spec)
        images = [location for location in locations if _kind(location) == "image"]
        found = bool(images)
        parts += _file_parts([(location, None) for location in images if first_time(location)], part_size)
        for location in locations:
            kind = _kind(location)
            if kind == "shards":
                found = True
                if first_time(location):
                    parts.append(Part("", "shard", url=location))
            elif kind != "image":
                table_parts = _table_parts(location, kind, image_column, caption_column, part_size)
                found = found or any(part.size != 0 for part in table_parts)
                if any(part.kind == "table" for part in table_parts):  # image bytes: the table is the unit
                    parts += table_parts if first_time(location) else []
                else:
                    items = [item for part in table_parts for item in part.items if first_time(item[0])]
                    parts += _file_parts(items, part_size)
        if not found:
            raise DataFormatError(f"--images {spec}: no image found there (looked for {', '.join(IMAGE_SUFFIXES)}).")
    for number, part in enumerate(parts, start=first_part):
        part.name = f"part-{number:05d}"
    return CollectionPlan(parts, repeated)


def plan_parts(
    specs: Sequence[str],
    part_size: int = 4096,
    image_column: str = "image",
    caption_column: str = "caption",
    first_part: int = 0,
) -> list[Part]:
    """The parts of the sources in `specs` (`plan_collection` without an index to compare with)."""
    return plan_collection(specs, part_size, image_column, caption_column, first_part).parts


def plan_digest(parts: Sequence[Part]) -> str:
    """A checksum of the plan: a resumed build must cut the same parts."""
    return hashlib.sha256(json.dumps([asdict(part) for part in parts], sort_keys=True).encode()).hexdigest()[:20]


def part_samples(part: Part) -> Iterator[Sample]:
    """The images of a part in order (a shard is streamed; an unreadable shard ends with one `Sample` whose source
    is the error, so that it is counted, not fatal)."""
    if part.kind == "files":
        for location, caption in part.items:
            yield Sample(location, location if not is_remote(location) else _Remote(location), caption)
    elif part.kind == "table":
        kind = url_kind(part.url)
        if kind == "parquet":  # only the row groups holding the part's rows
            table = read_parquet_rows(part.url, part.start, part.stop)
        else:
            table = read_table(part.url, kind).slice(part.start, part.stop - part.start)
        captions = table[part.caption_column].to_pylist() if part.caption_column in table.column_names else None
        for row, cell in enumerate(table[part.image_column].to_pylist()):
            caption = captions[row] if captions else None
            yield Sample(f"{part.url}#row={part.start + row}", cell, None if caption is None else str(caption))
    else:
        yield from _shard_samples(part.url)


class _Remote:
    """An image URL, opened (fsspec) only when the worker reads it."""

    def __init__(self, url: str):
        self.url = url

    def read(self) -> bytes:
        with open_stream(self.url) as stream:
            return stream.read()

    def __str__(self) -> str:
        return self.url


def _shard_samples(url: str) -> Iterator[Sample]:
    """The image samples of a webdataset shard (members grouped by key, as webdataset does)."""
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    try:
        with open_stream(url) as stream:
            members = ({**member, "__url__": url} for member in tar_file_iterator(stream))
            for sample in group_by_keys(members):
                key = sample.get("__key__", "")
                image_key = next((name for name in SHARD_IMAGE_KEYS if name in sample), None)
                caption = next((sample[name] for name in SHARD_CAPTION_KEYS if name in sample), None)
                caption = caption.decode("utf-8", "replace") if isinstance(caption, bytes) else caption
                if image_key is None:
                    yield Sample(
                        f"{url}#{key}", ValueError(f"no image member ({', '.join(SHARD_IMAGE_KEYS)})"), caption, key
                    )
                else:
                    yield Sample(f"{url}#{key}", sample[image_key], caption, key)
    except (tarfile.TarError, OSError, ValueError) as error:
        yield Sample(f"{url}", ValueError(f"unreadable shard: {type(error).__name__}: {error}"))
