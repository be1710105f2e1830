"""What text anchors (``--anchor_texts``) cost, measured side by side in one run:

    python benchmarks/text_anchors.py --lines 2000000 --world_size 64

1. Reading: the memory one rank keeps and peaks at while `read_anchor_texts` reads a file of ``--lines`` captions
   (a third of them repeats) for a world of ``--world_size`` ranks — its share only, the file streamed twice —
   against holding every distinct text (what each rank did before), the same file; both extrapolated to 50M lines.
2. The step: forward and backward of the text tower (ViT-B/32 + XLM-R base shape, random weights; the image tower
   frozen, its embeddings given) on 64 captions alone, with 16 anchors and with 64 anchors (the default: as many as
   the per-device batch), each the median of ``--repeats`` on this CPU; ratios to the captions alone.

Writes benchmarks/results/text_anchors.json.
"""

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from altclip.common.records import SkipCounter  # noqa: E402
from altclip.training.loop.text_anchors import iter_anchor_texts, read_anchor_texts  # noqa: E402
from benchmarks.common import median_seconds, model_pair, multilingual_sentences, peak_working_memory_mib  # noqa: E402

AT_SCALE = 50_000_000
RESULTS = Path(__file__).resolve().parent / "results" / "text_anchors.json"


def write_captions(path: Path, lines: int, seed: int = 0) -> Path:
    """`lines` captions, a third of them repeats of earlier ones."""
    rng = random.Random(seed)
    distinct = multilingual_sentences(max(1, lines * 2 // 3), seed=seed, max_parts=2)
    with path.open("w", encoding="utf-8") as handle:
        for index in range(lines):
            which = index if index < len(distinct) else rng.randrange(len(distinct))
            handle.write(f"{distinct[which]} #{which}\n")
    return path


def hold_all(path: Path) -> list[str]:
    """Every distinct text in memory (the reading before the streamed one)."""
    return list(dict.fromkeys(iter_anchor_texts([str(path)], "caption", SkipCounter())))


def reading(lines: int, world_size: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        path = write_captions(Path(folder) / "anchors.txt", lines)
        kept = {}

        def streamed() -> None:
            kept["streamed"] = read_anchor_texts([str(path)], "caption", 0, world_size)

        def whole() -> None:
            kept["whole"] = hold_all(path)

        began = time.perf_counter()
        peak_streamed = peak_working_memory_mib(streamed)
        seconds_streamed = time.perf_counter() - began
        began = time.perf_counter()
        peak_whole = peak_working_memory_mib(whole)
        seconds_whole = time.perf_counter() - began
        share, everything = kept["streamed"].share, kept["whole"]
        assert share == everything[0::world_size] and kept["streamed"].count == len(everything)
        kept_share = sum(sys.getsizeof(text) + 8 for text in share) / 2**20
        kept_whole = sum(sys.getsizeof(text) + 8 for text in everything) / 2**20
        size = path.stat().st_size / 2**20
    scale = AT_SCALE / lines
    return {
        "lines": lines,
        "distinct": len(everything),
        "file_mib": round(size, 1),
        "world_size": world_size,
        "streamed_share": {
            "peak_mib": round(peak_streamed, 1),
            "kept_mib": round(kept_share, 1),
            "seconds": round(seconds_streamed, 2),
        },
        "all_texts": {
            "peak_mib": round(peak_whole, 1),
            "kept_mib": round(kept_whole, 1),
            "seconds": round(seconds_whole, 2),
        },
        "at_50m_lines_gib": {
            "streamed_peak": round(peak_streamed * scale / 1024, 2),
            "streamed_kept": round(kept_share * scale / 1024, 2),
            "all_texts_peak": round(peak_whole * scale / 1024, 2),
            "all_texts_kept": round(kept_whole * scale / 1024, 2),
        },
    }


def step(repeats: int, batch: int = 64) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        _, model, processor = model_pair("vit-b-32_xlm-r-base", Path(folder))
    model.train()
    for parameter in [*model.vision_model.parameters(), *model.visual_projection.parameters()]:
        parameter.requires_grad_(False)
    texts = multilingual_sentences(batch * 2, seed=1, max_parts=1)
    images = F.normalize(torch.randn(batch, model.config.projection_dim), dim=-1)
    seconds = {}
    for anchors in (0, 16, batch):
        tokens = processor.tokenizer(texts[: batch + anchors], padding=True, truncation=True, max_length=77,
                                     return_tensors="pt")  # fmt: skip

        def train_step() -> None:
            out = model(**tokens, image_embeds=images)
            loss = out.logits_per_text[:batch].logsumexp(-1).mean() + out.text_embeds[batch:].sum() * 0.0
            loss.backward()
            model.zero_grad(set_to_none=True)

        seconds[anchors] = median_seconds(train_step, repeats)
    return {
        "shape": "vit-b-32_xlm-r-base (text tower trained, image tower frozen)",
        "captions": batch,
        "threads": torch.get_num_threads(),
        "seconds": {f"{anchors} anchors": round(value, 3) for anchors, value in seconds.items()},
        "ratio_to_captions_alone": {
            f"{anchors} anchors": round(value / seconds[0], 2) for anchors, value in seconds.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=2_000_000)
    parser.add_argument("--world_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    report = {"reading": reading(args.lines, args.world_size), "step": step(args.repeats)}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
