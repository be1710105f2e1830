"""Training sources as users write them: files, folders, brace-expanded shard lists, globs and URLs.

Each ``--train_files`` entry is one `Source`: every URL it expands to has the same kind (webdataset shards, or
one table format). Brace expansion is webdataset's (`braceexpand`, as open_clip does), URLs open through
webdataset's ``pipe:`` support or fsspec (``https://``, ``s3://`` with s3fs, ``gs://`` with gcsfs, ``hf://``).
"""

import glob
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import braceexpand

from altclip.common.errors import InputDataError
from altclip.common.number_checks import count_in_file
from altclip.common.records import DataFormatError
from altclip.common.sources import (  # noqa: F401 (is_remote, open_stream, ...: re-exported for the training modules)
    folder_of,
    is_remote,
    join_url,
    open_stream,
    url_kind,
)

SAVED_DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
SIZES_FILE = "sizes.json"  # {shard file name: samples}, as webdataset's and open_clip's tools write it


@dataclass(frozen=True)
class Source:
    """One ``--train_files`` entry: its spec as written, the URLs it expands to, their kind and its weight."""

    spec: str
    urls: tuple[str, ...]
    kind: str  # "shards", "saved" (a save_to_disk folder) or a table format: jsonl, csv, tsv, parquet
    weight: float | None = None  # None: no --train_file_weights, each source contributes all its samples

    @property
    def is_shards(self) -> bool:
        return self.kind == "shards"


def _local_entries(pattern: str, spec: str) -> list[str]:
    """A local path, glob or folder as the files it names."""
    if any(character in pattern for character in "*?["):
        matches = sorted(glob.glob(pattern, recursive=True))
        if not matches:
            raise DataFormatError(f"--train_files {spec}: the pattern {pattern} matches no file.")
        return matches
    path = Path(pattern)
    if path.is_dir():
        if any((path / marker).is_file() for marker in SAVED_DATASET_MARKERS):
            return [str(path)]
        files = sorted(
            str(child)
            for child in path.iterdir()
            if child.is_file() and _known_suffix(child.name) and not child.name == SIZES_FILE
        )
        if not files:
            raise DataFormatError(f"--train_files {spec}: the folder {path} holds no shard or table file.")
        return files
    if not path.exists():
        raise DataFormatError(f"--train_files {spec}: {path} does not exist.")
    return [str(path)]


def _known_suffix(name: str) -> bool:
    try:
        url_kind(name)
        return True
    except DataFormatError:
        return False


def _kind_of(url: str) -> str:
    if not is_remote(url) and Path(url).is_dir():
        return "saved"
    return url_kind(url)


def parse_source(spec: str, weight: float | None = None) -> Source:
    """One spec (path, folder, ``{000..099}`` braces, glob, URL, ``pipe:``) as a `Source`; local paths checked."""
    urls: list[str] = []
    for expanded in braceexpand.braceexpand(spec.strip()):
        urls.extend([expanded] if is_remote(expanded) else _local_entries(expanded, spec))
    kinds = sorted({_kind_of(url) for url in urls})
    if len(kinds) != 1:
        raise DataFormatError(
            f"--train_files {spec} mixes {' and '.join(kinds)}; give each kind of data as its own --train_files entry."
        )
    if kinds[0] == "saved" and len(urls) > 1:
        raise DataFormatError(f"--train_files {spec}: give one save_to_disk folder per entry.")
    return Source(spec, tuple(urls), kinds[0], weight)


def parse_sources(specs: Sequence[str], weights: Sequence[float] | None = None) -> list[Source]:
    """`Source`s of ``--train_files`` with ``--train_file_weights`` (one per source, non-negative, not all 0)."""
    if not specs:
        raise DataFormatError("give --train_files (files, folders, shard specs or URLs).")
    if weights is not None:
        if len(weights) != len(specs):
            raise DataFormatError(
                f"--train_file_weights has {len(weights)} values for {len(specs)} --train_files entries; give one "
                "weight per entry."
            )
        if any(weight < 0 for weight in weights) or sum(weights) <= 0:
            raise DataFormatError(f"--train_file_weights must be non-negative and not all zero; got {list(weights)}.")
    sources = [
        parse_source(spec, None if weight is None else float(weight))
        for spec, weight in zip(specs, weights or [None] * len(specs))
    ]
    if len({source.is_shards for source in sources}) > 1:
        raise DataFormatError(
            "--train_files mixes webdataset shards and tables; convert one to the other (shards stream, tables are "
            "memory-mapped)."
        )
    return sources


def sibling_url(url: str, name: str) -> str:
    """The URL of the file `name` in the same folder as `url`."""
    return join_url(folder_of(url), name)


def read_sizes_file(url: str) -> dict[str, int] | None:
    """``sizes.json`` next to `url` ({shard name: samples}), or None where there is none."""
    if url.startswith("pipe:"):
        return None
    sizes_url = sibling_url(url, SIZES_FILE)
    try:
        with open_stream(sizes_url) as handle:
            content = handle.read()
    except (OSError, FileNotFoundError, ValueError, DataFormatError):
        return None
    return parse_sizes_json(content, sizes_url)


def parse_sizes_json(content: bytes, where: str) -> dict[str, int] | None:
    """{shard name: samples} of a sizes.json's bytes; None for empty content (nothing there). Content that is not
    such an object (an HTML error page, a cut file) or a count that is not a whole number >= 0 is refused
    (`InputDataError` naming `where`), not read as "no sizes.json"."""
    if not content.strip():
        return None
    try:
        sizes = json.loads(content.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as error:
        start = content[:40].decode("utf-8", "replace").strip().replace("\n", " ")
        raise InputDataError(
            f"{where}: unreadable sizes.json, not JSON ({type(error).__name__}; starts with {start!r}); write it as "
            "{shard name: samples} or remove it."
        ) from None
    if not isinstance(sizes, dict):
        raise InputDataError(f"{where}: unreadable sizes.json, not a JSON object {{shard name: samples}}.")
    return {str(name): count_in_file(f"{where}: shard {name!r}:", count) for name, count in sizes.items()}


def source_weights(sources: Sequence[Source]) -> list[float] | None:
    """The sources' sampling weights, or None where none were given (every sample of every source once)."""
    return None if sources[0].weight is None else [source.weight for source in sources]
