"""Samples of every shard, before the first step: what every rank needs to plan an epoch.

In order of precedence, per shard: a ``--shard_sizes`` file ({shard file name or URL: samples}); the
``sizes.json`` beside the shards (for ``pipe:CMD`` sources: beside the URL inside the command, fetched by the same
command with that URL replaced, e.g. ``pipe:aws s3 cp s3://b/x/00000.tar -`` reads ``s3://b/x/sizes.json`` with
``aws s3 cp s3://b/x/sizes.json -``; then fsspec on that URL); a count of a local shard, taken once (by the first
rank, under ``main_process_first``) and kept in ``shard_counts.json`` of the data cache, keyed by path, bytes and
modification time; and ``--train_num_samples`` (open_clip's) spread over the shards still unsized, which marks the
plan as estimated. A remote shard with none of these is refused in one line naming the options.
"""

import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from altclip.common.errors import InputDataError
from altclip.common.files import replace_atomically
from altclip.common.number_checks import count_in_file
from altclip.common.records import DataFormatError

from .shard_checks import ShardCount, planned_sizes
from .sources import SIZES_FILE, Source, is_remote, open_stream, parse_sizes_json, read_sizes_file, sibling_url

logger = logging.getLogger(__name__)

COUNTS_FILE = "shard_counts.json"
INNER_URL = re.compile(r"(?:^|\s)(\S+?\.(?:tar|tgz|tar\.gz))(?=$|\s)")


@dataclass
class SizedShards:
    """Every shard's samples in source order, and for each source where its sizes came from."""

    sizes: list[int]
    origins: list[str]  # per source: "sizes.json", "--shard_sizes", "counted", "--train_num_samples" or a mix
    estimated: bool = False


def inner_url(command: str) -> str | None:
    """The shard URL or path inside a ``pipe:`` command (the first token ending in .tar/.tgz/.tar.gz)."""
    match = INNER_URL.search(command.removeprefix("pipe:"))
    return match.group(1) if match else None


def pipe_sizes_file(url: str) -> dict[str, int] | None:
    """``sizes.json`` beside the URL inside a ``pipe:`` command: through the same command, then through fsspec."""
    inner = inner_url(url)
    if inner is None:
        return None
    sizes_url = sibling_url(inner, SIZES_FILE)
    try:
        with open_stream(url.replace(inner, sizes_url, 1)) as handle:
            content = handle.read()
    except Exception as error:  # a pipe whose command fails raises on read or close (webdataset's gopen)
        logger.debug("%s: %s", sizes_url, error)
    else:
        sizes = parse_sizes_json(content, sizes_url)  # an HTML error page or a cut file is named, not skipped
        if sizes is not None:
            return sizes
    return sizes_file_beside(inner)


def sizes_file_beside(url: str) -> dict[str, int] | None:
    """`sources.read_sizes_file`, None also where the URL's filesystem fails in its own way (offline Hub, no
    credentials): a size not found here is asked for in one line later."""
    try:
        return read_sizes_file(url)
    except InputDataError:  # there, but unreadable: named, not taken for "no sizes.json"
        raise
    except Exception as error:  # fsspec backends raise their client's errors (httpx, botocore, ...)
        logger.debug("%s: %s", url, error)
        return None


def shard_name(url: str) -> str:
    """The file name of a shard, also inside a ``pipe:`` command."""
    inner = inner_url(url) if url.startswith("pipe:") else url
    return (inner or url).rsplit("/", 1)[-1]


def load_shard_sizes_files(paths: Sequence[str] | None) -> dict[str, int]:
    """The ``--shard_sizes`` files merged: {shard file name or URL: samples}; a bad file is one line."""
    merged: dict[str, int] = {}
    for path in paths or ():
        try:
            values = json.loads(Path(path).read_text(encoding="utf-8-sig"))
            if not isinstance(values, dict):
                raise TypeError(f"a JSON {type(values).__name__}")
        except (OSError, ValueError, TypeError) as error:
            raise DataFormatError(
                f"--shard_sizes {path}: not a readable JSON object {{shard name or URL: samples}} ({error})."
            ) from None
        # a negative count would silently drop samples from the plan (-5 for a shard of 11: 16 never trained)
        merged.update({str(name): count_in_file(f"--shard_sizes {path}: {name!r}:", n) for name, n in values.items()})
    return merged


def counts_file(cache_dir: str | None) -> Path:
    """Where local counts are kept: ``--data_cache_dir``, else the `datasets` cache (where tables go too)."""
    if cache_dir:
        return Path(cache_dir) / COUNTS_FILE
    import datasets

    return Path(datasets.config.HF_DATASETS_CACHE) / COUNTS_FILE


def _file_key(path: str) -> str:
    stat = os.stat(path)
    return f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}"


