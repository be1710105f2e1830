"""Training throughput and peak memory of both stages at a small size on this machine, stage 1 with and without
the cached teacher features; each run is its own `altclip-train` process, so its peak memory is its own.

    python benchmarks/training_throughput.py [--steps 60] [--width 128]

On a GPU add `--bf16` (passed to the Trainer); the device tool's numbers are in benchmarks/README.md.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.reporting import replace_atomically  # noqa: E402
from training.toy_setup import write_shapes_dataset, write_tiny_clip, write_tiny_xlmr  # noqa: E402

RESULTS_DIR = Path(__file__).parent / "results"
# altclip-train's main, reporting the process's own peak resident memory when it ends
REPORTING_PEAK = (
    "import atexit, resource; atexit.register(lambda: print('PEAK_RSS_KIB', "
    "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)); import sys; from training.cli import main; "
    "main(sys.argv[1:])"
)


def run_stage(stage: str, output_dir: Path, steps: int, batch_size: int, flags: list[str]) -> dict:
    """Runs one stage in a child process; returns samples/s (from the Trainer's own runtime) and peak RSS."""
    command = [
        sys.executable,
        "-c",
        REPORTING_PEAK,
        stage,
        "--output_dir",
        str(output_dir),
        "--max_steps",
        str(steps),
        "--per_device_train_batch_size",
        str(batch_size),
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--logging_steps",
        str(steps),
        "--disable_tqdm",
        "true",
        *flags,
    ]
    start = time.perf_counter()
    child = subprocess.Popen(
        command,
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )
    output = child.communicate()[0]
    if child.returncode:
        raise SystemExit(f"{stage} failed:\n{output[-3000:]}")
    runtime = next((float(part.split("'")[3]) for part in output.split("{") if "'train_runtime'" in part), None)
    summary = json.loads((output_dir / "training_summary.json").read_text())
    return {
        "samples_per_s": round(steps * batch_size / runtime, 1) if runtime else None,
        "wall_s": round(time.perf_counter() - start, 1),
        "last_loss": summary["last_loss"],
        "peak_rss_mib": round(int(output.rsplit("PEAK_RSS_KIB", 1)[1].split()[0]) / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--output_dir", default=str(RESULTS_DIR))
    args = parser.parse_args()
    extra = ["--bf16", "true"] if args.bf16 else []
    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        data = write_shapes_dataset(folder / "data", images_per_class=8)
        clip = write_tiny_clip(folder / "clip", text_width=args.width, vision_width=args.width, layers=4)
        xlmr = write_tiny_xlmr(folder / "xlmr", width=args.width, layers=4)
        base = [
            "--clip_model_name_or_path",
            str(clip),
            "--text_encoder_name_or_path",
            str(xlmr),
            "--train_files",
            str(data["parallel"]),
            *extra,
        ]
        rows["stage 1, teacher run every step"] = run_stage("teacher", folder / "s1", args.steps, args.batch_size, base)
        rows["stage 1, cached teacher features"] = run_stage(
            "teacher", folder / "s1c", args.steps, args.batch_size, [*base, "--precompute_teacher_features", "true"]
        )
        rows["stage 2, contrastive, image tower frozen"] = run_stage(
            "contrastive",
            folder / "s2",
            args.steps,
            args.batch_size,
            ["--model_name_or_path", str(folder / "s1"), "--train_files", str(data["captions"]), *extra],
        )
    for name, row in rows.items():
        print(f"{name:42s} {row['samples_per_s']:8.1f} samples/s   peak RSS {row['peak_rss_mib']:8.1f} MiB")
    speedup = (
        rows["stage 1, cached teacher features"]["samples_per_s"]
        / rows["stage 1, teacher run every step"]["samples_per_s"]
    )
    print(f"cached teacher features: {speedup:.2f}x stage-1 throughput")
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    result = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "width": args.width,
        "bf16": args.bf16,
        "rows": rows,
        "cached_teacher_speedup": round(speedup, 2),
    }
    replace_atomically(output / "training.json", lambda p: p.write_text(json.dumps(result, indent=2)))


if __name__ == "__main__":
    main()
