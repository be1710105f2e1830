"""Search as a service, side by side in one run: ``altclip-serve`` (HTTP, 32 concurrent clients, embedding queries)
against FAISS alone on the same index, the exact index (`Index`'s BLAS product over FAISS's own codes) against FAISS's
flat search and a plain NumPy product, recall for text-like and image queries as the build tuned them, and memory and
recall per Matryoshka prefix (``--dims``).

    python benchmarks/search_service.py                                   # 100k x 512 and 1M x 256
    python benchmarks/search_service.py --sizes 100000:512 --requests 20

Vectors are synthetic: unit vectors around random centres (200 per centre), "text" queries drawn around the same
centres shifted by one fixed direction (CLIP's modality gap), image queries drawn like the stored vectors. The
Matryoshka rows scale dimension i by 1/sqrt(1 + i/8) before normalising, so that leading dimensions carry more of the
similarity, as in a Matryoshka-trained model; a model trained without it loses more recall per cut.
"""

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from altclip.common.collection_index import Index, exact_top_k  # noqa: E402
from altclip.search.build import index_from_vectors  # noqa: E402
from altclip.search.vector_index import recall_at, unit_prefix  # noqa: E402

RESULTS_DIR = Path(__file__).parent / "results"


def unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def synthetic(count: int, dim: int, seed: int = 0, decay: bool = False):
    """(stored vectors, text-like queries, image-like queries)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(1, count // 200), dim)).astype(np.float32)
    scale = (1 / np.sqrt(1 + np.arange(dim) / 8)).astype(np.float32) if decay else np.ones(dim, np.float32)
    stored = np.empty((count, dim), np.float32)
    for start in range(0, count, 100_000):  # in blocks: no float64 copy of the whole set
        stop = min(count, start + 100_000)
        block = centres[rng.integers(0, len(centres), stop - start)] + 0.35 * rng.normal(size=(stop - start, dim))
        stored[start:stop] = unit(block * scale)
    gap = 0.9 * unit(rng.normal(size=(1, dim)))[0] * float(np.linalg.norm(centres, axis=1).mean())
    texts = unit((centres[rng.integers(0, len(centres), 1200)] + gap + 0.5 * rng.normal(size=(1200, dim))) * scale)
    images = unit((centres[rng.integers(0, len(centres), 200)] + 0.35 * rng.normal(size=(200, dim))) * scale)
    return stored, texts, images


def percentiles(seconds: list[float]) -> dict:
    ordered = sorted(seconds)
    return {
        "p50_ms": round(1000 * statistics.median(ordered), 3),
        "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 3),
    }


def one_at_a_time(search, queries: np.ndarray) -> dict:
    seconds = []
    for query in queries:
        started = time.perf_counter()
        search(query[None])
        seconds.append(time.perf_counter() - started)
    return {**percentiles(seconds), "queries_per_s": round(len(queries) / sum(seconds), 1)}


def faiss_flat(vectors: np.ndarray):
    import faiss

    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    return flat


def numpy_top_k(vectors: np.ndarray, query: np.ndarray, k: int = 10):
    scores = vectors @ query[0]
    top = np.argpartition(-scores, k)[:k]
    return top[np.argsort(-scores[top])]


def serve_and_load(folder: Path, queries: np.ndarray, clients: int, requests: int) -> dict:
    """p50/p99 latency and queries/s of ``altclip-serve``'s app (uvicorn on 127.0.0.1, in this process) under
    `clients` concurrent HTTP clients, each sending `requests` embedding queries (k=10)."""
    import httpx
    import uvicorn

    from altclip.search.server import create_app
    from altclip.search.service import SearchService

    service = SearchService({"bench": folder}, load_model=False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(service)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", timeout_keep_alive=75)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    while not server.started:
        time.sleep(0.05)
    seconds: list[float] = []
    lock = threading.Lock()

    def client(number: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            for request in range(requests):
                vector = queries[(number * requests + request) % len(queries)].tolist()
                started = time.perf_counter()
                response = http.post("/search", json={"embedding": vector, "k": 10, "metadata": False})
                elapsed = time.perf_counter() - started
                assert response.status_code == 200, response.text
                with lock:
                    seconds.append(elapsed)

    started = time.perf_counter()
    workers = [threading.Thread(target=client, args=(number,)) for number in range(clients)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall = time.perf_counter() - started
    server.should_exit = True
    thread.join(timeout=10)
    service.close()
    return {**percentiles(seconds), "queries_per_s": round(len(seconds) / wall, 1), "clients": clients}


def size_rows(count: int, dim: int, clients: int, requests: int, probes: int) -> list[dict]:
    stored, texts, images = synthetic(count, dim)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "index"
        started = time.perf_counter()
        manifest = index_from_vectors(folder, stored, [f"img{i}.jpg" for i in range(count)],
                                      text_query_vectors=texts[:1000])  # fmt: skip
        build_seconds = time.perf_counter() - started
        index = Index.load(folder)
        description = manifest["index"]
        truth_text = exact_top_k(stored, texts[1000:], 10)[1]
        truth_image = exact_top_k(stored, images, 10)[1]
        base = {"vectors": count, "dim": dim}
        tuned = {
            "factory": description["factory"],
            "nprobe": description["parameters"].get("nprobe"),
            "build_recall_text": description["recall_at_10_text"],
            "build_recall_image": description["recall_at_10_image"],
            "fresh_recall_text": round(recall_at(index.search_vectors(texts[1000:], 10)[1], truth_text), 4),
            "fresh_recall_image": round(recall_at(index.search_vectors(images, 10)[1], truth_image), 4),
            "build_seconds": round(build_seconds, 1),
            "note": description.get("note", ""),
        }
        probe_queries = images[:probes]
        rows.append({**base, "method": f"Index ({description['factory']}), one query", **tuned,
                     **one_at_a_time(lambda q: index.search_vectors(q, 10), probe_queries)})  # fmt: skip
        if not description["exact"]:
            rows.append({**base, "method": "FAISS alone (same IVF index), one query",
                         **one_at_a_time(lambda q: index.faiss_index.search(q, 10), probe_queries)})  # fmt: skip
        flat = faiss_flat(stored)
        rows.append({**base, "method": "FAISS IndexFlatIP (exact), one query",
                     **one_at_a_time(lambda q: flat.search(q, 10), probe_queries)})  # fmt: skip
        rows.append({**base, "method": "NumPy vectors @ query + argpartition (exact)",
                     **one_at_a_time(lambda q: numpy_top_k(stored, q), probe_queries)})  # fmt: skip
        rows.append({**base, "method": "Index exact_top_k (BLAS over the flat codes)",
                     **one_at_a_time(lambda q: exact_top_k(stored, q, 10), probe_queries)})  # fmt: skip
        flat.reset()  # its memory back before the server runs
        rows.append({**base, "method": f"altclip-serve HTTP, {clients} clients x {requests}",
                     **serve_and_load(folder, images, clients, requests)})  # fmt: skip
    return rows


def matryoshka_rows(count: int, dim: int, prefixes: list[int]) -> list[dict]:
    """Memory and recall@10 (against exact search over all dimensions) of the exact index per prefix length."""
    stored, texts, _ = synthetic(count, dim, seed=1, decay=True)
    queries = texts[:200]
    truth = exact_top_k(stored, queries, 10)[1]
    rows = []
    for dims in prefixes:
        found = exact_top_k(unit_prefix(stored, dims), unit_prefix(queries, dims), 10)[1]
        rows.append({"vectors": count, "dims": dims, "index_mib": round(count * dims * 4 / 2**20, 1),
                     "recall_at_10_text": round(recall_at(found, truth), 4)})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["100000:512", "1000000:256"], help="COUNT:DIM")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=20, help="per client")
    parser.add_argument("--probes", type=int, default=100, help="one-at-a-time queries per method")
    parser.add_argument("--matryoshka", default="100000:512", help="COUNT:DIM of the --dims rows")
    args = parser.parse_args()
    rows = []
    for spec in args.sizes:
        count, dim = map(int, spec.split(":"))
        rows += size_rows(count, dim, args.clients, args.requests, args.probes)
        print(json.dumps(rows[-6:], indent=1), flush=True)
        RESULTS_DIR.mkdir(exist_ok=True)  # each size as it ends: a long run stopped later keeps the finished ones
        (RESULTS_DIR / "search_service.json").write_text(json.dumps({"rows": rows}, indent=1))
    count, dim = map(int, args.matryoshka.split(":"))
    prefixes = [d for d in (dim, dim // 2, dim // 4, dim // 8) if d >= 8]
    matryoshka = matryoshka_rows(count, dim, prefixes)
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / "search_service.json").write_text(json.dumps({"rows": rows, "matryoshka": matryoshka}, indent=1))
    print("| vectors x dim | method | p50 ms | p99 ms | queries/s | recall@10 text / image (fresh) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        recall = f"{row['fresh_recall_text']} / {row['fresh_recall_image']}" if "fresh_recall_text" in row else ""
        print(f"| {row['vectors']:,} x {row['dim']} | {row['method']} | {row['p50_ms']} | {row['p99_ms']} | "
              f"{row['queries_per_s']} | {recall} |")  # fmt: skip
    print("\n| vectors | dims | index MiB | recall@10 (text-like, vs all dims) |\n|---|---|---|---|")
    for row in matryoshka:
        print(f"| {row['vectors']:,} | {row['dims']} | {row['index_mib']} | {row['recall_at_10_text']} |")


if __name__ == "__main__":
    main()