def count_local_shards(paths: Sequence[str], cache_dir: str | None) -> list[ShardCount]:
    """Samples of local shards, counted once and kept (a shard changed since is counted again), with the reason a
    cut or unreadable one stopped early (so `planned_sizes` can estimate what it lost from its siblings)."""
    from .shard_stream import count_shard

    store = counts_file(cache_dir)
    try:
        kept = json.loads(store.read_text())
    except (OSError, ValueError):
        kept = {}
    keys = [_file_key(path) for path in paths]
    missing = [(key, path) for key, path in zip(keys, paths) if not isinstance(kept.get(key), list)]
    if missing:
        logger.info("Counting the samples of %d local shards without sizes.json (kept in %s)", len(missing), store)
        for key, path in missing:
            count = count_shard(path)
            kept[key] = [count.found, None if count.error is None else f"{type(count.error).__name__}: {count.error}"]
        try:
            store.parent.mkdir(parents=True, exist_ok=True)
            replace_atomically(store, lambda partial: partial.write_text(json.dumps(kept)))
        except OSError as error:
            logger.warning("Could not keep the shard counts in %s: %s", store, error)
    return [
        ShardCount(path, int(kept[key][0]), None if kept[key][1] is None else KeptError(kept[key][1]))
        for key, path in zip(keys, paths)
    ]


class KeptError(Exception):
    """The error that stopped an earlier count of a shard, as kept in the counts file."""


def resolve_shard_sizes(
    sources: Sequence[Source],
    shard_sizes_files: Sequence[str] | None = None,
    train_num_samples: Sequence[int] | None = None,
    cache_dir: str | None = None,
) -> SizedShards:
    """Samples of every shard of `sources` (see the module doc); raises `DataFormatError` for unsized shards."""
    given = load_shard_sizes_files(shard_sizes_files)
    if train_num_samples is not None and len(train_num_samples) not in (1, len(sources)):
        raise DataFormatError(
            f"--train_num_samples has {len(train_num_samples)} values for {len(sources)} sources; give one number, "
            "or one per --train_files entry."
        )
    listings: dict[str, dict[str, int] | None] = {}
    sizes: list[int | None] = []
    origins: list[set[str]] = []
    local_unsized: list[int] = []
    for source in sources:
        seen: set[str] = set()
        for url in source.urls:
            name = shard_name(url)
            inner = inner_url(url) if url.startswith("pipe:") else url
            known, origin = next(((given[k], "--shard_sizes") for k in (url, inner, name) if k in given), (None, ""))
            if known is None and inner is not None:
                folder = inner.rsplit("/", 1)[0]
                if folder not in listings:
                    listings[folder] = pipe_sizes_file(url) if url.startswith("pipe:") else sizes_file_beside(url)
                known = (listings[folder] or {}).get(name)
                origin = "sizes.json" if known is not None else ""
            if known is None and not is_remote(url):
                local_unsized.append(len(sizes))
                origin = "counted"
            sizes.append(known)
            seen.add(origin or "unknown")
        origins.append(seen)
    if local_unsized:
        counted = count_local_shards([_flat_urls(sources)[index] for index in local_unsized], cache_dir)
        for index, count in zip(local_unsized, counted):
            sizes[index] = count.found
    if any(sizes) or (sizes and None not in sizes):  # (all known sizes 0 with unsized ones left: estimated below)
        # cut or unreadable counted shards: what they lost, estimated from their sizes' siblings (shard_checks);
        # empty shards planned as one counted loss instead of a step on nothing
        planned = planned_sizes(
            _flat_urls(sources),
            [size or 0 for size in sizes],
            dict(zip(local_unsized, counted if local_unsized else [])),
            [len(source.urls) for source in sources],
        )
        sizes = [None if size is None else planned[index] for index, size in enumerate(sizes)]
    estimated = _estimate_unknown(sources, sizes, origins, train_num_samples, shard_sizes_files, given)
    return SizedShards([int(size) for size in sizes], [" + ".join(sorted(seen)) for seen in origins], estimated)


def _flat_urls(sources: Sequence[Source]) -> list[str]:
    return [url for source in sources for url in source.urls]


def _estimate_unknown(
    sources, sizes: list, origins: list[set[str]], train_num_samples, files=None, given: dict | None = None
) -> bool:
    """Spreads ``--train_num_samples`` over the shards without a size (per source, or all of them together)."""
    urls = _flat_urls(sources)
    unknown = [index for index, size in enumerate(sizes) if size is None]
    if not unknown:
        return False
    if train_num_samples is None:
        url = urls[unknown[0]]
        if given:  # the file was given and read, but its keys are not these shards' names
            raise DataFormatError(
                f"{url}: --shard_sizes {' '.join(files)} names no size for it ({len(unknown)} shards unsized; the "
                f"file names e.g. {next(iter(given))!r}); key each shard by its file name ({shard_name(url)!r}) or "
                "its URL, or give --train_num_samples N for the rest."
            )
        where = (
            f"beside {inner_url(url)} (tried through the pipe command and fsspec)" if url.startswith("pipe:") else ""
        )
        raise DataFormatError(
            f"{url}: no sizes.json beside the remote shards names its size{' ' + where if where else ''}; write one "
            "({shard name: samples}, as img2dataset/webdataset tools do), give --shard_sizes FILE, or give "
            "--train_num_samples N (open_clip's; spread evenly over the unsized shards) so that every rank can plan "
            f"the epoch ({len(unknown)} shards unsized)."
        )
    source_of = [index for index, source in enumerate(sources) for _ in source.urls]
    groups = (
        {0: unknown}
        if len(train_num_samples) == 1
        else {s: [i for i in unknown if source_of[i] == s] for s in range(len(sources))}
    )
    for group, members in groups.items():
        if not members:
            continue
        total = int(train_num_samples[group])
        for position, index in enumerate(members):
            sizes[index] = total // len(members) + (position < total % len(members))
            origins[source_of[index]].discard("unknown")
            origins[source_of[index]].add("--train_num_samples")
    return True
