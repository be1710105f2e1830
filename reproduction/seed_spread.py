"""The reproduction over several training seeds: each column of the table as mean and range, not one run's digits.

    python -m altclip.reproduction.seed_spread --seeds 0 1 2 3 --parallel 2 --output_dir outputs/seed_spread

runs `altclip-reproduce --seed S --threads 1` once per seed (as separate processes, `--parallel` at a time; the
held-out emoji are the same in every run, only the training's random choices change), then writes
`spread.json`, `spread.md` and `spread.png` beside the runs. The seed-0 run is the README's first command's run and
is cached as the default model unless `--no_cache_default`.
"""

import argparse
import json
import logging
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from altclip.common.cli_errors import SEED, int_in_range, one_line_parser_errors, run_with_one_line_errors
from altclip.common.errors import AltCLIPError, InputDataError, UsageError
from altclip.common.plots import plt, save_png

from .report import write_json_and_markdown
from .run import PRESETS

logger = logging.getLogger("reproduction.seed_spread")
COLUMNS = (
    ("teacher", "top1"),
    ("stage1", "top1"),
    ("student", "top1"),
    ("teacher", "R@5"),
    ("stage1", "R@5"),
    ("student", "R@5"),
)
NAMES = {"teacher": "teacher", "stage1": "stage 1", "student": "stage 1+2"}


def run_seeds(seeds: list[int], output_dir: Path, preset: str, parallel: int, cache_default: bool) -> list[Path]:
    """One `altclip-reproduce` process per seed, at most `parallel` at once; returns the run folders in seed order."""
    output_dir.mkdir(parents=True, exist_ok=True)

    def run(seed: int) -> int:
        command = [sys.executable, "-m", "altclip.reproduction.run", "--preset", preset, "--seed", str(seed)]
        command += ["--threads", "1", "--output_dir", str(output_dir / f"seed-{seed}")]
        if not (cache_default and seed == seeds[0]):
            command.append("--no_cache_default")
        logger.info("seed %d started (%s)", seed, output_dir / f"seed-{seed}")
        started = time.time()
        with open(output_dir / f"seed-{seed}.log", "w", encoding="utf-8") as log:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
        logger.info("seed %d ended (exit %d) in %.0f s", seed, code, time.time() - started)
        return code

    with ThreadPoolExecutor(max_workers=parallel) as pool:  # threads only wait on their process
        codes = list(pool.map(run, seeds))
    for seed, code in zip(seeds, codes):
        if code != 0:
            raise AltCLIPError(
                f"seed_spread: the run of seed {seed} failed (exit {code}); its output is in "
                f"{output_dir / f'seed-{seed}.log'}."
            )
    return [output_dir / f"seed-{seed}" for seed in seeds]


def mean_non_english(rows: dict[str, dict[str, float]], metric: str) -> float:
    values = [row[metric] for language, row in rows.items() if language != "en"]
    return sum(values) / len(values)


def spread(reports: list[dict]) -> dict:
    """Per language and column (plus the non-English mean and stage 2's paired gain): mean, min, max over runs."""
    if not reports:
        raise ValueError("no run to summarise")
    languages = list(reports[0]["summary"]["student"])
    table: dict[str, dict[str, dict[str, float]]] = {}

    def add(row: str, column: str, values: list[float]) -> None:
        table.setdefault(row, {})[column] = {
            "mean": round(sum(values) / len(values), 2),
            "min": round(min(values), 2),
            "max": round(max(values), 2),
            "runs": [round(value, 2) for value in values],
        }

    for model, metric in COLUMNS:
        column = f"{model} {metric}"
        for language in languages:
            add(language, column, [report["summary"][model][language][metric] for report in reports])
        add("mean non-en", column, [mean_non_english(report["summary"][model], metric) for report in reports])
    for metric in ("top1", "R@5"):
        gains = [
            mean_non_english(report["summary"]["student"], metric)
            - mean_non_english(report["summary"]["stage1"], metric)
            for report in reports
        ]
        add("mean non-en", f"stage 2 gain {metric}", gains)
        add(
            "en",
            f"stage 2 gain {metric}",
            [r["summary"]["student"]["en"][metric] - r["summary"]["stage1"]["en"][metric] for r in reports],
        )
    return {"seeds": [report["seed"] for report in reports], "languages": languages, "table": table}


