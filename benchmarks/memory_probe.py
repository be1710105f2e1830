"""Peak memory of one embedding pipeline alone in a fresh process, so that nothing measured before it shapes the
heap it runs on. `embedding_throughput.py` runs it once per pipeline and input kind:

    python benchmarks/memory_probe.py --model_dir DIR --pipeline ours --inputs texts --texts 256

Prints one JSON line: the working memory (how far resident memory rises during a pass over the inputs; median of
three passes after a warm-up pass) and the process's peak resident memory (weights included).
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from altclip.common.embedding import Embedder  # noqa: E402
from benchmarks.common import (  # noqa: E402
    multilingual_sentences,
    peak_working_memory_mib,
    process_peak_rss_mib,
    reference_images,
    reference_texts,
)
from modeling_altclip import AltCLIPProcessor  # noqa: E402


def pipeline_run(pipeline: str, inputs: str, model_dir: Path, photos: list[Path], texts: list[str], batch_size: int):
    """The pass to measure: transformers' AltCLIPModel as its users write it, or this package's Embedder."""
    if pipeline == "reference":
        model = transformers.AltCLIPModel.from_pretrained(model_dir).eval()
        processor = AltCLIPProcessor.from_pretrained(model_dir)
        if inputs == "images":
            return lambda: reference_images(model, processor, photos, batch_size)
        return lambda: reference_texts(model, processor, texts, batch_size)
    # the Embedder loads its own processor: a second one would be memory that only this probe holds
    embedder = Embedder.from_pretrained(
        model_dir, device="cpu", dtype="float32", batch_size=batch_size, num_workers=0, reduced_decoding=True
    )
    return (lambda: embedder.images(photos)) if inputs == "images" else (lambda: embedder.texts(texts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", type=Path, required=True)
    parser.add_argument("--pipeline", choices=("reference", "ours"), required=True)
    parser.add_argument("--inputs", choices=("images", "texts"), required=True)
    parser.add_argument("--photos_dir", type=Path, help="folder of the JPEG photos (inputs=images)")
    parser.add_argument("--texts", type=int, default=256, help="how many multilingual sentences (inputs=texts)")
    parser.add_argument("--batch_size", type=int, default=32)
    args = parser.parse_args()
    photos = sorted(args.photos_dir.glob("*.jpg")) if args.photos_dir else []
    texts = multilingual_sentences(args.texts) if args.inputs == "texts" else []
    run = pipeline_run(args.pipeline, args.inputs, args.model_dir, photos, texts, args.batch_size)
    with torch.no_grad():
        run()  # warm-up: kernels, caches and pools that every later pass reuses
        working = [peak_working_memory_mib(run) for _ in range(3)]
    print(
        json.dumps(
            {"working_mib": round(statistics.median(working), 1), "peak_rss_mib": round(process_peak_rss_mib(), 1)}
        )
    )


if __name__ == "__main__":
    main()
