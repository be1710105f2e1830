"""Embedding throughput and memory: this package against transformers' AltCLIPModel, side by side in one process,
same random weights, same inputs; medians over repeats, printed as ratios (ours / reference).

    python benchmarks/embedding_throughput.py                        # ViT-B/32 + XLM-R-base
    python benchmarks/embedding_throughput.py --shape vit-l-14_xlm-r-large --images 16 --texts 64 --repeats 2

The reference pipeline is what a transformers user writes: decode each file with PIL, run the processor on the
batch, `get_image_features`; texts in their given order, each batch padded to its longest. Ours is the package's
`evaluation.Embedder`: JPEGs decoded at reduced DCT scale, Linear layers on oneDNN's kernel, the last image layer
for [CLS] only, texts sorted by length so each batch pads little; optionally int8 dynamic quantisation, and the
same checkpoint exported with altclip-export-onnx under ONNX Runtime (cosines to the reference reported). Peak
memory is measured for each pipeline in a fresh process (memory_probe.py).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from altclip.common.embedding import Embedder  # noqa: E402
from altclip.common.files import replace_atomically  # noqa: E402
from altclip.common.plots import plt, save_png  # noqa: E402
from benchmarks.common import (  # noqa: E402
    SHAPES,
    median_seconds,
    model_pair,
    multilingual_sentences,
    photo_files,
    reference_images,
    reference_texts,
)

RESULTS_DIR = Path(__file__).parent / "results"


def cosine_stats(a: torch.Tensor, b: torch.Tensor) -> dict:
    cosines = (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1)
    return {
        "min": round(cosines.min().item(), 5),
        "mean": round(cosines.mean().item(), 5),
        "below_0.9999": int((cosines < 0.9999).sum()),
        "worst_input": int(cosines.argmin()),
    }


def probe_memory(model_dir: Path, pipeline: str, inputs: str, photos_dir: Path, texts: int, batch_size: int) -> dict:
    """`memory_probe.py` for one pipeline and input kind, in a fresh process."""
    command = [sys.executable, str(Path(__file__).with_name("memory_probe.py")), "--model_dir", str(model_dir)]
    command += ["--pipeline", pipeline, "--inputs", inputs, "--photos_dir", str(photos_dir), "--texts", str(texts)]
    command += ["--batch_size", str(batch_size)]
    # glibc's mmap threshold fixed for both pipelines: left dynamic, it makes the number depend on what the
    # process happened to allocate and free before (tens of MiB either way between identical runs)
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    done = subprocess.run(command, capture_output=True, text=True, env=environment)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe {pipeline} {inputs} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def onnx_encoders(model_dir: Path, folder: Path, batch_size: int):
    """Our checkpoint exported with altclip-export-onnx (parity-checked) under ONNX Runtime; None without onnx."""
    try:
        from altclip.evaluation.onnx_export import OnnxEncoders, export_onnx

        report = export_onnx(model_dir, folder)
    except ImportError as error:
        print(f"ONNX rows left out: {error}", flush=True)
        return None, {}
    return OnnxEncoders(folder, threads=torch.get_num_threads(), batch_size=batch_size), report


def measure(shape: str, images: int, texts: int, batch_size: int, repeats: int, compile_model: bool) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        model_dir, photos_dir = Path(folder) / "model", Path(folder) / "photos"
        reference, plain, processor = model_pair(shape, model_dir)
        files = photo_files(photos_dir, images)
        sentences = multilingual_sentences(texts)
        rows, checks = [], {}

        def embedder(**kwargs) -> Embedder:
            # `plain` itself stays as loaded: the oneDNN swap and int8 quantisation both work on a copy of its
            # modules. No DataLoader worker: on a 2-core machine it would only compete with the model's threads.
            return Embedder(
                plain,
                processor,
                device="cpu",
                dtype="float32",
                batch_size=batch_size,
                num_workers=0,
                reduced_decoding=True,  # the measured fast path (altclip-eval's opt-in --reduced_decoding true)
                **kwargs,
            )

        fast, int8 = embedder(), embedder(quantization="int8")
        onnx, onnx_parity = onnx_encoders(model_dir, Path(folder) / "onnx", batch_size)

        def row(name, unit, count, reference_run, ours_run):
            ref_s, ours_s = median_seconds(reference_run, repeats), median_seconds(ours_run, repeats)
            rows.append(
                {
                    "measure": name,
                    "unit": unit,
                    "reference": round(count / ref_s, 2),
                    "ours": round(count / ours_s, 2),
                    "ratio": round(ref_s / ours_s, 2),
                }
            )
            print(
                f"{name:58s} reference {count / ref_s:8.2f} {unit}   ours {count / ours_s:8.2f} {unit}   "
                f"ratio {ref_s / ours_s:5.2f}x",
                flush=True,
            )

        def reference_image_run():
            return reference_images(reference, processor, files, batch_size)

        def reference_text_run():
            return reference_texts(reference, processor, sentences, batch_size)

        row(
            "image embedding, files -> embeddings, fp32",
            "images/s",
            images,
            reference_image_run,
            lambda: fast.images(files),
        )
        pixels = processor(images=[Image.open(files[0]).convert("RGB")] * batch_size, return_tensors="pt")[
            "pixel_values"
        ]
        with torch.no_grad():
            reference_model_run = lambda: reference.get_image_features(pixel_values=pixels)  # noqa: E731
            model_only = {
                "model only, fp32, nn.Linear (same kernels)": lambda: plain.get_image_features(pixel_values=pixels),
                "model only, fp32, oneDNN Linear": lambda: fast.model.get_image_features(pixel_values=pixels),
                "model only, fp32, oneDNN + [CLS]-only last layer": lambda: fast.image_features(pixels),
                "model only, int8": lambda: int8.image_features(pixels),
            }
            if onnx is not None:
                model_only["model only, ONNX Runtime fp32"] = lambda: onnx.image_embeds(pixels.numpy())
            for name, run in model_only.items():
                row(f"image embedding, {name}", "images/s", batch_size, reference_model_run, run)
            if compile_model:
                compiled = torch.compile(fast.model.vision_model)
                row(
                    "image tower, model only, torch.compile",
                    "images/s",
                    batch_size,
                    lambda: reference.vision_model(pixel_values=pixels),
                    lambda: compiled(pixel_values=pixels),
                )
        row(
            "image embedding, files -> embeddings, int8",
            "images/s",
            images,
            reference_image_run,
            lambda: int8.images(files),
        )
        row("text embedding, mixed lengths, fp32", "texts/s", texts, reference_text_run, lambda: fast.texts(sentences))
        row("text embedding, mixed lengths, int8", "texts/s", texts, reference_text_run, lambda: int8.texts(sentences))
        if onnx is not None:
            row(
                "text embedding, mixed lengths, ONNX Runtime fp32",
                "texts/s",
                texts,
                reference_text_run,
                lambda: onnx.texts(sentences),
            )

        reference_image_embeddings, reference_text_embeddings = reference_image_run(), reference_text_run()
        candidates = {
            "ours fp32 images": fast.images(files)[0],
            "ours int8 images": int8.images(files)[0],
            "ours fp32 texts": fast.texts(sentences),
            "ours int8 texts": int8.texts(sentences),
        }
        if onnx is not None:
            candidates["ONNX Runtime texts"] = torch.from_numpy(onnx.texts(sentences))
        for name, embeddings in candidates.items():
            wanted = reference_image_embeddings if name.endswith("images") else reference_text_embeddings
            checks[f"{name}: cosine to reference"] = cosine_stats(embeddings, wanted)

        memory = {}
        for inputs in ("images", "texts"):
            for pipeline in ("reference", "ours"):
                memory[f"{inputs}: {pipeline}"] = probe_memory(
                    model_dir, pipeline, inputs, photos_dir, texts, batch_size
                )
                print(f"memory, {inputs}, {pipeline:9s} {memory[f'{inputs}: {pipeline}']}", flush=True)
        for key, value in checks.items():
            print(f"{key:44s} min {value['min']:.5f} mean {value['mean']:.5f}", flush=True)
    return {
        "shape": shape,
        "images": images,
        "texts": texts,
        "batch_size": batch_size,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": cpu_name(),
        "rows": rows,
        "cosines": checks,
        "onnx_parity": onnx_parity,
        "memory_mib": memory,
    }


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def draw(result: dict, path: Path) -> None:
    figure, axis = plt.subplots(figsize=(10, 0.8 + 0.45 * len(result["rows"])), dpi=120)
    names = [row["measure"] for row in result["rows"]][::-1]
    ratios = [row["ratio"] for row in result["rows"]][::-1]
    axis.barh(names, ratios, color=["tab:green" if r >= 1 else "tab:red" for r in ratios])
    axis.axvline(1.0, color="black", linewidth=1)
    axis.set_xlim(0, max(ratios) * 1.15)  # room for the labels
    for y, ratio in enumerate(ratios):
        axis.text(ratio, y, f" {ratio:.2f}x", va="center", fontsize=8)
    axis.set_xlabel("throughput, ours / transformers' AltCLIPModel")
    axis.set_title(f"{result['shape']}, CPU, {result['threads']} threads")
    figure.tight_layout()
    save_png(figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="vit-b-32_xlm-r-base")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the image tower")
    parser.add_argument("--output_dir", default=str(RESULTS_DIR))
    args = parser.parse_args()
    result = measure(args.shape, args.images, args.texts, args.batch_size, args.repeats, args.compile)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    replace_atomically(
        output / f"embedding_{args.shape}.json",
        lambda p: p.write_text(json.dumps(result, indent=2, ensure_ascii=False)),
    )
    draw(result, output / f"embedding_{args.shape}.png")
    print(f"Wrote {output}/embedding_{args.shape}.json and .png")


if __name__ == "__main__":
    main()
