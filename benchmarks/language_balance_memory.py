"""Memory and time of the ``--language_column`` plan: the per-row Python algorithm it replaced against the Arrow and
NumPy one, on the same table, each in a fresh process:

    python benchmarks/language_balance_memory.py --rows 2000000 --languages 100

Writes a saved `datasets` table (a caption and a language column, languages drawn Zipf-like so that a few are large
and many small), then runs the plan on it once per algorithm in a process of its own, after opening the table as a
run has it open. Prints, side by side, the working memory (how far resident memory rose during the plan: VmHWM after
malloc_trim and a reset of the peak counter), the process's peak resident memory and the seconds, the bytes a row,
and the same extrapolated to 50M rows; the two plans are checked to be identical (a digest of every group's language,
row indices and samples, and of one drawn epoch). The language column's table is opened (`open_table`, which both
algorithms call) before the measurement and its cost printed apart: it maps the whole Arrow file, file pages that
the page cache holds (the same for both, and in proportion to the table's width, not to the algorithm).
"""

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from altclip.training.data import language_balance  # noqa: E402
from altclip.training.data.epoch_plan import drawn_per_source  # noqa: E402
from altclip.training.data.language_balance import (  # noqa: E402
    NO_LANGUAGE,
    LanguageGroup,
    LanguagePlan,
    language_plan,
    shares,
)
from altclip.training.data.tables import SKIPPED  # noqa: E402

AT_SCALE = 50_000_000  # the rows the numbers are extrapolated to


def per_row_language_plan(rows, language_column, alpha, weights, cache_dir=None) -> LanguagePlan:
    """The plan as ``language_balance`` computed it before (kept verbatim as the reference; the tests compare the two
    on thousands of random tables): every row's language as a Python string, ``np.unique`` on an object array, one
    ``flatnonzero`` per language."""
    per_source = rows.sizes if weights is None else drawn_per_source(rows.sizes, weights)
    groups = []
    for source_index, source in enumerate(rows.sources):
        languages = _per_row_languages(source, language_column, rows.sizes[source_index], cache_dir)
        names, inverse = np.unique(languages, return_inverse=True)
        members = [np.flatnonzero(inverse == k) + rows.offsets[source_index] for k in range(len(names))]
        counts = shares(per_source[source_index], [len(m) for m in members], 1.0 if alpha is None else alpha)
        groups += [
            LanguageGroup(source_index, str(name), indices.astype(np.int64), count)
            for name, indices, count in zip(names, members, counts)
        ]
    return LanguagePlan(groups, [source.spec for source in rows.sources], alpha)


def _per_row_languages(source, column, rows, cache_dir) -> np.ndarray:
    try:
        table = language_balance.open_table(source, [column], cache_dir)  # the module's: tests replace it
    except language_balance.DataFormatError:
        return np.full(rows, NO_LANGUAGE, dtype=object)
    values = table.data.column(column).to_pylist()
    if SKIPPED in table.column_names:
        skipped = table.data.column(SKIPPED).to_pylist()
        values = [None if reason else value for value, reason in zip(values, skipped)]
    names = [str(value).strip() if value not in (None, "") else NO_LANGUAGE for value in values]
    return np.asarray(names, dtype=object)


ALGORITHMS = {"per-row Python (before)": per_row_language_plan, "Arrow + NumPy (now)": language_plan}


def plan_digest(plan: LanguagePlan) -> str:
    digest = hashlib.sha256()
    for group in plan.groups:
        digest.update(f"{group.source}:{group.language}:{group.samples_per_epoch}:".encode())
        digest.update(group.indices.tobytes())
    digest.update(plan.draw(np.random.default_rng(0)).tobytes())
    return digest.hexdigest()[:16]


def write_table(folder: Path, rows: int, languages: int, seed: int = 0) -> None:
    import datasets

    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, languages + 1)
    codes = rng.choice(languages, size=rows, p=weights / weights.sum())
    names = np.array([f"l{index:03d}" for index in range(languages)], dtype=object)
    table = datasets.Dataset.from_dict({"caption": [f"caption {i}" for i in range(rows)], "language": names[codes]})
    table.save_to_disk(folder)


def measure(table: Path, algorithm: str) -> dict:
    """In this (fresh) process: open the table as a run has it open, then the language column's table (both
    algorithms call `open_table`, which maps the whole Arrow file: file pages, measured on their own), then the plan
    of `algorithm` on that opened table."""
    from altclip.training.data.sources import parse_sources
    from altclip.training.data.tables import TableRows
    from benchmarks.common import peak_working_memory_mib, process_peak_rss_mib

    rows = TableRows(parse_sources([str(table)]), ("caption",))
    opened = {}

    def open_language_table():
        opened["table"] = language_balance.open_table(rows.sources[0], ["language"])

    open_mib = peak_working_memory_mib(open_language_table)
    language_balance.open_table = lambda *args, **kwargs: opened["table"]  # both plans read this opened table
    result = {}

    def run():
        start = time.perf_counter()
        result["plan"] = ALGORITHMS[algorithm](rows, "language", 0.3, None)
        result["seconds"] = time.perf_counter() - start

    working = peak_working_memory_mib(run)
    return {
        "algorithm": algorithm,
        "rows": len(rows),
        "languages": len(result["plan"].groups),
        "open_table_mib": round(open_mib, 1),
        "seconds": round(result["seconds"], 3),
        "working_mib": round(working, 1),
        "process_peak_mib": round(process_peak_rss_mib(), 1),
        "digest": plan_digest(result["plan"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--languages", type=int, default=100)
    parser.add_argument("--output", type=Path, help="also write the results as JSON here")
    parser.add_argument("--measure", choices=sorted(ALGORITHMS), help=argparse.SUPPRESS)
    parser.add_argument("--table", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.table, args.measure)))
        return
    with tempfile.TemporaryDirectory() as folder:
        table = Path(folder) / "table"
        write_table(table, args.rows, args.languages)
        results = []
        for algorithm in ALGORITHMS:
            command = [sys.executable, __file__, "--measure", algorithm, "--table", str(table)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results.append(json.loads(output.strip().splitlines()[-1]))
    if len({result["digest"] for result in results}) != 1:
        raise SystemExit(f"the two algorithms planned differently: {results}")
    rows, opened = args.rows, results[0]["open_table_mib"]
    print(f"{rows:,} rows, {results[0]['languages']} languages; identical plans (digest {results[0]['digest']})")
    print(
        f"opening the language column's table (both): +{opened:.1f} MiB, file pages ({opened * 2**20 / rows:.1f} B/row)"
    )
    print(f"{'plan':<26}{'working MiB':>12}{'B/row':>8}{'peak MiB':>10}{'seconds':>9}{'µs/row':>8}", end="")
    print(f"{'at 50M rows: GiB':>18}{'s':>7}")
    for result in results:
        per_row_bytes = result["working_mib"] * 2**20 / rows
        per_row_seconds = result["seconds"] / rows
        print(
            f"{result['algorithm']:<26}{result['working_mib']:>12.1f}{per_row_bytes:>8.1f}"
            f"{result['process_peak_mib']:>10.1f}{result['seconds']:>9.2f}{per_row_seconds * 1e6:>8.3f}"
            f"{per_row_bytes * AT_SCALE / 2**30:>18.2f}{per_row_seconds * AT_SCALE:>7.0f}"
        )
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
