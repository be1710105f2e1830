"""Mixing several sources (languages, corpora) by sampling weights, and splitting streams across ranks/workers."""

import random
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import torch

T = TypeVar("T")


def normalised_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    """Weights as probabilities; None means every source alike. Checks count and sign."""
    if weights is None:
        return [1.0 / count] * count
    if len(weights) != count:
        raise ValueError(f"{len(weights)} sampling weights were given for {count} data files.")
    if any(weight < 0 for weight in weights) or sum(weights) <= 0:
        raise ValueError(f"Sampling weights must be non-negative and not all zero; got {list(weights)}.")
    total = float(sum(weights))
    return [weight / total for weight in weights]


def weighted_selection(sizes: Sequence[int], weights: Sequence[float] | None, seed: int) -> list[tuple[int, int]]:
    """(source, index) pairs for one epoch of a map-style mix: as many rows as all sources hold, each source
    contributing in proportion to its weight (small sources are repeated, large ones subsampled)."""
    probabilities = normalised_weights(weights, len(sizes))
    total = sum(sizes)
    rng = random.Random(seed)
    selection: list[tuple[int, int]] = []
    for source, (size, probability) in enumerate(zip(sizes, probabilities)):
        wanted = round(total * probability) if weights is not None else size
        if size == 0 or wanted == 0:
            continue
        order: list[int] = []
        while len(order) < wanted:
            block = list(range(size))
            rng.shuffle(block)
            order.extend(block)
        selection.extend((source, index) for index in order[:wanted])
    return selection


def shard_position() -> tuple[int, int]:
    """(this reader's index, number of readers) over distributed ranks times DataLoader workers."""
    rank, world = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    worker = torch.utils.data.get_worker_info()
    worker_id, workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
    return rank * workers + worker_id, world * workers


def interleave(
    sources: Sequence[Callable[[], Iterator[T]]], weights: Sequence[float] | None, rng: random.Random
) -> Iterator[T]:
    """Draw from `sources` by weight until every source has run out at least once (restarting those that ran out
    earlier), like datasets' ``all_exhausted`` strategy. A source that yields nothing at all ends its share."""
    probabilities = normalised_weights(weights, len(sources))
    iterators = [source() for source in sources]
    exhausted = [probability == 0 for probability in probabilities]
    live = [probability > 0 for probability in probabilities]
    while any(live) and not all(exhausted):
        index = rng.choices(range(len(sources)), weights=[p if alive else 0 for p, alive in zip(probabilities, live)])[
            0
        ]
        try:
            yield next(iterators[index])
        except StopIteration:
            exhausted[index] = True
            if all(exhausted):
                return
            iterators[index] = sources[index]()
            try:
                yield next(iterators[index])
            except StopIteration:
                live[index] = False
