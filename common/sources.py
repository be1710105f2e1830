"""Data locations as users write them, shared by training's sources and the search index: local path or URL,
shard or table kind, and one way to open any of them (a file, webdataset's ``pipe:``, fsspec URLs)."""

import re
from pathlib import Path
from typing import IO

from altclip.common.records import DataFormatError

SHARD_PATTERN = re.compile(r"\.(tar|tgz|tar\.gz)($|[?\s])")
TABLE_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}


def is_remote(url: str) -> bool:
    """A URL (``scheme://``) or a ``pipe:`` command rather than a local path."""
    return url.startswith("pipe:") or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", url) is not None


def url_kind(url: str) -> str:
    """``shards`` for tar shards (also inside a ``pipe:`` command), else the table format of the suffix."""
    if SHARD_PATTERN.search(url):
        return "shards"
    suffix = Path(url.split("?")[0]).suffix.lower()
    if suffix in TABLE_FORMATS:
        return TABLE_FORMATS[suffix]
    raise DataFormatError(
        f"{url}: unknown data format {suffix or '(no suffix)'!r}; use .tar/.tar.gz shards, .jsonl, .csv, .tsv, "
        ".parquet or a datasets save_to_disk folder."
    )


def open_stream(url: str) -> IO[bytes]:
    """A binary stream of a local file, a ``pipe:`` command (webdataset's gopen) or an fsspec URL."""
    if not is_remote(url):
        return open(url, "rb")
    if url.startswith("pipe:"):
        import webdataset

        return webdataset.gopen(url, "rb")
    import fsspec

    try:
        return fsspec.open(url, "rb").open()
    except ImportError as error:  # e.g. s3:// without s3fs
        raise DataFormatError(f"{url}: fsspec cannot open this scheme here ({error}).") from error


def folder_of(url: str) -> str:
    """The folder of a local path or URL."""
    return url.rsplit("/", 1)[0] if is_remote(url) else str(Path(url).parent)


def join_url(folder: str, name: str) -> str:
    """`name` inside a local folder or URL folder."""
    return f"{folder.rstrip('/')}/{name}" if is_remote(folder) else str(Path(folder) / name)
