"""Shared pieces of the benchmarks: model shapes, the same random weights in ours and transformers' AltCLIPModel,
real inputs (photos as JPEG files, multilingual sentences of mixed length), timing and peak-memory probes."""

import ctypes
import gc
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from PIL import Image
from transformers import CLIPImageProcessorPil

from modeling_altclip import AltCLIPModel, AltCLIPProcessor
from modeling_altclip.assets import load_xlmr_tokenizer

SHAPES = {
    "vit-b-32_xlm-r-base": dict(
        width=768,
        layers=12,
        heads=12,
        patch=32,
        projection_dim=512,
        vision_width=768,
        vision_layers=12,
        vision_heads=12,
        project_dim=768,
    ),
    "vit-l-14_xlm-r-large": dict(
        width=1024,
        layers=24,
        heads=16,
        patch=14,
        projection_dim=768,
        vision_width=1024,
        vision_layers=24,
        vision_heads=16,
        project_dim=768,
    ),
    # for smoke runs of the scripts (their tests): a tiny model, XLM-R's real vocabulary
    "tiny": dict(
        width=64,
        layers=2,
        heads=2,
        patch=32,
        projection_dim=32,
        vision_width=64,
        vision_layers=2,
        vision_heads=2,
        project_dim=64,
    ),
}


def reference_config(shape: str) -> transformers.AltCLIPConfig:
    s = SHAPES[shape]
    return transformers.AltCLIPConfig(
        text_config=dict(
            vocab_size=250002,
            hidden_size=s["width"],
            num_hidden_layers=s["layers"],
            num_attention_heads=s["heads"],
            intermediate_size=4 * s["width"],
            project_dim=s["project_dim"],
            max_position_embeddings=514,
            type_vocab_size=1,
            pad_token_id=1,
            layer_norm_eps=1e-5,
        ),
        vision_config=vision_config(shape),
        projection_dim=s["projection_dim"],
    )


def vision_config(shape: str) -> dict:
    """The ViT of `shape` at 224 px (CLIP's and AltCLIP's vision config share these fields)."""
    s = SHAPES[shape]
    return dict(
        hidden_size=s["vision_width"],
        num_hidden_layers=s["vision_layers"],
        num_attention_heads=s["vision_heads"],
        intermediate_size=4 * s["vision_width"],
        image_size=224,
        patch_size=s["patch"],
    )


def model_pair(shape: str, folder: Path, seed: int = 0) -> tuple[torch.nn.Module, AltCLIPModel, AltCLIPProcessor]:
    """transformers' AltCLIPModel with random weights, and ours loaded from its saved checkpoint (same weights)."""
    torch.manual_seed(seed)
    reference = transformers.AltCLIPModel(reference_config(shape)).eval()
    reference.save_pretrained(folder)
    ours = AltCLIPModel.from_pretrained(folder).eval()
    AltCLIPProcessor(image_processor=CLIPImageProcessorPil(), tokenizer=load_xlmr_tokenizer()).save_pretrained(folder)
    # every pipeline (here, in the memory probes, in the ONNX folder) uses the processor as loaded from the folder:
    # transformers 5 rebuilds XLM-R's normaliser on loading, which splits some rare inputs differently from the
    # tokenizer built straight from tokenizer.json (e.g. a trailing U+200E mark)
    processor = AltCLIPProcessor.from_pretrained(folder)
    return reference, ours, processor


def photo_files(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` JPEG photos of COCO/Flickr-like sizes (500-800 px), cut from scikit-image's bundled photos."""
    from skimage import data

    sources = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.stereo_motorcycle()[0]]
    rng, folder = random.Random(seed), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        image = Image.fromarray(sources[index % len(sources)])
        width = rng.choice((500, 640, 800))
        height = int(width * rng.choice((0.75, 0.66, 1.0)))
        image = image.resize((width, height), Image.Resampling.BICUBIC)
        paths.append(folder / f"photo_{index:04d}.jpg")
        image.save(paths[-1], quality=90)
    return paths


def multilingual_sentences(count: int, seed: int = 0, max_parts: int = 8) -> list[str]:
    """Real sentences of mixed length in many languages: clip-benchmark's NLLB-translated prompts filled with
    Babel-ImageNet class names, alone (short) or run together by two to `max_parts` (long), shuffled."""
    from altclip.evaluation.prompts import BABEL_FILE, NLLB_FILE, prompts_dir, read_published_json

    folder = prompts_dir()
    babel = read_published_json(folder / BABEL_FILE)
    templates = read_published_json(folder / NLLB_FILE)
    languages = sorted(set(babel) & set(templates))
    rng = random.Random(seed)

    def sentence() -> str:
        code = rng.choice(languages)
        return " ".join(rng.choice(templates[code]).replace("{}", rng.choice(babel[code][1])).split())

    texts = []
    for _ in range(count):
        parts = 1 if rng.random() < 0.5 or max_parts < 2 else rng.randint(2, max_parts)
        texts.append(" ".join(sentence() for _ in range(parts)))
    return texts


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    """Median wall time of `repeats` calls after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def reference_images(model, processor, files, batch_size):
    """What a transformers user writes: PIL-decode each file, the processor on the batch, `get_image_features`."""
    out = []
    for start in range(0, len(files), batch_size):
        images = [Image.open(path).convert("RGB") for path in files[start : start + batch_size]]
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        out.append(F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1))
    return torch.cat(out)


@torch.no_grad()
def reference_texts(model, processor, texts, batch_size):
    """Texts in their given order, each batch padded to its longest."""
    out = []
    for start in range(0, len(texts), batch_size):
        tokens = processor.tokenizer(
            texts[start : start + batch_size], padding=True, truncation=True, max_length=77, return_tensors="pt"
        )
        out.append(F.normalize(model.get_text_features(**tokens).pooler_output, dim=-1))
    return torch.cat(out)


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_working_memory_mib(run: Callable[[], object]) -> float:
    """How far the process's resident memory rises above its level before `run` (Linux: freed heap is handed back
    with malloc_trim, the peak counter reset through /proc/self/clear_refs, then read from VmHWM)."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    before = _rss_kib("VmRSS")
    run()
    return (_rss_kib("VmHWM") - before) / 1024


def process_peak_rss_mib() -> float:
    """The process's peak resident memory so far (weights included)."""
    return _rss_kib("VmHWM") / 1024
