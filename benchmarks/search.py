"""Image search, side by side in one run: the index build's images/s against the `Embedder` alone on the same files,
and query latency (p50/p99), recall@10 and memory of the exact and approximate FAISS indexes against a plain NumPy
matrix product, at 10k, 100k and 1M vectors.

    python benchmarks/search.py                          # ViT-B/32 shape, 64 photos; 10k, 100k, 1M vectors of 512
    python benchmarks/search.py --sizes 10000 100000 --photos 32

The large collections are synthetic unit vectors drawn around random centres, 200 vectors per centre (real
embeddings cluster; uniform noise on the sphere is the worst case for any inverted-file index). Recall@10 is
measured on fresh queries drawn the same way; the build's own (in the manifest) on stored vectors, self left out.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from altclip.common.embedding import Embedder  # noqa: E402
from altclip.search.build import IndexSettings, embed_parts, finalize  # noqa: E402
from altclip.search.collection import plan_digest, plan_parts  # noqa: E402
from altclip.search.vector_index import build_faiss_index, recall_at  # noqa: E402
from benchmarks.common import model_pair, photo_files  # noqa: E402

RESULTS_DIR = Path(__file__).parent / "results"


def build_throughput(shape: str, photos: int, batch_size: int, repeats: int) -> dict:
    """images/s of the index build (embed the parts, write them, gather metadata, build the index) and of
    `Embedder.images` on the same files, same model object, alternating, best of `repeats`."""
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        _, ours, processor = model_pair(shape, folder / "model")
        files = photo_files(folder / "photos", photos)
        embedder = Embedder(ours, processor, batch_size=batch_size, num_workers=0, reduced_decoding=True)
        embedder.images(files[:batch_size])  # warm-up
        embedder_seconds, build_seconds = [], []
        for repeat in range(repeats):
            started = time.perf_counter()
            embedder.images(files)
            embedder_seconds.append(time.perf_counter() - started)
            output = folder / f"index{repeat}"
            started = time.perf_counter()
            parts = plan_parts([str(folder / "photos")], part_size=4096)
            embed_parts(embedder, parts, output)
            finalize(
                output, parts, "benchmark", "none", ours.config.projection_dim, IndexSettings(), [], plan_digest(parts)
            )
            build_seconds.append(time.perf_counter() - started)
    embedder_rate, build_rate = photos / min(embedder_seconds), photos / min(build_seconds)
    return {
        "photos": photos,
        "embedder_images_per_s": round(embedder_rate, 2),
        "build_images_per_s": round(build_rate, 2),
        "build_overhead": round(embedder_rate / build_rate - 1, 4),
    }


def clustered_unit_vectors(count: int, dim: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    vectors = np.empty((count, dim), np.float32)
    for start in range(0, count, 100_000):
        stop = min(count, start + 100_000)
        chunk = centres[rng.integers(0, len(centres), stop - start)] + 0.6 * rng.standard_normal(
            (stop - start, dim), dtype=np.float32
        ) / np.sqrt(dim)
        vectors[start:stop] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return vectors


def latencies(search, queries: np.ndarray) -> dict:
    """p50 and p99 milliseconds of one query at a time (what a user's search does)."""
    times = []
    for query in queries:
        started = time.perf_counter()
        search(query[None])
        times.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": round(float(np.percentile(times, 50)), 3), "p99_ms": round(float(np.percentile(times, 99)), 3)}


def index_bytes(index) -> int:
    import faiss

    with tempfile.NamedTemporaryFile() as handle:
        faiss.write_index(index, handle.name)
        return os.path.getsize(handle.name)


def query_benchmark(count: int, dim: int, queries: int, seed: int = 0) -> list[dict]:
    import faiss

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(16, count // 200), dim), dtype=np.float32) / np.sqrt(dim)
    vectors = clustered_unit_vectors(count, dim, rng, centres)
    probes = clustered_unit_vectors(queries, dim, rng, centres)
    rows = []

    def numpy_search(query):
        scores = vectors @ query[0]
        top = np.argpartition(-scores, 10)[:10]
        return top[np.argsort(-scores[top])]

    rows.append({"vectors": count, "method": "NumPy matmul + argpartition", **latencies(numpy_search, probes),
                 "recall_at_10": 1.0, "bytes_per_million": count and int(vectors.nbytes / count * 1e6)})  # fmt: skip
    flat = faiss.IndexFlatIP(dim)
    flat.add(vectors)
    truth = flat.search(probes, 10)[1]
    rows.append({"vectors": count, "method": "FAISS Flat (exact)", **latencies(lambda q: flat.search(q, 10), probes),
                 "recall_at_10": 1.0, "bytes_per_million": int(index_bytes(flat) / count * 1e6)})  # fmt: skip
    flat = None  # memory back before the next index
    for factory in (None, "SQ8"):
        started = time.perf_counter()
        if factory is None:
            index, description = build_faiss_index(vectors, exact_limit=0)
        else:
            lists = 2 ** round(np.log2(np.sqrt(count)))
            index, description = build_faiss_index(vectors, factory=f"IVF{lists},SQ8")
        seconds = time.perf_counter() - started
        found = index.search(probes, 10)[1]
        rows.append({
            "vectors": count, "method": f"FAISS {description['factory']} nprobe {description['parameters']['nprobe']}",
            **latencies(lambda q: index.search(q, 10), probes), "recall_at_10": round(recall_at(found, truth), 4),
            "build_recall_at_10": description["recall_at_10"], "build_seconds": round(seconds, 1),
            "bytes_per_million": int(index_bytes(index) / count * 1e6),
        })  # fmt: skip
        index = None
    for row in rows:
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="vit-b-32_xlm-r-base")
    parser.add_argument("--photos", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512, help="ViT-B/32's projection; ViT-L/14's is 768 (x1.5 memory)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--skip_build", action="store_true")
    args = parser.parse_args()
    import faiss
    import torch

    threads = torch.get_num_threads()
    faiss.omp_set_num_threads(threads)
    results = {"threads": threads, "faiss": faiss.__version__, "dim": args.dim}
    if not args.skip_build:
        results["build"] = build_throughput(args.shape, args.photos, args.batch_size, args.repeats)
        print(json.dumps(results["build"]), flush=True)
    RESULTS_DIR.mkdir(exist_ok=True)
    results["query"] = []
    for count in args.sizes:  # written after each size: the 1M row takes longest
        results["query"] += query_benchmark(count, args.dim, args.queries)
        (RESULTS_DIR / "search.json").write_text(json.dumps(results, indent=2) + "\n")
    print("| vectors | method | p50 ms | p99 ms | recall@10 | MiB per million vectors |")
    print("|---:|---|---:|---:|---:|---:|")
    for row in results["query"]:
        print(f"| {row['vectors']:,} | {row['method']} | {row['p50_ms']} | {row['p99_ms']} | {row['recall_at_10']} | "
              f"{row['bytes_per_million'] / 2**20:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