def markdown(result: dict) -> str:
    columns = [f"{model} {metric}" for model, metric in COLUMNS]
    header = [f"{NAMES[column.split()[0]]} {column.split()[1]}" for column in columns]
    lines = ["| language | " + " | ".join(header) + " |", "|---|" + "---:|" * len(columns)]
    for row in [*result["languages"], "mean non-en"]:
        cells = [
            f"{cell['mean']:.1f} ({cell['min']:.1f}–{cell['max']:.1f})"
            for cell in (result["table"][row][column] for column in columns)
        ]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    seeds = ", ".join(map(str, result["seeds"]))
    lines.append(f"\nMean (min–max) over {len(result['seeds'])} training seeds ({seeds}), in %.")
    for row in ("mean non-en", "en"):
        for metric in ("top1", "R@5"):
            gain = result["table"][row][f"stage 2 gain {metric}"]
            runs = ", ".join(f"{value:+.1f}" for value in gain["runs"])
            lines.append(f"Stage 2's gain in {metric}, {row}, per seed: {runs} (mean {gain['mean']:+.2f}).")
    return "\n".join(lines) + "\n"


def draw(result: dict, path: Path) -> None:
    """Per language: stage 1 and stage 1+2 top-1, the bar at the mean and a line over the seeds' range."""
    languages = result["languages"]
    figure, axis = plt.subplots(figsize=(12, 4), dpi=120)
    for offset, model in enumerate(("teacher", "stage1", "student")):
        cells = [result["table"][language][f"{model} top1"] for language in languages]
        xs = [i + (offset - 1) * 0.27 for i in range(len(languages))]
        means = [cell["mean"] for cell in cells]
        errors = [[m - c["min"] for m, c in zip(means, cells)], [c["max"] - m for m, c in zip(means, cells)]]
        axis.bar(xs, means, 0.27, yerr=errors, capsize=2, label=NAMES[model])
    axis.set_xticks(range(len(languages)), languages)
    axis.set_title(f"zero-shot top-1 on the held-out emoji (%), mean and range over seeds {result['seeds']}")
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    save_png(figure, path)


def read_results(path: Path) -> dict:
    """A finished run's results.json; a cut or foreign one is named (`InputDataError`), not a JSON traceback."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise InputDataError(
            f"{path} is not readable JSON ({error}); that run's results were cut. Run that seed again."
        ) from None
    if not isinstance(report, dict) or not {"seed", "timings_s"} <= report.keys():
        raise InputDataError(f"{path} is not an altclip-reproduce results.json (no seed, timings_s); run it again.")
    return report


def write_spread(folders: list[Path], output_dir: Path) -> dict:
    """Reads each run's results.json and writes spread.json, spread.md and spread.png into `output_dir`."""
    reports = []
    for folder in folders:
        path = folder / "results.json"
        if not path.is_file():
            raise InputDataError(f"seed_spread: {path} is missing; that run did not finish. Run it again.")
        reports.append(read_results(path))
    result = spread(reports)
    result["timings_s"] = {str(report["seed"]): report["timings_s"] for report in reports}
    result["markdown"] = markdown(result)
    write_json_and_markdown(output_dir, "spread", result, result["markdown"])
    draw(result, output_dir / "spread.png")
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=SEED, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full")
    parser.add_argument("--parallel", type=int_in_range(1), default=2, help="runs at once (each uses one thread)")
    parser.add_argument("--output_dir", type=Path, default=Path("outputs/seed_spread"))
    parser.add_argument("--no_cache_default", action="store_true")
    parser.add_argument("--summarise_only", action="store_true", help="only read finished runs' results.json")
    one_line_parser_errors(parser, "seed_spread")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    run_with_one_line_errors("seed_spread", lambda: spread_command(args))


def spread_command(args: argparse.Namespace) -> None:
    """Runs the seeds (or reads them with --summarise_only) and prints the spread table."""
    if len(set(args.seeds)) != len(args.seeds):
        raise UsageError(f"seed_spread: --seeds has repeats ({args.seeds}); give each seed once.")
    if args.summarise_only:
        folders = [args.output_dir / f"seed-{seed}" for seed in args.seeds]
    else:
        taken = [seed for seed in args.seeds if (args.output_dir / f"seed-{seed}").exists()]
        if taken:
            raise UsageError(
                f"seed_spread: {args.output_dir} already holds runs of seeds {taken}; choose a new --output_dir "
                "or add --summarise_only to summarise them."
            )
        folders = run_seeds(args.seeds, args.output_dir, args.preset, args.parallel, not args.no_cache_default)
    print(write_spread(folders, args.output_dir)["markdown"])


if __name__ == "__main__":
    main()
