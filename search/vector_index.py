"""The FAISS index of a collection: exact inner product for small collections, an IVF index beyond, its kind chosen
by size and a memory budget, its ``nprobe`` tuned to a recall target, and its recall@10 measured against exact search.

The choice follows autofaiss's rules (exact below a size; else IVF with about sqrt(n) lists, flat codes when they fit
the budget, 8-bit scalar codes or product quantisation when they do not). autofaiss itself is not used: its release
(2.18) pins numpy<2 (pip would replace numpy 2.4 with 1.26, which the installed pyarrow and torch are not built
for), and it tunes nprobe on stored vectors only, which is what overstated recall for text queries here.

nprobe is tuned on text queries where there are some (captions, file names, or the user's sample, embedded by the
text tower; ``altclip-index build --tune_queries``) as well as on stored image vectors, and the manifest records the
recall of each: text queries sit far from the images (CLIP's modality gap) and need more lists. When the tuned nprobe
searches half of the lists or more, the IVF index cannot beat exact search, so the exact one is built instead.

IVF rather than HNSW beyond the exact size
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
    """The rows of the `k` largest inner products of each query: FAISS's exact search (the kernel of
    ``IndexFlatIP.search``, same results) over `vectors` where they are. An ``IndexFlatIP`` would copy them all
    first: 307 GB more at 100M x 768, on the process that builds the index."""
    import faiss

    vectors, queries = np.ascontiguousarray(vectors, np.float32), np.ascontiguousarray(queries, np.float32)
    return faiss.knn(queries, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)[1]


def _without_self(neighbours: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Each row's first 10 neighbours other than the query's own row."""
    return np.stack([[n for n in found if n != row][:10] for found, row in zip(neighbours, rows)])


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of the exact top-k that the approximate top-k holds."""
    return float(np.mean([len(set(a[a >= 0]) & set(b)) / len(b) for a, b in zip(found, truth)]))


def unit_prefix(vectors: np.ndarray, dims: int) -> np.ndarray:
    """The first `dims` values of each vector, normalised again (a Matryoshka embedding's prefix)."""
    vectors = np.ascontiguousarray(vectors[:, :dims], dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _flat_index(vectors: np.ndarray):
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index


def build_faiss_index(
    vectors: np.ndarray,
    memory_budget: int = MEMORY_BUDGET,
    exact_limit: int = EXACT_LIMIT,
    recall_target: float = RECALL_TARGET,
    factory: str | None = None,
    seed: int = 0,
    text_queries: np.ndarray | None = None,
):
    """(index, description for the manifest): the index over unit `vectors` (float32 [n, dim]). An approximate
    one's nprobe is the smallest reaching `recall_target` (recall@10 against exact search) for both the unit
    `text_queries` (when given) and sampled stored vectors; both recalls are recorded. Exact when IVF would have to
    search half its lists or more."""
    import faiss

    count, dim = vectors.shape
    factory = factory or choose_index(count, dim, memory_budget, exact_limit)
    exact = {"factory": "Flat", "exact": True, "parameters": {}, "recall_at_10": 1.0}
    if factory == "Flat":
        return _flat_index(vectors), {**exact, "recall_at_10_text": 1.0, "recall_at_10_image": 1.0}
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    ivf = faiss.extract_index_ivf(index)
    if hasattr(faiss, "index_cpu_to_all_gpus") and faiss.get_num_gpus() > 0:  # faiss-gpu: k-means on the GPUs
        ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatL2(dim))
    sample = vectors[np.sort(rng.choice(count, min(count, max(64 * ivf.nlist, 20_000)), replace=False))]
    index.train(sample)
    index.add(vectors)
    # image queries: sampled stored vectors, each one's own row left out of both top-10s, so that a query is as hard
    # as a new one (a stored vector always finds itself)
    chosen = np.random.default_rng(seed + 1).choice(count, min(count, RECALL_QUERIES), replace=False)
    image_queries = vectors[chosen]
    image_truth = _without_self(exact_neighbours(vectors, image_queries, 11), chosen)
    has_text = text_queries is not None and len(text_queries) > 0
    text_truth = exact_neighbours(vectors, text_queries, 10) if has_text else None
    nprobe = 1
    while True:
        ivf.nprobe = nprobe
        image_recall = recall_at(_without_self(index.search(image_queries, 11)[1], chosen), image_truth)
        text_recall = recall_at(index.search(text_queries, 10)[1], text_truth) if has_text else None
        reached = image_recall >= recall_target and (text_recall is None or text_recall >= recall_target)
        if reached or nprobe >= ivf.nlist:
            break
        nprobe = min(ivf.nlist, nprobe * 2)
    recalls = {
        "recall_at_10": round(text_recall if has_text else image_recall, 4),
        "recall_at_10_text": None if text_recall is None else round(text_recall, 4),
        "recall_at_10_image": round(image_recall, 4),
        "recall_queries": {"text": 0 if text_queries is None else len(text_queries), "image": len(chosen)},
    }
    logger.info("%s: nprobe %d gives recall@10 %s against exact search", factory, nprobe, recalls)
    if 2 * nprobe >= ivf.nlist and count * dim * 4 <= memory_budget:
        note = (
            f"{factory} needs nprobe {nprobe} of {ivf.nlist} lists to reach recall@10 {recall_target} "
            f"({'text and image' if has_text else 'image'} queries): no faster than exact "
            "search, so the index is exact."
        )
        logger.warning(note)
        return _flat_index(vectors), {**exact, "recall_at_10_text": 1.0, "recall_at_10_image": 1.0, "note": note}
    description = {"factory": factory, "exact": False, "parameters": {"nprobe": nprobe}, **recalls}
    if not reached:
        description["note"] = (
            f"recall@10 {recalls['recall_at_10']} at nprobe {nprobe} (every list) is below the target {recall_target}"
            " and exact search does not fit --memory_budget."
        )
    elif not has_text:
        description["note"] = (
            "tuned on image vectors only (no captions, file names or --tune_queries): recall for text queries may be "
            "lower."
        )
    return index, description
