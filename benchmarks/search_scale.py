"""What one request costs the server at collection scale, before and after, side by side in one run:

- **deduplication** (``deduplicate`` in a search): the loop `Index.deduplicated` ran before (each candidate against
  every result kept before it, one matrix-vector product and a copy each) against `greedy_deduplicate` (blocks of
  candidates against a preallocated matrix of the kept ones), on the same candidates: 1,000, 2,000 and 4,000 (what
  offset + k = 250, 500 and 996 fetch), all of them and stopping at offset + k; and the worst case at the cap
  (`MAX_DEDUPLICATED` results, every one followed by 63 near-copies: 64x the cap in candidates);
- **``/metadata``**: the filter of the whole id column it ran before against the binary search (`Index.rows_of_ids`);
  a page's metadata rows by pyarrow's ``Table.take`` (which concatenates every chunk first) against `take_rows`;
- **metadata memory per row**: a synthetic metadata table read from Parquet (each process's own memory, before)
  against the same table memory-mapped from ``metadata.arrow`` (after), each in a fresh process.

    python benchmarks/search_scale.py                      # 768 dimensions, 1M metadata rows, 1 BLAS thread
    python benchmarks/search_scale.py --rows 10000000      # a larger table (its Parquet read takes a while)

Writes ``results/search_scale.json``.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __name__ == "__main__" and "--threads" not in sys.argv:  # one BLAS thread unless asked: what the figures use
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from altclip.common.collection_index import MAX_DEDUPLICATED, IdColumn, greedy_deduplicate, take_rows  # noqa: E402
from altclip.common.index_folder import write_metadata_arrow  # noqa: E402

RESULTS_DIR = Path(__file__).parent / "results"
WORDS = (
    "a photo of the dog cat on beach with red ball sitting in garden sunset over mountains vintage poster design "
    "woman man wearing blue dress city street night stock image illustration vector art logo white background"
).split()


def unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)).astype(np.float32)


def loop_deduplicate(vectors: np.ndarray, threshold: float) -> list[int]:
    """`Index.deduplicated` before: each candidate against every kept one, a copy of the kept vectors each time."""
    kept: list[int] = []
    for number in range(len(vectors)):
        if not kept or float(np.max(vectors[kept] @ vectors[number])) < threshold:
            kept.append(number)
    return kept


def search_candidates(count: int, dim: int, seed: int = 0) -> np.ndarray:
    """Candidates as a search returns them: a quarter of them near-copies (cosine about 0.98) of another."""
    rng = np.random.default_rng(seed)
    vectors = unit(rng.normal(size=(count, dim)))
    copies = rng.choice(count, count // 4, replace=False)
    originals = rng.integers(0, count, len(copies))
    vectors[copies] = unit(vectors[originals] + 0.2 * unit(rng.normal(size=(len(copies), dim))))
    return vectors


def worst_case_at_the_cap(dim: int, copies: int = 63, seed: int = 1) -> np.ndarray:
    """`MAX_DEDUPLICATED` originals, each followed by `copies` near-copies of itself: the kept set grows to the cap
    only at the last candidate, so every block is compared with as many kept vectors as it can be."""
    rng = np.random.default_rng(seed)
    originals = unit(rng.normal(size=(MAX_DEDUPLICATED, dim)))
    noise = unit(rng.normal(size=(MAX_DEDUPLICATED, copies, dim)))
    return unit(np.concatenate([originals[:, None], originals[:, None] + 0.1 * noise], axis=1)).reshape(-1, dim)


def comparisons(kept: list[int], count: int) -> int:
    """How many kept vectors the loop compares the `count` candidates with, in all (each with those kept before)."""
    return int(np.searchsorted(np.asarray(kept), np.arange(count)).sum())


def timed(function, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - started)
    return best, result


def deduplication(dim: int, sizes: list[int], threshold: float, repeats: int) -> list[dict]:
    rows = []
    for count in sizes:
        vectors = search_candidates(count, dim)
        read = lambda start, stop: vectors[start:stop]  # noqa: E731
        before, expected = timed(lambda: loop_deduplicate(vectors, threshold), 1)
        after, (kept, _) = timed(lambda: greedy_deduplicate(read, count, threshold), repeats)
        wanted = (count - 16) // 4  # the offset + k that fetches `count` candidates
        stopped, (first, _) = timed(lambda: greedy_deduplicate(read, count, threshold, wanted), repeats)
        assert kept.tolist() == expected and first.tolist() == expected[:wanted]
        row = {"candidates": count, "dim": dim, "kept": len(expected), "before_s": round(before, 4)}
        row["comparisons"] = comparisons(expected, count)
        row |= {
            "after_s": round(after, 4),
            "offset_plus_k": wanted,
            "after_stopping_at_offset_plus_k_s": round(stopped, 4),
        }
        rows.append(row)
        print(
            f"dedup {count:>6} candidates x {dim}: before {before:8.3f} s | after {after:7.4f} s "
            f"({before / after:6.1f}x) | after, stopping at offset + k = {wanted}: {stopped:7.4f} s "
            f"({before / stopped:6.1f}x) | kept {len(expected)}"
        )
    vectors = worst_case_at_the_cap(dim)
    read = lambda start, stop: vectors[start:stop]  # noqa: E731
    worst, (kept, examined) = timed(lambda: greedy_deduplicate(read, len(vectors), 0.96, MAX_DEDUPLICATED), repeats)
    assert len(kept) == MAX_DEDUPLICATED and examined == len(vectors) - 63
    # the loop's time is one copy and product per result kept before each candidate: scaled from the largest run
    estimate = rows[-1]["before_s"] * comparisons(kept.tolist(), len(vectors)) / rows[-1]["comparisons"]
    print(
        f"dedup worst case at the cap ({MAX_DEDUPLICATED} results, {len(vectors)} candidates): after {worst:.3f} s; "
        f"before (not run; scaled from {rows[-1]['candidates']} candidates by comparisons): about {estimate:.0f} s"
    )
    rows.append({"candidates": len(vectors), "dim": dim, "kept": MAX_DEDUPLICATED, "worst_case_at_cap": True,
                 "after_s": round(worst, 4), "before_s_estimated_quadratic": round(estimate, 1)})  # fmt: skip
    return rows


def synthetic_metadata(rows: int, seed: int = 0):
    """A metadata table as the build writes it (ids increasing), with LAION-like strings: shard member locations,
    captions of 6-16 words, keys, part names, rows and checksums; several record batches as a Parquet read gives."""
    import pyarrow
    import pyarrow.compute as pc

    rng = np.random.default_rng(seed)
    numbers = pyarrow.array(np.arange(rows, dtype=np.int64))
    digits = pc.utf8_lpad(numbers.cast(pyarrow.string()), 9, "0")
    shard = pc.utf8_lpad(pyarrow.array(np.arange(rows) // 10_000).cast(pyarrow.string()), 5, "0")
    location = pc.binary_join_element_wise("s3://laion-400m/data/", shard, ".tar#", digits, "")
    vocabulary = np.array(WORDS)
    pool = pyarrow.array([" ".join(rng.choice(vocabulary, rng.integers(6, 17))) for _ in range(10_000)])
    captions = pool.take(pyarrow.array(rng.integers(0, len(pool), rows)))
    part = pc.binary_join_element_wise(
        "part-", pc.utf8_lpad(pyarrow.array(np.arange(rows) // 4096).cast(pyarrow.string()), 5, "0"), ""
    )
    checksum = pc.utf8_lpad(numbers.cast(pyarrow.string()), 32, "0")
    table = pyarrow.table(
        {"id": numbers, "location": location, "caption": captions, "key": digits, "part": part,
         "row": pyarrow.array(np.arange(rows) % 4096), "sha256": checksum}
    )  # fmt: skip
    return pyarrow.Table.from_batches(table.to_batches(max_chunksize=1 << 17))


def metadata_lookups(table, repeats: int) -> dict:
    import pyarrow
    import pyarrow.compute as pc

    rng = np.random.default_rng(2)
    ids = rng.integers(0, table.num_rows, 100).tolist()
    before, old = timed(lambda: table.filter(pc.is_in(table["id"], pyarrow.array(ids))), repeats)
    column = IdColumn(table.column("id"))
    after, rows = timed(lambda: column.rows(ids), repeats)
    assert take_rows(table, rows).to_pylist() == old.to_pylist()
    page = rng.integers(0, table.num_rows, 100)
    take_before, expected = timed(lambda: table.take(page), repeats)
    take_after, taken = timed(lambda: take_rows(table, page), repeats)
    assert taken.to_pylist() == expected.to_pylist()
    print(
        f"/metadata, 100 ids in {table.num_rows:,} rows: before (filter of the id column) {1000 * before:.1f} ms | "
        f"after (binary search) {1000 * after:.2f} ms"
    )
    print(
        f"a page of 100 metadata rows: before (Table.take) {1000 * take_before:.1f} ms | after (take_rows) "
        f"{1000 * take_after:.2f} ms"
    )
    return {
        "rows": table.num_rows,
        "metadata_100_ids_before_ms": round(1000 * before, 2),
        "metadata_100_ids_after_ms": round(1000 * after, 3),
        "page_100_rows_before_ms": round(1000 * take_before, 2),
        "page_100_rows_after_ms": round(1000 * take_after, 3),
    }


MEMORY_PROBE = """
import sys, numpy as np
sys.path.insert(0, {root!r})
from altclip.common.collection_index import IdColumn, take_rows
def resident():  # (private memory, file pages) resident
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return [int(fields[name].split()[0]) * 1024 for name in ("RssAnon", "RssFile")]
import pyarrow, pyarrow.ipc, pyarrow.parquet
small = pyarrow.table({{"id": [0, 1], "text": ["a", "b"]}})  # the lazy imports of a first lookup, not counted
take_rows(small, IdColumn(small.column("id")).rows([1])).to_pylist()
before = resident()
if {kind!r} == "parquet":
    table = pyarrow.parquet.read_table({path!r})
