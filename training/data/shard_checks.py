"""Cut, empty and mis-sized webdataset shards: detected, and every sample they lose counted.

Python's tarfile (under webdataset's member iterator) raises on a shard cut inside a member's data, but ends
quietly when a shard is cut inside a member's header or right after a member: stream mode takes a short or
missing header block for the end of the archive. A complete tar ends with an end-of-archive marker (two 512-byte
zero blocks, which tarfile, GNU tar and webdataset's TarWriter write), so `EndCheckedStream` keeps the last 1024
bytes read and the shard reader raises `CutShard` where they are not zeros.

A shard without ``sizes.json`` is counted by reading it; a cut one holds fewer samples than it had, so its planned
size is what it holds plus an estimate of what it lost (`planned_sizes`): the median size of the intact shards of
the same source, or 1 (the sample the cut went through) where there is none. An empty shard is planned as one
sample, so that reading it counts one lost sample ("empty shard") instead of running a step on nothing.
"""

import logging
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from altclip.common.records import DataFormatError

logger = logging.getLogger(__name__)

END_OF_ARCHIVE = 1024  # two zero blocks


class CutShard(Exception):
    """A shard that ends without the tar end-of-archive marker (cut inside a header or between members)."""


class EndCheckedStream:
    """A binary stream that remembers its first two and last `END_OF_ARCHIVE` bytes, for `is_complete`."""

    def __init__(self, stream):
        self.stream, self.head, self.tail = stream, b"", b""

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        if len(self.head) < 2:
            self.head += data[: 2 - len(self.head)]
        self.tail = (self.tail + data)[-END_OF_ARCHIVE:]
        return data

    def is_complete(self) -> bool:
        """Reads what is left (the padding after the marker) and says whether the stream ends like a whole tar;
        a gzip-compressed shard is checked by gzip itself (a cut one raises EOFError)."""
        while self.read(1 << 16):
            pass
        if self.head.startswith(b"\x1f\x8b"):
            return True
        return len(self.tail) == END_OF_ARCHIVE and not self.tail.strip(b"\0")


def is_cut(error: BaseException) -> bool:
    """A reading error that means the shard's bytes end too early (rather than bytes that are not a tar)."""
    text = str(error)
    ends = ("unexpected end of data", "truncated header", "empty header")  # tarfile: no bytes where some must be
    return isinstance(error, (CutShard, EOFError)) or any(end in text for end in ends)


def loss_reason(error: BaseException) -> str:
    """The skip reason of the samples a shard loses to `error` (counted under its text before " (")."""
    kind = "cut shard" if is_cut(error) else "unreadable shard"
    return f"{kind} ({type(error).__name__}: {str(error).split(' @ <')[0]})"  # tarfile names the stream object


@dataclass(frozen=True)
class ShardCount:
    """A shard read through before training: the samples it holds and the error that stopped the read, if any."""

    url: str
    found: int
    error: BaseException | None = None


def planned_sizes(
    urls: Sequence[str], sizes: list[int], counts: dict[int, ShardCount], shards_per_source: Sequence[int]
) -> list[int]:
    """`sizes` (from sizes.json or `counts`) with the lost samples of cut or unreadable counted shards added and
    empty shards planned as one lost sample; refuses a set of shards that holds no sample at all."""
    if not any(sizes):
        raise DataFormatError(f"the training shards hold no sample ({', '.join(urls[:3])}{', ...' * (len(urls) > 3)}).")
    planned, start = list(sizes), 0
    for count in shards_per_source:
        positions = range(start, start + count)
        start += count
        intact = [sizes[p] for p in positions if sizes[p] and (p not in counts or counts[p].error is None)]
        typical = int(statistics.median(intact)) if intact else None
        for position in positions:
            shard = counts.get(position)
            if shard is not None and shard.error is not None:
                lost = max(1, (typical or 0) - shard.found)
                planned[position] = shard.found + lost
                logger.warning(
                    "%s: %s after %d samples; %d lost samples will be counted as skipped (%s)",
                    shard.url,
                    loss_reason(shard.error),
                    shard.found,
                    lost,
                    f"estimated: its {len(intact)} intact sibling shards hold {typical} samples (median)"
                    if typical is not None
                    else "at least the one the cut went through; no intact sibling shard to estimate from",
                )
            elif planned[position] == 0:
                planned[position] = 1
                logger.warning("%s holds no sample; it is counted as one skipped sample (empty shard)", urls[position])
    return planned
