"""Deduplicating search results (`greedy_deduplicate`): the same rows as the loop it replaced (each candidate compared
with every result kept before it, one at a time), over many random collections with planted near-duplicates, block
sizes that cut the candidates anywhere, and a stop after `wanted` results."""

import numpy as np
import pytest

from altclip.common.collection_index import greedy_deduplicate
from benchmarks.search_scale import loop_deduplicate  # the loop it replaced, also the benchmark's baseline


def candidates(seed: int) -> tuple[np.ndarray, float]:
    """Unit vectors, best first as a search returns them: originals and resized or re-encoded copies of some (cosine
    0.90-0.999 to their original, some of them copies of copies), at a threshold that keeps some copies and not
    others."""
    rng = np.random.default_rng(seed)
    count, dim = int(rng.integers(1, 700)), int(rng.choice([8, 32, 64]))
    vectors = rng.normal(size=(count, dim))
    for number in rng.choice(count, count // 2, replace=False):
        original = vectors[rng.integers(0, count)]
        vectors[number] = original + rng.uniform(0.05, 0.45) * np.linalg.norm(original) * unit(rng.normal(size=dim))
    vectors = unit(vectors).astype(np.float32)
    threshold = float(rng.choice([0.9, 0.96, 0.99])) if dim > 8 else float(rng.uniform(0.3, 0.9))
    return vectors, threshold


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


@pytest.mark.parametrize("seed", range(40))
def test_the_blocked_deduplication_keeps_what_the_loop_kept(seed):
    vectors, threshold = candidates(seed)
    expected = loop_deduplicate(vectors, threshold)
    assert 0 < len(expected) <= len(vectors)
    for block in (3, 64, 1024):
        read = lambda start, stop: vectors[start:stop]  # noqa: E731
        kept, examined = greedy_deduplicate(read, len(vectors), threshold, block=block)
        assert kept.tolist() == expected and examined == len(vectors), block
        for wanted in (1, max(1, len(expected) // 3), len(expected), len(expected) + 5):
            kept, examined = greedy_deduplicate(read, len(vectors), threshold, wanted=wanted, block=block)
            assert kept.tolist() == expected[:wanted], (block, wanted)
            # examined: up to the last result kept, or all of them when fewer than wanted are kept
            assert examined == (expected[wanted - 1] + 1 if wanted <= len(expected) else len(vectors))


def test_reads_only_the_blocks_it_needs_and_no_candidate_at_all_is_none():
    vectors, _ = candidates(3)
    reads = []

    def read(start, stop):
        reads.append((start, stop))
        return vectors[start:stop]

    kept, examined = greedy_deduplicate(read, len(vectors), 0.999, wanted=10, block=16)
    assert kept.tolist() == list(range(10)) and examined == 10 and reads == [(0, 16)]
    kept, examined = greedy_deduplicate(read, 0, 0.9, wanted=5)
    assert kept.tolist() == [] and examined == 0
