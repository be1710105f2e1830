"""Embedding throughput and memory: this package against transformers' AltCLIPModel, side by side in one process,
same random weights, same inputs; medians over repeats, printed as ratios (ours / reference).

    python benchmarks/embedding_throughput.py                        # ViT-B/32 + XLM-R-base
    python benchmarks/embedding_throughput.py --shape vit-l-14_xlm-r-large --images 16 --texts 64 --repeats 2

The reference pipeline is what a transformers user writes: decode each file with PIL, run the processor on the
batch, `get_image_features`; texts in their given order, each batch padded to its longest. Ours is the package's
`evaluation.Embedder`: JPEGs decoded at reduced DCT scale in a DataLoader worker while the model runs, texts
sorted by length so each batch pads little; optionally int8 dynamic quantisation (its cosine to fp32 reported).
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    SHAPES,
    median_seconds,
    model_pair,
    multilingual_sentences,
    paired_peak_memory_mib,
    photo_files,
)
from evaluation.encode import Embedder  # noqa: E402
from training.reporting import plt, replace_atomically  # noqa: E402

RESULTS_DIR = Path(__file__).parent / "results"


@torch.no_grad()
def reference_images(model, processor, files, batch_size):
    out = []
    for start in range(0, len(files), batch_size):
        images = [Image.open(path).convert("RGB") for path in files[start : start + batch_size]]
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        out.append(F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1))
    return torch.cat(out)


@torch.no_grad()
def reference_texts(model, processor, texts, batch_size):
    out = []
    for start in range(0, len(texts), batch_size):
        tokens = processor.tokenizer(
            texts[start : start + batch_size], padding=True, truncation=True, max_length=77, return_tensors="pt"
        )
        out.append(F.normalize(model.get_text_features(**tokens).pooler_output, dim=-1))
    return torch.cat(out)


def cosine_stats(a: torch.Tensor, b: torch.Tensor) -> dict:
    cosines = (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1)
    return {"min": round(cosines.min().item(), 5), "mean": round(cosines.mean().item(), 5)}


def measure(shape: str, images: int, texts: int, batch_size: int, repeats: int, compile_model: bool) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        reference, ours, processor = model_pair(shape, Path(folder) / "model")
        files = photo_files(Path(folder) / "photos", images)
        sentences = multilingual_sentences(texts)
        rows, checks = [], {}

        def embedder(**kwargs) -> Embedder:
            # no DataLoader worker: on a 2-core machine it would only compete with the model's threads
            return Embedder(
                ours, processor, device="cpu", dtype="float32", batch_size=batch_size, num_workers=0, **kwargs
            )

        fast, int8 = embedder(), embedder(quantization="int8")

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
                f"{name:52s} reference {count / ref_s:8.2f} {unit}   ours {count / ours_s:8.2f} {unit}   "
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
            row(
                "image embedding, model only, fp32",
                "images/s",
                batch_size,
                reference_model_run,
                lambda: ours.get_image_features(pixel_values=pixels),
            )
            row(
                "image embedding, model only, [CLS]-only last layer",
                "images/s",
                batch_size,
                reference_model_run,
                lambda: fast.image_features(pixels),
            )
            row(
                "image embedding, model only, int8",
                "images/s",
                batch_size,
                reference_model_run,
                lambda: int8.image_features(pixels),
            )
            if compile_model:
                compiled = torch.compile(ours.vision_model)
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

        reference_image_embeddings, reference_text_embeddings = reference_image_run(), reference_text_run()
        checks["ours fp32 images: cosine to reference"] = cosine_stats(
            fast.images(files)[0], reference_image_embeddings
        )
        checks["ours int8 images: cosine to reference"] = cosine_stats(
            int8.images(files)[0], reference_image_embeddings
        )
        checks["ours fp32 texts: cosine to reference"] = cosine_stats(fast.texts(sentences), reference_text_embeddings)
        checks["ours int8 texts: cosine to reference"] = cosine_stats(int8.texts(sentences), reference_text_embeddings)

        memory = {}
        memory["images: reference"], memory["images: ours fp32"] = paired_peak_memory_mib(
            reference_image_run, lambda: fast.images(files)
        )
        memory["texts: reference"], memory["texts: ours fp32"] = paired_peak_memory_mib(
            reference_text_run, lambda: fast.texts(sentences)
        )
        for key, value in memory.items():
            print(f"peak working memory, {key:20s} {value:8.1f} MiB", flush=True)
        for key, value in checks.items():
            print(f"{key:40s} min {value['min']:.5f} mean {value['mean']:.5f}", flush=True)
    return {
        "shape": shape,
        "images": images,
        "texts": texts,
        "batch_size": batch_size,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "rows": rows,
        "cosines": checks,
        "peak_working_memory_mib": memory,
    }


def draw(result: dict, path: Path) -> None:
    figure, axis = plt.subplots(figsize=(8, 0.5 + 0.45 * len(result["rows"])), dpi=120)
    names = [row["measure"] for row in result["rows"]][::-1]
    ratios = [row["ratio"] for row in result["rows"]][::-1]
    axis.barh(names, ratios, color=["tab:green" if r >= 1 else "tab:red" for r in ratios])
    axis.axvline(1.0, color="black", linewidth=1)
    for y, ratio in enumerate(ratios):
        axis.text(ratio, y, f" {ratio:.2f}x", va="center", fontsize=8)
    axis.set_xlabel("throughput, ours / transformers' AltCLIPModel")
    axis.set_title(f"{result['shape']}, CPU, {result['threads']} threads")
    figure.tight_layout()
    replace_atomically(path, lambda partial: figure.savefig(partial, format="png"))
    plt.close(figure)


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
