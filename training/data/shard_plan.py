"""Which sample ranges of which shards every reader (process x DataLoader worker) reads in an epoch.

Pure planning on shard sizes (numpy, no I/O), the same on every rank and worker for a (seed, epoch):

- **split** (default): the epoch's pieces (each shard once, or each source's shards drawn to its weight's share of
  samples: small sources repeated, large ones subsampled, the last shard of a pass cut to the sample) are shuffled,
  laid end to end and cut into one contiguous sample range per reader, so readers differ by at most one sample
  whatever the shard sizes. A reader reads at most two shards partially (the one it starts inside skips its first
  members: webdataset's tar reader reads through them, which costs their bytes but no decoding).
- **resampled** (open_clip's ``--dataset_resampled``): each reader draws whole shards with replacement, with
  probability by size and source weight, until its quota of samples; the last shard it draws is read as far as the
  quota. No shard is read partially from the middle; samples are drawn by weight rather than each once per epoch.

Every reader then yields the same number of batches (``ceil(largest quota / batch)``), its quota split evenly
over them: no batch is larger than asked, and only the rounding of one batch per reader is padding. Hand-written
because webdataset's ``split_by_node``/``split_by_worker`` deal whole shards (unequal readers, idle readers with
fewer shards than readers) and its ``with_epoch`` cuts or repeats to a fixed count instead of planning one.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .epoch_plan import drawn_per_source, epoch_rng, even_split

SPLIT, RESAMPLED = "split", "resampled"
MODES = (SPLIT, RESAMPLED)


@dataclass(frozen=True)
class Pieces:
    """Sample ranges ``[start, stop)`` of shards (global shard indices), in reading order."""

    shard: np.ndarray
    start: np.ndarray
    stop: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return self.stop - self.start

    def __len__(self) -> int:
        return len(self.shard)


def _whole(shards: np.ndarray, sizes: np.ndarray) -> Pieces:
    return Pieces(shards.astype(np.int64), np.zeros(len(shards), dtype=np.int64), sizes[shards].astype(np.int64))


def _source_draw(shards: np.ndarray, sizes: np.ndarray, wanted: int, rng: np.random.Generator) -> Pieces:
    """`wanted` samples of one source: whole passes over its shards (each in a new order), then shards of one more
    pass up to the sample, the last one cut."""
    total = int(sizes[shards].sum())
    if wanted <= 0 or total == 0:
        return _whole(shards[:0], sizes)
    passes, rest = divmod(wanted, total)
    order = [rng.permutation(shards) for _ in range(passes + (rest > 0))]
    drawn = np.concatenate(order) if order else shards[:0]
    pieces = _whole(drawn, sizes)
    if rest:
        ends = np.cumsum(pieces.lengths)
        keep = int(np.searchsorted(ends, passes * total + rest, side="left")) + 1
        stop = pieces.stop[:keep].copy()
        stop[-1] -= int(ends[keep - 1] - (passes * total + rest))
        pieces = Pieces(pieces.shard[:keep], pieces.start[:keep], stop)
    return pieces


def samples_per_source(
    shard_sizes: Sequence[int], shards_per_source: Sequence[int], weights: Sequence[float] | None
) -> list[int]:
    """Samples each source contributes to an epoch: all it holds, or its weight's share of all samples."""
    totals = [
        int(part.sum()) for part in np.split(np.asarray(shard_sizes, dtype=np.int64), np.cumsum(shards_per_source)[:-1])
    ]
    return totals if weights is None else drawn_per_source(totals, weights)


def epoch_pieces(
    shard_sizes: Sequence[int],
    shards_per_source: Sequence[int],
    weights: Sequence[float] | None,
    rng: np.random.Generator,
    shuffle: bool = True,
) -> Pieces:
    """The epoch's pieces in reading order (see the module doc, mode split)."""
    sizes = np.asarray(shard_sizes, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(shards_per_source)]).astype(np.int64)
    if weights is None:
        pieces = _whole(np.arange(len(sizes), dtype=np.int64), sizes)
    else:
        wanted = samples_per_source(sizes, shards_per_source, weights)
        parts = [
            _source_draw(np.arange(offsets[index], offsets[index + 1]), sizes, count, rng)
            for index, count in enumerate(wanted)
        ]
        pieces = Pieces(
            *(np.concatenate([getattr(part, name) for part in parts]) for name in ("shard", "start", "stop"))
        )
    if shuffle:
        order = rng.permutation(len(pieces))
        pieces = Pieces(pieces.shard[order], pieces.start[order], pieces.stop[order])
    return pieces


def reader_quotas(total: int, readers: int) -> np.ndarray:
    """Samples of each reader: `total` split so that readers differ by at most one."""
    return np.asarray(even_split(total, readers), dtype=np.int64)


