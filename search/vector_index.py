"""The FAISS index of a collection: exact inner product for small collections, an IVF index beyond, its kind chosen
by size and a memory budget, its ``nprobe`` tuned to a recall target, and its recall@10 measured against exact search.

The choice follows autofaiss's rules (exact below a size; else IVF with about sqrt(n) lists, flat codes when they fit
the budget, 8-bit scalar codes or product quantisation when they do not). autofaiss itself is not used: its release
pins numpy<2, which breaks the pyarrow this package reads tables with. IVF rather than HNSW beyond the exact size
because FAISS memory-maps IVF lists (IO_FLAG_MMAP) while an HNSW graph must be read into memory.
"""

import logging
import math
import re

import numpy as np

logger = logging.getLogger(__name__)

EXACT_LIMIT = 100_000  # vectors: exact search up to here (about 10 ms a query at dim 768 on 2 cores)
MEMORY_BUDGET = 16 * 2**30  # bytes, autofaiss's default
RECALL_TARGET = 0.95
RECALL_QUERIES = 1000


def parse_bytes(text: str) -> int:
    """``16G``, ``512M``, ``2e9`` as bytes."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([kKmMgGtT]?)i?[bB]?\s*", str(text))
    if not match:
        raise ValueError(f"--memory_budget {text!r}: give bytes such as 16G, 512M or 2e9.")
    return int(float(match.group(1)) * 1024 ** " KMGT".index(match.group(2).upper() or " "))


def choose_index(count: int, dim: int, memory_budget: int = MEMORY_BUDGET, exact_limit: int = EXACT_LIMIT) -> str:
    """A FAISS index factory string for `count` vectors of `dim` floats within `memory_budget` bytes."""
    if count <= exact_limit:
        return "Flat"
    lists = 2 ** round(math.log2(math.sqrt(count)))  # 1M vectors: 1024 lists of about 1000
    if count * dim * 4 * 1.05 <= memory_budget:
        return f"IVF{lists},Flat"
    if count * dim * 1.05 <= memory_budget:
        return f"IVF{lists},SQ8"
    fitting = [m for m in range(1, dim + 1) if dim % m == 0 and m <= 64 and count * m * 1.05 <= memory_budget]
    if not fitting:
        raise ValueError(f"{count:,} vectors do not fit {memory_budget:,} bytes even as product codes; raise it.")
    return f"IVF{lists},PQ{max(fitting)}x8"


def exact_neighbours(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    import faiss

    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    return flat.search(queries, k)[1]


def _without_self(neighbours: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Each row's first 10 neighbours other than the query's own row."""
    return np.stack([[n for n in found if n != row][:10] for found, row in zip(neighbours, rows)])


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of the exact top-k that the approximate top-k holds."""
    return float(np.mean([len(set(a[a >= 0]) & set(b)) / len(b) for a, b in zip(found, truth)]))


def build_faiss_index(
    vectors: np.ndarray,
    memory_budget: int = MEMORY_BUDGET,
    exact_limit: int = EXACT_LIMIT,
    recall_target: float = RECALL_TARGET,
    factory: str | None = None,
    seed: int = 0,
):
    """(index, description for the manifest): the index over unit `vectors` (float32 [n, dim]); an approximate one
    is tuned to the smallest nprobe reaching `recall_target` on sampled stored vectors, its recall@10 recorded."""
    import faiss

    count, dim = vectors.shape
    factory = factory or choose_index(count, dim, memory_budget, exact_limit)
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        ivf = faiss.extract_index_ivf(index)
        lists = ivf.nlist
        if hasattr(faiss, "index_cpu_to_all_gpus") and faiss.get_num_gpus() > 0:  # faiss-gpu: k-means on the GPUs
            ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatL2(dim))
        sample = vectors[np.sort(rng.choice(count, min(count, max(64 * lists, 20_000)), replace=False))]
        index.train(sample)
    index.add(vectors)
    description = {"factory": factory, "exact": factory == "Flat", "parameters": {}, "recall_at_10": 1.0}
    if factory != "Flat":
        # queries: sampled stored vectors, each one's own row left out of both top-10s, so that a query is as hard
        # as a new one (a stored vector always finds itself)
        rng = np.random.default_rng(seed + 1)
        chosen = rng.choice(count, min(count, RECALL_QUERIES), replace=False)
        queries = vectors[chosen]
        truth = _without_self(exact_neighbours(vectors, queries, 11), chosen)
        ivf = faiss.extract_index_ivf(index)
        nprobe, recall = 1, 0.0
        while True:
            ivf.nprobe = nprobe
            recall = recall_at(_without_self(index.search(queries, 11)[1], chosen), truth)
            if recall >= recall_target or nprobe >= ivf.nlist:
                break
            nprobe = min(ivf.nlist, nprobe * 2)
        description.update(parameters={"nprobe": nprobe}, recall_at_10=round(recall, 4), recall_queries=len(queries))
        logger.info("%s: nprobe %d gives recall@10 %.4f against exact search", factory, nprobe, recall)
    return index, description
