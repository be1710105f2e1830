"""Training throughput and peak memory of both stages at a small size on this machine, stage 1 with and without
the cached teacher features; each run is its own `altclip-train` process, so its peak memory is its own.
With --lora, rows at the ViT-B/32 + XLM-R-base shape: stage 2 with LoRA (r=16 on the text tower's attention and
MLP layers) against full fine-tuning of the text tower, side by side: trainable parameters, optimizer-state memory
(AdamW's moments, measured in the run), peak resident memory and samples/s.
With --scale, rows at the ViT-B/32 + XLM-R-base shape (random weights, real JPEG photos, multilingual captions):
stage 2 epoch-2 samples/s with and without --cache_image_features, the time per optimizer step of full-batch
negatives (GradCache) against plain gradient accumulation, and teacher-feature precompute sentences/s.

    python benchmarks/training_throughput.py [--steps 60] [--width 128] [--scale] [--lora]

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

from altclip.common.files import replace_atomically  # noqa: E402
from altclip.training.toy_setup import write_shapes_dataset, write_tiny_clip, write_tiny_xlmr  # noqa: E402

RESULTS_DIR = Path(__file__).parent / "results"
# altclip-train's main, reporting the process's own peak resident memory when it ends
# ... and the wall time of each epoch (EPOCH_SECONDS epoch seconds)
REPORTING_PEAK = (
    "import atexit, resource, time; atexit.register(lambda: print('PEAK_RSS_KIB', "
    "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)); import sys; from altclip.training.loop import trainers\n"
    "run_epoch = trainers.AltCLIPTrainer._run_epoch\n"
    "def timed(self, *args, **kwargs):\n"
    "    start = time.perf_counter(); result = run_epoch(self, *args, **kwargs)\n"
    "    print('EPOCH_SECONDS', kwargs['epoch'], time.perf_counter() - start, flush=True); return result\n"
    "trainers.AltCLIPTrainer._run_epoch = timed\n"
    "train = trainers.AltCLIPTrainer.train\n"
    "def reporting_train(self, *args, **kwargs):\n"
    "    result = train(self, *args, **kwargs); state = self.optimizer.state.values()\n"
    "    print('OPTIMIZER_STATE_BYTES', sum(t.numel() * t.element_size() for s in state for t in s.values() "
    "if hasattr(t, 'numel')), flush=True); return result\n"
    "trainers.AltCLIPTrainer.train = reporting_train\n"
    "from altclip.training.cli import main; main(sys.argv[1:])"
)


def run_stage(stage: str, output_dir: Path, steps: int | None, batch_size: int, flags: list[str]) -> dict:
    """Runs one stage in a child process; returns samples/s (from the Trainer's own runtime), each epoch's seconds
    and peak RSS. Without `steps`, `flags` say how long (e.g. --num_train_epochs)."""
    command = [
        sys.executable,
        "-c",
        REPORTING_PEAK,
        stage,
        "--output_dir",
        str(output_dir),
        *(["--max_steps", str(steps)] if steps else []),
        "--per_device_train_batch_size",
        str(batch_size),
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--logging_steps",
        str(steps or 1),
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
    epochs = [float(line.split()[2]) for line in output.splitlines() if line.startswith("EPOCH_SECONDS")]
    return {
        "samples_per_s": round(summary["global_step"] * batch_size / runtime, 1) if runtime else None,
        "seconds_per_step": round(runtime / summary["global_step"], 3) if runtime else None,
        "epoch_seconds": [round(seconds, 2) for seconds in epochs],
        "wall_s": round(time.perf_counter() - start, 1),
        "last_loss": summary["last_loss"],
        "peak_rss_mib": round(int(output.rsplit("PEAK_RSS_KIB", 1)[1].split()[0]) / 1024, 1),
        "optimizer_state_mib": round(int(output.rsplit("OPTIMIZER_STATE_BYTES", 1)[1].split()[0]) / 2**20, 1),
        "trainable_parameters": summary.get("trainable_parameters"),
    }


def scale_rows(folder: Path, pairs: int, batch_size: int, micro_batch: int, accumulation: int) -> dict:
    """The --scale rows (see the module docstring), ViT-B/32 + XLM-R-base, image tower frozen, fp32 on this CPU."""
    base = scale_data(folder, pairs)
    captions = [json.loads(line)["caption"] for line in (folder / "captions.jsonl").read_text().splitlines()]
    rows = {}
    two_epochs = [*base, "--num_train_epochs", "2"]
    rows["stage 2, epoch 2, image tower run"] = run_stage("contrastive", folder / "plain", None, batch_size, two_epochs)
    rows["stage 2, epoch 2, cached image features"] = run_stage(
        "contrastive", folder / "cached", None, batch_size, [*two_epochs, "--cache_image_features", "true"]
    )
    steps = 3
    accumulate = [*base, "--gradient_accumulation_steps", str(accumulation)]
    rows["stage 2, plain accumulation"] = run_stage(
        "contrastive", folder / "plain-acc", steps, micro_batch, [*accumulate, "--full_batch_negatives", "false"]
    )
    rows["stage 2, full-batch negatives (GradCache)"] = run_stage(
        "contrastive", folder / "gradcache", steps, micro_batch, accumulate
    )
    rows["teacher precompute (ViT-B/32 CLIP text tower)"] = precompute_row(folder, captions * 4)
    return rows


def scale_data(folder: Path, pairs: int) -> list[str]:
    """The ViT-B/32 + XLM-R-base checkpoint and a caption table of real photos; the flags that train on them."""
    from benchmarks.common import model_pair, multilingual_sentences, photo_files

    model_dir = folder / "vit-b-32_xlm-r-base"
    model_pair("vit-b-32_xlm-r-base", model_dir)
    photos = photo_files(folder / "photos", pairs)
    table = folder / "captions.jsonl"
    captions = multilingual_sentences(pairs, max_parts=1)  # caption-like: one sentence (LAION's are ~15 tokens)
    table.write_text("".join(json.dumps({"image": str(p), "caption": c}) + "\n" for p, c in zip(photos, captions)))
    return ["--model_name_or_path", str(model_dir), "--train_files", str(table), "--dataloader_num_workers", "0"]


LORA_ROWS = {
    "stage 2, full fine-tuning (text tower)": [],
    "stage 2, LoRA r=16 (text tower)": [
        "--lora_r",
        "16",
        "--lora_alpha",
        "32",
        "--lora_targets",
        "text",
        "--lora_trainable_tokens",
        "none",
    ],
}


def report_lora(args, extra: list[str]) -> None:
    """LoRA r=16 on the text tower against full fine-tuning at the ViT-B/32 + XLM-R-base shape, each in its own
    process on the same data and batch; prints the rows and their ratios, writes training_lora.json."""
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        base = [*scale_data(folder, args.pairs), *extra]
        rows = {
            name: run_stage("contrastive", folder / f"run-{index}", args.steps, args.batch_size, [*base, *flags])
            for index, (name, flags) in enumerate(LORA_ROWS.items())
        }
    full, lora = rows.values()
    for name, row in rows.items():
        print(
            f"{name:40s} trainable {row['trainable_parameters']:>12,}  "
            f"optimizer state {row['optimizer_state_mib']:8.1f} MiB  "
            f"peak RSS {row['peak_rss_mib']:8.1f} MiB  {row['samples_per_s']:6.1f} samples/s"
        )
    ratios = {
        "lora_trainable_fraction": round(lora["trainable_parameters"] / full["trainable_parameters"], 4),
        "lora_optimizer_state_fraction": round(lora["optimizer_state_mib"] / full["optimizer_state_mib"], 4),
        "lora_peak_rss_fraction": round(lora["peak_rss_mib"] / full["peak_rss_mib"], 3),
        "lora_samples_per_s_ratio": round(lora["samples_per_s"] / full["samples_per_s"], 2),
    }
    print(json.dumps(ratios))
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    result = {"shape": "vit-b-32_xlm-r-base", "steps": args.steps, "batch_size": args.batch_size, "rows": rows}
    text = json.dumps({**result, **ratios}, indent=2)
    replace_atomically(output / "training_lora.json", lambda p: p.write_text(text))


def precompute_row(folder: Path, texts: list[str]) -> dict:
    """Sentences/s of the stage-1 teacher precompute, one process, CLIP ViT-B/32's text tower shape."""
    from altclip.training.loop.teacher import load_teacher, precomputed_teacher_features
    from altclip.training.toy_setup import english_word_tokenizer

    clip = write_tiny_clip(folder / "clip-b32-text", text_width=512, vision_width=32, layers=12, projection_dim=512)
    teacher, tokenizer = load_teacher(str(clip)), english_word_tokenizer()
    start = time.perf_counter()
    precomputed_teacher_features(teacher, tokenizer, texts, folder / "teacher-cache", "bench", shard_rows=1024)
    seconds = time.perf_counter() - start
    return {"sentences": len(texts), "seconds": round(seconds, 2), "sentences_per_s": round(len(texts) / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--output_dir", default=str(RESULTS_DIR))
    parser.add_argument("--scale", action="store_true", help="Also the ViT-B/32 + XLM-R-base rows (slow).")
    parser.add_argument("--pairs", type=int, default=128, help="--scale: image-caption pairs (one epoch).")
    parser.add_argument("--lora", action="store_true", help="Only the LoRA vs full fine-tuning rows (slow).")
    args = parser.parse_args()
    extra = ["--bf16", "true"] if args.bf16 else []
    if args.lora:
        return report_lora(args, extra)
    if args.scale:
        return report_scale(args)
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


def report_scale(args) -> None:
    """Runs and prints the --scale rows with their ratios; writes training_scale.json and .png."""
    with tempfile.TemporaryDirectory() as folder:
        rows = scale_rows(Path(folder), args.pairs, batch_size=32, micro_batch=16, accumulation=4)
    plain, cached = rows["stage 2, epoch 2, image tower run"], rows["stage 2, epoch 2, cached image features"]
    epoch2 = {name: args.pairs / row["epoch_seconds"][1] for name, row in (("run", plain), ("cached", cached))}
    ratios = {
        "cached_image_features_epoch2_speedup": round(epoch2["cached"] / epoch2["run"], 2),
        "gradcache_over_plain_accumulation_time": round(
            rows["stage 2, full-batch negatives (GradCache)"]["seconds_per_step"]
            / rows["stage 2, plain accumulation"]["seconds_per_step"],
            2,
        ),
    }
    print(f"stage 2 epoch 2: {epoch2['run']:.1f} samples/s with the tower, {epoch2['cached']:.1f} cached")
    for name in ("stage 2, plain accumulation", "stage 2, full-batch negatives (GradCache)"):
        print(f"{name:42s} {rows[name]['seconds_per_step']:8.2f} s per optimizer step (4 x 16 pairs)")
    precompute = rows["teacher precompute (ViT-B/32 CLIP text tower)"]
    print(f"teacher precompute: {precompute['sentences_per_s']:.1f} sentences/s, one process")
    print(json.dumps(ratios))
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    result = {"shape": "vit-b-32_xlm-r-base", "pairs": args.pairs, "rows": rows, **ratios}
    replace_atomically(output / "training_scale.json", lambda p: p.write_text(json.dumps(result, indent=2)))
    draw_scale(epoch2, rows, output / "training_scale.png")


def draw_scale(epoch2: dict, rows: dict, path: Path) -> None:
    from altclip.common.plots import plt, save_png

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=120)
    left.bar(["image tower run", "cached image features"], [epoch2["run"], epoch2["cached"]], color=["#999", "#2a7"])
    left.set_ylabel("samples/s")
    left.set_title("Stage 2, epoch 2 (ViT-B/32 + XLM-R-base, CPU)")
    names = ["stage 2, plain accumulation", "stage 2, full-batch negatives (GradCache)"]
    right.bar(["plain (16 negatives)", "GradCache (64 negatives)"], [rows[n]["seconds_per_step"] for n in names])
    right.set_ylabel("seconds per optimizer step")
    right.set_title("4 micro-batches of 16")
    figure.tight_layout()
    save_png(figure, path)


if __name__ == "__main__":
    main()