def cut_for_reader(pieces: Pieces, quotas: np.ndarray, reader: int) -> Pieces:
    """The `reader`'s contiguous part of the pieces laid end to end (its quota), first and last piece trimmed."""
    ends = np.cumsum(pieces.lengths)
    begin = int(quotas[:reader].sum())
    end = begin + int(quotas[reader])
    if end <= begin:
        return Pieces(*(np.zeros(0, dtype=np.int64) for _ in range(3)))
    first = int(np.searchsorted(ends, begin, side="right"))
    last = int(np.searchsorted(ends, end, side="left"))
    shard = pieces.shard[first : last + 1]
    start, stop = pieces.start[first : last + 1].copy(), pieces.stop[first : last + 1].copy()
    piece_begin = int(ends[first] - pieces.lengths[first])
    start[0] += begin - piece_begin
    stop[-1] -= int(ends[last]) - end
    return Pieces(shard, start, stop)


def resampled_for_reader(
    shard_sizes: Sequence[int],
    shards_per_source: Sequence[int],
    weights: Sequence[float] | None,
    quota: int,
    rng: np.random.Generator,
) -> Pieces:
    """Whole shards drawn with replacement (probability by size, times the source's weight share) until `quota`
    samples, the last one read as far as the quota."""
    sizes = np.asarray(shard_sizes, dtype=np.int64)
    source = np.repeat(np.arange(len(shards_per_source)), shards_per_source)
    totals = np.bincount(source, weights=sizes, minlength=len(shards_per_source))
    share = np.ones(len(totals)) if weights is None else np.asarray(weights, dtype=float)
    share = np.where(totals > 0, share / np.maximum(totals, 1), 0.0)
    probability = sizes * share[source]
    probability = probability / probability.sum()
    drawn: list[np.ndarray] = []
    have = 0
    mean = max(float((probability * sizes).sum()), 1.0)
    while have < quota:
        chunk = rng.choice(len(sizes), size=max(8, math.ceil((quota - have) / mean * 1.2)), p=probability)
        drawn.append(chunk)
        have += int(sizes[chunk].sum())
    pieces = _whole(np.concatenate(drawn) if drawn else np.zeros(0, dtype=np.int64), sizes)
    if quota == 0:
        return pieces
    ends = np.cumsum(pieces.lengths)
    keep = int(np.searchsorted(ends, quota, side="left")) + 1
    stop = pieces.stop[:keep].copy()
    stop[-1] -= int(ends[keep - 1]) - quota
    return Pieces(pieces.shard[:keep], pieces.start[:keep], stop)


def batches_per_reader(total: int, readers: int, batch_size: int) -> int:
    """Batches every reader yields (the same for all, every epoch): its largest quota over the batch size."""
    return max(1, math.ceil(math.ceil(total / readers) / batch_size))


@dataclass(frozen=True)
class ShardPlan:
    """The reading plan of an epoch over shards, for all readers."""

    shard_sizes: Sequence[int]
    shards_per_source: Sequence[int]
    weights: Sequence[float] | None
    readers: int
    batch_size: int
    mode: str = SPLIT
    samples: int | None = None  # samples per epoch; default: what the sources hold (weighted: the same total)
    seed: int = 0
    shuffle: bool = True

    def __post_init__(self):
        # Computed once: every worker plans at each epoch start, `altclip-train plan` for all readers.
        sizes = np.asarray(self.shard_sizes, dtype=np.int64)
        if self.samples is not None and self.mode == RESAMPLED:  # split mode lays out what the shards hold
            total = int(self.samples)
        else:
            total = sum(samples_per_source(sizes, self.shards_per_source, self.weights))
        object.__setattr__(self, "shard_sizes", sizes)
        object.__setattr__(self, "_quotas", reader_quotas(total, self.readers))
        object.__setattr__(self, "_total", total)

    @property
    def samples_per_epoch(self) -> int:
        return self._total

    @property
    def batches_per_reader(self) -> int:
        return batches_per_reader(self.samples_per_epoch, self.readers, self.batch_size)

    def quotas(self) -> np.ndarray:
        return self._quotas

    def epoch_pieces(self, epoch: int) -> Pieces:
        """All pieces of the epoch (mode split) in reading order."""
        return epoch_pieces(
            self.shard_sizes, self.shards_per_source, self.weights, epoch_rng(self.seed, epoch), self.shuffle
        )

    def reader_pieces(self, epoch: int, reader: int, pieces: Pieces | None = None) -> Pieces:
        """What `reader` reads in `epoch`, in order."""
        quotas = self.quotas()
        if self.mode == RESAMPLED:
            rng = epoch_rng(self.seed, epoch, reader, 1)
            return resampled_for_reader(
                self.shard_sizes, self.shards_per_source, self.weights, int(quotas[reader]), rng
            )
        return cut_for_reader(self.epoch_pieces(epoch) if pieces is None else pieces, quotas, reader)

    def reader_batch_sizes(self, reader: int) -> list[int]:
        """Rows of each of the reader's batches: its quota split evenly over `batches_per_reader` batches."""
        return even_split(int(self.quotas()[reader]), self.batches_per_reader)