else:
    table = pyarrow.ipc.open_file(pyarrow.memory_map({path!r})).read_all()
loaded = resident()
rows = IdColumn(table.column("id")).rows(np.random.default_rng(0).integers(0, table.num_rows, 1000).tolist())
take_rows(table, rows).to_pylist()
after = resident()
print(table.num_rows, *(now - then for now, then in zip(loaded + after, before + before)))
"""


def metadata_memory(table, folder: Path) -> dict:
    """Resident memory a process gains per row, private (its own) and file pages (the page cache's, shared by every
    process mapping the file): the table read from Parquet, or mapped from metadata.arrow, then after one lookup of
    1,000 ids; each in a fresh process."""
    import pyarrow.parquet

    pyarrow.parquet.write_table(table, folder / "metadata.parquet")
    write_metadata_arrow(table, folder / "metadata.arrow")
    found = {"table_bytes_per_row": round(table.nbytes / table.num_rows, 1)}
    for kind, name in (("parquet", "metadata.parquet"), ("arrow", "metadata.arrow")):
        code = MEMORY_PROBE.format(root=str(Path(__file__).resolve().parents[1]), kind=kind, path=str(folder / name))
        output = subprocess.check_output([sys.executable, "-c", code], text=True).split()
        rows, (private, files, private_after, files_after) = (
            int(output[0]),
            (int(v) / int(output[0]) for v in output[1:]),
        )
        found[kind] = {
            "file_bytes_per_row": round((folder / name).stat().st_size / rows, 1),
            "private_bytes_per_row_loaded": round(private, 1),
            "file_page_bytes_per_row_loaded": round(files, 1),
            "private_bytes_per_row_after_a_lookup": round(private_after, 1),
            "file_page_bytes_per_row_after_a_lookup": round(files_after, 1),
        }
    parquet, arrow = found["parquet"], found["arrow"]
    print(
        f"metadata memory per row ({table.num_rows:,} rows; the table itself {found['table_bytes_per_row']} B/row): "
        f"before (Parquet read) {parquet['private_bytes_per_row_loaded']} B/row private to each process | "
        f"after (metadata.arrow mapped) {arrow['private_bytes_per_row_loaded']} B/row private, "
        f"{arrow['file_page_bytes_per_row_after_a_lookup']} B/row of shared file pages after a lookup of 1,000 ids | "
        f"files: Parquet {parquet['file_bytes_per_row']} B/row, Arrow {arrow['file_bytes_per_row']} B/row"
    )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--candidates", type=int, nargs="+", default=[1000, 2000, 4000])
    parser.add_argument("--threshold", type=float, default=0.96)
    parser.add_argument("--rows", type=int, default=1_000_000, help="metadata rows")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", action="store_true", help="leave BLAS's thread count as it is")
    args = parser.parse_args()
    results = {"blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default")}
    results["deduplication"] = deduplication(args.dim, args.candidates, args.threshold, args.repeats)
    table = synthetic_metadata(args.rows)
    results["metadata_lookup"] = metadata_lookups(table, args.repeats)
    with tempfile.TemporaryDirectory() as folder:
        results["metadata_memory"] = metadata_memory(table, Path(folder))
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / "search_scale.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
