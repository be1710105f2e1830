"""Fails loudly when the package's default CPU path is slower than transformers' AltCLIPModel on this machine.

    python benchmarks/default_path_check.py                                   # ViT-B/32 + XLM-R-base
    python benchmarks/default_path_check.py --images 16 --texts 64 --repeats 5 --remeasure_kernel

What is timed is what altclip-eval, altclip-index and the demo run when no speed flag is given: `common.Embedder`
with its defaults on the CPU in fp32 (the Linear kernel chosen by measurement on this machine, full-size JPEG
decoding, the [CLS]-only last image layer, length-sorted texts), against the pipeline a transformers user writes,
in one process on the same weights and inputs. The runs of each row alternate (reference, ours, ours, reference, ...)
so that load elsewhere on a shared machine falls on both; medians and the spread of each side are printed. Exit
status 1, under a banner, when a row's median ratio (ours / reference throughput) is below 1 - --tolerance.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from altclip.common.embedding import Embedder  # noqa: E402
from altclip.common.fast_paths import cpu_model_name  # noqa: E402
from altclip.common.files import replace_atomically  # noqa: E402
from benchmarks.common import (  # noqa: E402
    SHAPES,
    model_pair,
    multilingual_sentences,
    photo_files,
    reference_images,
    reference_texts,
)

RESULTS_DIR = Path(__file__).parent / "results"


def alternating_times(reference: Callable[[], object], ours: Callable[[], object], repeats: int) -> dict:
    """Seconds of each run, the two sides alternating (ABBA...) after one warm-up of each."""
    reference(), ours()
    times = {"reference": [], "ours": []}
    for repeat in range(repeats):
        for side in ("reference", "ours") if repeat % 2 == 0 else ("ours", "reference"):
            start = time.perf_counter()
            (reference if side == "reference" else ours)()
            times[side].append(time.perf_counter() - start)
    return times


def row(measure: str, count: int, unit: str, times: dict) -> dict:
    medians = {side: statistics.median(values) for side, values in times.items()}
    return {
        "measure": measure,
        "unit": unit,
        "reference": round(count / medians["reference"], 2),
        "ours": round(count / medians["ours"], 2),
        "ratio": round(medians["reference"] / medians["ours"], 3),
        # the spread: throughput of the slowest and the fastest run of each side
        "reference_range": [round(count / max(times["reference"]), 2), round(count / min(times["reference"]), 2)],
        "ours_range": [round(count / max(times["ours"]), 2), round(count / min(times["ours"]), 2)],
    }


def slower_rows(rows: list[dict], tolerance: float) -> list[dict]:
    """The rows where the default path lost to the reference by more than `tolerance`."""
    return [entry for entry in rows if entry["ratio"] < 1.0 - tolerance]


def measure(shape: str, images: int, texts: int, batch_size: int, repeats: int, remeasure_kernel: bool) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        reference, plain, processor = model_pair(shape, Path(folder) / "model")
        files = photo_files(Path(folder) / "photos", images)
        sentences = multilingual_sentences(texts)
        kept_cache = os.environ.get("ALTCLIP_CACHE")
        if remeasure_kernel:  # an empty cache folder: the kernel choice is measured now
            os.environ["ALTCLIP_CACHE"] = folder
        try:
            ours = Embedder(plain, processor, device="cpu", dtype="float32", batch_size=batch_size)
        finally:
            if kept_cache is None:
                os.environ.pop("ALTCLIP_CACHE", None)
            else:
                os.environ["ALTCLIP_CACHE"] = kept_cache
        pixels = processor(images=[Image.open(files[0]).convert("RGB")] * batch_size, return_tensors="pt")
        pixels = pixels["pixel_values"]
        with torch.no_grad():
            runs = {
                ("image embedding, files -> embeddings, fp32", images, "images/s"): (
                    lambda: reference_images(reference, processor, files, batch_size),
                    lambda: ours.images(files),
                ),
                ("image embedding, model only, fp32", batch_size, "images/s"): (
                    lambda: reference.get_image_features(pixel_values=pixels),
                    lambda: ours.image_features(pixels),
                ),
                ("text embedding, mixed lengths, fp32", texts, "texts/s"): (
                    lambda: reference_texts(reference, processor, sentences, batch_size),
                    lambda: ours.texts(sentences),
                ),
            }
            rows = []
            for (name, count, unit), (reference_run, ours_run) in runs.items():
                rows.append(row(name, count, unit, alternating_times(reference_run, ours_run, repeats)))
                entry = rows[-1]
                print(
                    f"{name:44s} reference {entry['reference']:8.2f} {unit} {entry['reference_range']}   "
                    f"ours {entry['ours']:8.2f} {unit} {entry['ours_range']}   ratio {entry['ratio']:.3f}x",
                    flush=True,
                )
    choice = ours.linear_kernel
    return {
        "shape": shape,
        "images": images,
        "texts": texts,
        "batch_size": batch_size,
        "repeats": repeats,
        "cpu": cpu_model_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "linear_kernel": {"kernel": choice.kernel, "reason": choice.reason, "layer_seconds": choice.seconds},
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="vit-b-32_xlm-r-base")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--texts", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--tolerance", type=float, default=0.0, help="a median ratio below 1 - this fails (default 0: any loss)"
    )
    parser.add_argument(
        "--remeasure_kernel",
        action="store_true",
        help="choose the Linear kernel by a measurement now, not the one kept in the cache folder",
    )
    parser.add_argument("--output_dir", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    result = measure(args.shape, args.images, args.texts, args.batch_size, args.repeats, args.remeasure_kernel)
    kernel = result["linear_kernel"]
    print(f"CPU: {result['cpu']}, {result['threads']} threads; Linear kernel: {kernel['kernel']} ({kernel['reason']})")
    slower = slower_rows(result["rows"], args.tolerance)
    result["tolerance"], result["default_slower"] = args.tolerance, [entry["measure"] for entry in slower]
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    path = output / f"default_path_{args.shape}.json"
    replace_atomically(path, lambda partial: partial.write_text(json.dumps(result, indent=2, ensure_ascii=False)))
    print(f"Wrote {path}")
    if slower:
        banner = "!" * 100
        print(f"\n{banner}\nDEFAULT PATH SLOWER THAN transformers' AltCLIPModel ON {result['cpu']}:", file=sys.stderr)
        for entry in slower:
            print(f"  {entry['measure']}: {entry['ratio']:.3f}x (tolerance {args.tolerance})", file=sys.stderr)
        print(banner, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
