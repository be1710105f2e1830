"""What every rank trains in an epoch: each sample once, all ranks the same number of steps, reshuffled per epoch.

Hand-written because neither accelerate nor `datasets` does it: accelerate's `even_batches` repeats samples to fill
the last batch (or lets ranks run different step counts), and `split_dataset_by_node` reads every shard on every
node when shards don't divide evenly. Here a global batch of ``world x batch`` rows is cut into one slice per rank;
the last, smaller global batch is split as evenly as possible (a rank may get fewer rows, never another step).
"""

import math
from collections.abc import Iterator, Sequence

import numpy as np


def epoch_rng(seed: int, epoch: int, *stream: int) -> np.random.Generator:
    """The one seeded generator of an epoch (and optionally a reader): the same on every rank."""
    return np.random.default_rng([seed, epoch, *stream])


def weighted_draw(sizes: Sequence[int], weights: Sequence[float] | None, rng: np.random.Generator) -> np.ndarray:
    """Global indices (source offsets added) for one epoch of a mix: without weights every index once; with weights
    as many rows as all sources hold, each source in proportion to its weight (small ones repeated, large ones
    subsampled, a different subsample every epoch)."""
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    if weights is None:
        return np.arange(offsets[-1], dtype=np.int64)
    parts = []
    for source, (size, wanted) in enumerate(zip(sizes, drawn_per_source(sizes, weights))):
        if wanted == 0:
            continue
        repeats = [rng.permutation(size) for _ in range(math.ceil(wanted / size))]
        parts.append(np.concatenate(repeats)[:wanted] + offsets[source])
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def drawn_per_source(sizes: Sequence[int], weights: Sequence[float]) -> list[int]:
    """Rows `weighted_draw` takes from each source: its weight's share of all rows (none from an empty source)."""
    total, weight_sum = sum(sizes), float(sum(weights))
    return [round(total * weight / weight_sum) if size else 0 for size, weight in zip(sizes, weights)]


def even_split(count: int, parts: int) -> list[int]:
    """`count` items in `parts` sizes that differ by at most one (larger first)."""
    return [count // parts + (part < count % parts) for part in range(parts)]


def data_seed(training_args) -> int:
    """The seed of every epoch plan: ``--data_seed``, else ``--seed``."""
    return training_args.data_seed if training_args.data_seed is not None else training_args.seed


def shuffles(training_args) -> bool:
    """Training data is shuffled unless ``--train_sampling_strategy sequential``."""
    return getattr(training_args, "train_sampling_strategy", "random") != "sequential"


class GlobalBatchSampler:
    """Batch sampler of a map-style dataset: this rank's slice of every global batch of an epoch.

    The epoch's order is `weighted_draw` then (with ``shuffle``) one permutation, both seeded by (seed, epoch):
    the same global batches whatever the number of processes. accelerate's ``skip_first_batches`` resumes it by
    skipping index lists, without reading a row.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        batch_size: int,
        weights: Sequence[float] | None = None,
        extra: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        language_plan=None,
    ):
        """`extra` rows after the sources' rows (indices from sum(sizes) on) join every epoch once, unweighted; a
        `language_balance.LanguagePlan` draws the sources' rows per language instead of `weighted_draw`."""
        self.sizes, self.weights, self.extra = list(sizes), weights, extra
        self.language_plan = language_plan
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.rank, self.world_size, self.epoch = rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_indices(self) -> np.ndarray:
        rng = epoch_rng(self.seed, self.epoch)
        if self.language_plan is not None:
            indices = self.language_plan.draw(rng)
        else:
            indices = weighted_draw(self.sizes, self.weights, rng)
        if self.extra:
            indices = np.concatenate([indices, np.arange(sum(self.sizes), sum(self.sizes) + self.extra)])
        return rng.permutation(indices) if self.shuffle else indices

    @property
    def samples_per_epoch(self) -> int:
        drawn = sum(self.sizes) if self.weights is None else sum(drawn_per_source(self.sizes, self.weights))
        if self.language_plan is not None:
            drawn = self.language_plan.samples_per_epoch
        return drawn + self.extra

    def __len__(self) -> int:
        return math.ceil(self.samples_per_epoch / (self.batch_size * self.world_size))

    def __iter__(self) -> Iterator[list[int]]:
        indices = self.epoch_indices()
        global_batch = self.batch_size * self.world_size
        for start in range(0, len(indices), global_batch):
            chunk = indices[start : start + global_batch]
            sizes = even_split(len(chunk), self.world_size)
            begin = sum(sizes[: self.rank])
            yield chunk[begin : begin + sizes[self.rank]].tolist()
