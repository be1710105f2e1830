"""One command that proves both stages and inference on a CUDA machine: numerics, inference speed against
transformers' AltCLIPModel, training speed, peak memory and MFU, the largest batch, and the real CLI with the
shipped large-scale configs. Prints a table and writes ``gpu_check.json`` and ``gpu_check.png``.

    python benchmarks/gpu_check.py                   # on a GPU: both shapes, every check
    python benchmarks/gpu_check.py --smoke           # tiny shapes on whatever device, under 2 minutes (CI runs it)
    python benchmarks/gpu_check.py --peak_tflops 989 # when the device is not in PEAK_BF16_TFLOPS

All models have random weights at the real shapes (nothing is downloaded); speed does not depend on the values.
"""

import argparse
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import transformers  # noqa: E402
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel  # noqa: E402

from altclip.common.constants import CLIP_CONTEXT_LENGTH  # noqa: E402
from altclip.common.files import replace_atomically  # noqa: E402
from altclip.common.plots import plt, save_png  # noqa: E402
from altclip.training.loop.losses import ClipLoss, distillation_loss  # noqa: E402
from altclip.training.loop.teacher import load_teacher  # noqa: E402
from altclip.training.toy_setup import english_word_tokenizer, write_shapes_dataset, write_tiny_xlmr  # noqa: E402
from benchmarks.common import SHAPES, reference_config, vision_config  # noqa: E402
from modeling_altclip import AltCLIPModel  # noqa: E402
from modeling_altclip.assets import load_xlmr_tokenizer  # noqa: E402

RESULTS_DIR = Path(__file__).parent / "results"
# Dense bf16 tensor-core peaks from the vendors' data sheets (TFLOP/s, no sparsity), matched on the device name.
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
    "RTX 4090": 165.0,
}
SMOKE_SHAPE = "tiny"
SHAPES[SMOKE_SHAPE] = dict(
    width=32,
    layers=2,
    heads=2,
    patch=32,
    projection_dim=16,
    vision_width=32,
    vision_layers=2,
    vision_heads=2,
    project_dim=32,
)
RELEASED_SHAPE = "vit-l-14_xlm-r-large"
TEXT_TOKENS = 32  # a caption or parallel sentence after XLM-R tokenization (LAION captions: ~15-25)
TEACHER_TOKENS = 32
# The teacher's CLIP text tower at each shape (ViT-B/32 CLIP: 512 wide; ViT-L/14 CLIP: 768; both 12 layers)
TEACHER_TEXT = {
    "tiny": dict(width=32, layers=2, heads=2),
    "vit-b-32_xlm-r-base": dict(width=768, layers=12, heads=12),
    "vit-l-14_xlm-r-large": dict(width=768, layers=12, heads=12),
}


# ---------------------------------------------------------------- FLOPs (model FLOPs: no recompute counted)


def encoder_forward_flops(tokens: int, width: int, layers: int) -> float:
    """One pre-/post-LN transformer encoder over `tokens` tokens: per layer 2·n·12·h² for the QKV, output and MLP
    (4h) matrices, plus 2·2·n²·h for the attention scores and their weighted sum."""
    return layers * (24.0 * tokens * width**2 + 4.0 * tokens**2 * width)


def vision_tokens(shape: str) -> int:
    return (224 // SHAPES[shape]["patch"]) ** 2 + 1


def stage_flops_per_sample(shape: str, stage: str) -> float:
    """Training FLOPs of one sample: a trained tower counts 3x its forward (forward + backward for activations and
    weights), a frozen one 1x."""
    s = SHAPES[shape]
    student = encoder_forward_flops(TEXT_TOKENS, s["width"], s["layers"]) + 2.0 * s["width"] * s["project_dim"]
    if stage == "teacher":
        teacher = TEACHER_TEXT[shape]
        return 3 * student + encoder_forward_flops(TEACHER_TOKENS, teacher["width"], teacher["layers"])
    image = encoder_forward_flops(vision_tokens(shape), s["vision_width"], s["vision_layers"])
    return 3 * (student + 2.0 * s["project_dim"] * s["projection_dim"]) + image


def peak_tflops(device: torch.device, given: float | None) -> tuple[float | None, str]:
    if given:
        return given, "--peak_tflops"
    if device.type != "cuda":
        return None, "no bf16 peak for a CPU"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value, f"table entry {key!r}"
    return None, f"{name} not in PEAK_BF16_TFLOPS; pass --peak_tflops"


# ---------------------------------------------------------------- models and inputs


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write_models(shape: str, folder: Path) -> dict[str, Path]:
    """Random-weight checkpoints at `shape`: transformers' AltCLIP (also loaded as ours), the CLIP teacher (its
    text tower at TEACHER_TEXT, vision as the shape) and the XLM-R encoder, each with its tokenizer/processor."""
    from modeling_altclip import AltCLIPProcessor

    s, teacher = SHAPES[shape], TEACHER_TEXT[shape]
    torch.manual_seed(0)
    altclip = folder / "altclip"
    transformers.AltCLIPModel(reference_config(shape)).save_pretrained(altclip)
    AltCLIPProcessor(image_processor=CLIPImageProcessorPil(), tokenizer=load_xlmr_tokenizer()).save_pretrained(altclip)
    tokenizer = english_word_tokenizer()
    clip_config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=teacher["width"],
            num_hidden_layers=teacher["layers"],
            num_attention_heads=teacher["heads"],
            intermediate_size=4 * teacher["width"],
            max_position_embeddings=CLIP_CONTEXT_LENGTH,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        vision_config=vision_config(shape),
        projection_dim=s["projection_dim"],
    )
    clip = folder / "clip"
    CLIPModel(clip_config).save_pretrained(clip)
    tokenizer.save_pretrained(clip)
    CLIPImageProcessorPil().save_pretrained(clip)
    xlmr = write_tiny_xlmr(folder / "xlmr", width=s["width"], layers=s["layers"])
    # write_tiny_xlmr's MLP is 2x wide and 4 heads; the real XLM-R is 4x and width/64 heads
    config = transformers.AutoConfig.from_pretrained(xlmr)
    config.intermediate_size, config.num_attention_heads = 4 * s["width"], s["heads"]
    transformers.XLMRobertaModel(config).save_pretrained(xlmr)
    return {"altclip": altclip, "clip": clip, "xlmr": xlmr}


def text_batch(batch_size: int, tokens: int, device: torch.device, vocab: int = 250002) -> dict:
    """Token ids with realistic padding: lengths spread over [tokens/4, tokens]."""
    generator = torch.Generator().manual_seed(batch_size)
    ids = torch.randint(5, vocab, (batch_size, tokens), generator=generator)
    lengths = torch.randint(max(tokens // 4, 2), tokens + 1, (batch_size,), generator=generator)
    mask = (torch.arange(tokens)[None, :] < lengths[:, None]).long()
    ids = ids.masked_fill(mask == 0, 1)
    ids[:, 0] = 0
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def pixel_batch(batch_size: int, device: torch.device) -> torch.Tensor:
    return torch.randn(batch_size, 3, 224, 224, generator=torch.Generator().manual_seed(1)).to(device)


# ---------------------------------------------------------------- 1. numerics


@torch.no_grad()
def embeddings(model, pixels, text, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    image = model.get_image_features(pixel_values=pixels.to(dtype)).pooler_output
    words = model.get_text_features(**text).pooler_output
    return F.normalize(image.float(), dim=-1), F.normalize(words.float(), dim=-1)


def numerics(folder: Path, device: torch.device, batch: int) -> dict:
    """bf16/fp16 against fp32 (min cosine over rows), attention kernels against SDPA, zero-shot top-1 agreement."""
    pixels, text = pixel_batch(batch, device), text_batch(batch, TEXT_TOKENS, device)
    reference = AltCLIPModel.from_pretrained(folder, dtype=torch.float32).to(device).eval()
    ref_image, ref_text = embeddings(reference, pixels, text, torch.float32)
    del reference
    rows = {}

    def compare(name: str, dtype: torch.dtype, attention: str) -> None:
        try:
            model = AltCLIPModel.from_pretrained(folder, dtype=dtype, attn_implementation=attention).to(device).eval()
            image, words = embeddings(model, pixels, text, dtype)
        except (ImportError, ValueError, RuntimeError) as error:  # e.g. a kernel the device does not have
            rows[name] = {"skipped": f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"}
            return
        agree = ((image @ words.t()).argmax(1) == (ref_image @ ref_text.t()).argmax(1)).float().mean()
        rows[name] = {
            "image_min_cosine": round(F.cosine_similarity(image, ref_image).min().item(), 5),
            "text_min_cosine": round(F.cosine_similarity(words, ref_text).min().item(), 5),
            "zero_shot_top1_agreement": round(agree.item(), 4),
        }

    half = (torch.bfloat16, torch.float16) if device.type == "cuda" else (torch.bfloat16,)
    for dtype in half:
        compare(f"sdpa {str(dtype).split('.')[-1]}", dtype, "sdpa")
    compare("eager float32", torch.float32, "eager")
    if device.type == "cuda" and importlib.util.find_spec("flash_attn"):
        compare("flash_attention_2 bfloat16", torch.bfloat16, "flash_attention_2")
    else:
        rows["flash_attention_2 bfloat16"] = {"skipped": "flash_attn not installed or no CUDA device"}
    return rows


# ---------------------------------------------------------------- 2. inference throughput


def timed(run, device: torch.device, repeats: int) -> float:
    """Median seconds of `run` after one warm-up call."""
    run()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def inference(folder: Path, device: torch.device, dtype: torch.dtype, batch: int, repeats: int) -> dict:
    """Images/s and texts/s of ours and of transformers' AltCLIPModel on the same weights, same inputs."""
    pixels, text = pixel_batch(batch, device).to(dtype), text_batch(batch, TEXT_TOKENS, device)
    rows = {}
    for name, cls in (("ours", AltCLIPModel), ("transformers", transformers.AltCLIPModel)):
        model = cls.from_pretrained(folder, dtype=dtype).to(device).eval()
        with torch.no_grad():
            image_s = timed(lambda: model.get_image_features(pixel_values=pixels), device, repeats)
            text_s = timed(lambda: model.get_text_features(**text), device, repeats)
        rows[name] = {"images_per_s": round(batch / image_s, 1), "texts_per_s": round(batch / text_s, 1)}
        model = None
    rows["speedup"] = {
        key: round(rows["ours"][key] / rows["transformers"][key], 3) for key in ("images_per_s", "texts_per_s")
    }
    return rows


# ---------------------------------------------------------------- 3. training


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def training_step_function(stage: str, model: AltCLIPModel, teacher, device, dtype, batch: int, compile_: bool):
    """One optimizer step of the stage's loss (training.losses, as the trainers use it) on a fixed batch; the image
    tower frozen in stage 2, the teacher frozen in stage 1."""
    model.vision_model.requires_grad_(False)
    model.visual_projection.requires_grad_(False)
    trainable = model.text_model if stage == "teacher" else model
    parameters = [p for p in trainable.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-5, fused=device.type == "cuda")
    text = text_batch(batch, TEXT_TOKENS, device)
    text_tower = torch.compile(model.text_model) if compile_ else model.text_model
    clip_loss = ClipLoss()
    if stage == "teacher":
        teacher_ids = text_batch(batch, TEACHER_TOKENS, device, vocab=teacher.config.vocab_size)

        def loss() -> torch.Tensor:
            with torch.no_grad():
                target = teacher(**teacher_ids).pooler_output
            return distillation_loss(text_tower(**text).pooler_output.float(), target.float())

    else:
        pixels = pixel_batch(batch, device)

        def loss() -> torch.Tensor:
            with torch.no_grad():
                image = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
            words = F.normalize(model.text_projection(text_tower(**text).pooler_output), dim=-1)
            return clip_loss(image.float(), words.float(), model.logit_scale.clamp(0, 4.6052).exp())

    def step() -> None:
        with autocast(device, dtype):
            value = loss()
        value.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def train_row(folder: Path, models: dict, shape: str, stage: str, device, dtype, batch, steps, ckpt, compile_, peak):
    model = AltCLIPModel.from_pretrained(models["altclip"], dtype=torch.float32).to(device).train()
    teacher = None
    if stage == "teacher":
        teacher = load_teacher(str(models["clip"]), dtype=dtype).text_model.to(device)
    if ckpt:
        model.text_model.activation_checkpointing_enable()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step = training_step_function(stage, model, teacher, device, dtype, batch, compile_)
    for _ in range(2):  # warm-up (and compilation)
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    seconds = (time.perf_counter() - start) / steps
    samples_per_s = batch / seconds
    flops = stage_flops_per_sample(shape, stage) * samples_per_s
    row = {
        "batch": batch,
        "steps_per_s": round(1 / seconds, 3),
        "samples_per_s": round(samples_per_s, 1),
        "model_tflops": float(f"{flops / 1e12:.4g}"),
        "mfu": round(flops / (peak * 1e12), 4) if peak else None,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
    }
    del model, teacher, step
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def largest_batch(models: dict, device: torch.device, dtype: torch.dtype, limit: int) -> dict:
    """The largest stage-2 per-device batch (gradient checkpointing on) whose step fits: doubling, then halving
    the gap. On a CPU it stops at `limit`."""

    def fits(batch: int) -> bool:
        try:
            model = AltCLIPModel.from_pretrained(models["altclip"], dtype=torch.float32).to(device).train()
            model.text_model.activation_checkpointing_enable()
            step = training_step_function("contrastive", model, None, device, dtype, batch, False)
            step()
            synchronize(device)
            return True
        except torch.OutOfMemoryError:
            return False
        finally:
            model = step = None
            if device.type == "cuda":
                torch.cuda.empty_cache()

    low, high = 0, 16
    while high <= limit and fits(high):
        low, high = high, high * 2
    if high > limit:
        return {"largest_batch": low, "stopped_at_limit": limit}
    while high - low > max(low // 16, 1):
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return {"largest_batch": low, "stopped_at_limit": None}


# ---------------------------------------------------------------- 4. the real CLI with the shipped configs


def run_cli(stage: str, config: str, flags: list[str], output_dir: Path, smoke: bool) -> dict:
    """torchrun (1 process) -m altclip.training.cli STAGE --config CONFIG FLAGS; samples/s from the Trainer."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
    command += ["-m", "altclip.training.cli", stage, "--config", str(REPO / "training" / "configs" / config), *flags]
    command += ["--output_dir", str(output_dir), "--report_to", "none", "--disable_tqdm", "true", "--seed", "0"]
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1" if smoke else os.environ.get("OMP_NUM_THREADS", "4"),
    }
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    row = {"config": config, "returncode": result.returncode, "wall_s": round(time.perf_counter() - start, 1)}
    if result.returncode:
        row["error"] = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1][:300]
        return row
    summary = json.loads((output_dir / "training_summary.json").read_text())
    row.update({key: summary[key] for key in ("global_step", "first_loss", "last_loss", "skipped_records")})
    runtime = [part for part in result.stdout.split("{") if "'train_samples_per_second'" in part]
    if runtime:
        row["train_samples_per_second"] = float(
            runtime[-1].split("'train_samples_per_second': ")[1].split(",")[0].strip("'")
        )
    return row


def scaled_matryoshka_dims(model_dir: Path, shipped: tuple[int, ...] = (192, 384), shipped_width: int = 768) -> list:
    """The stage-2 configs' Matryoshka widths (of ViT-L/14's 768) as the same fractions of a smaller model's
    projection width; nothing to change at 768 (or when stage 1 failed and wrote no model)."""
    config = model_dir / "config.json"
    width = json.loads(config.read_text())["projection_dim"] if config.is_file() else shipped_width
    if width == shipped_width:
        return []
    return ["--matryoshka_dims", ",".join(str(dim * width // shipped_width) for dim in shipped)]


def cli_rows(folder: Path, models: dict, device: torch.device, steps: int, batch: int, smoke: bool) -> dict:
    """Stage 1 then stage 2 (on stage 1's output) with the shipped ViT-L/14 configs, data and models swapped for
    local ones and the run shortened; DeepSpeed (ZeRO-2 in the configs, and a ZeRO-3 row) when installed, and the
    FSDP2 config, on CUDA only; a LoRA row (stage 2, DDP) and an altclip-index build with the stage-1 model."""
    data = write_shapes_dataset(folder / "data", images_per_class=max(2, batch // 9 + 1))
    common = ["--max_steps", str(steps), "--per_device_train_batch_size", str(batch), "--logging_steps", "1"]
    common += ["--save_strategy", "no", "--dataloader_num_workers", "0" if smoke else "4", "--warmup_steps", "0"]
    common += ["--train_file_weights", "1", "--data_cache_dir", str(folder / "arrow-cache")]
    has_deepspeed = importlib.util.find_spec("deepspeed") is not None and device.type == "cuda"
    without_deepspeed = [] if has_deepspeed else ["--deepspeed", ""]
    if device.type != "cuda":
        common += ["--bf16", "false"]  # the configs ask for bf16 mixed precision, a GPU feature
    rows = {}
    stage1 = folder / "cli-teacher"
    rows["teacher, teacher_vit-l-14_xlm-r-large.yaml"] = run_cli(
        "teacher",
        "teacher_vit-l-14_xlm-r-large.yaml",
        [
            *common,
            *without_deepspeed,
            "--clip_model_name_or_path",
            str(models["clip"]),
            "--text_encoder_name_or_path",
            str(models["xlmr"]),
            "--train_files",
            str(data["parallel"]),
        ],
        stage1,
        smoke,
    )
    stage2_flags = ["--model_name_or_path", str(stage1), "--train_files", str(data["captions"])]
    stage2_flags += scaled_matryoshka_dims(stage1)
    rows["contrastive, contrastive_vit-l-14_xlm-r-large.yaml"] = run_cli(
        "contrastive",
        "contrastive_vit-l-14_xlm-r-large.yaml",
        [*common, *without_deepspeed, *stage2_flags],
        folder / "cli-contrastive",
        smoke,
    )
    if device.type == "cuda":
        rows["contrastive, contrastive_vit-l-14_xlm-r-large_fsdp.yaml"] = run_cli(
            "contrastive",
            "contrastive_vit-l-14_xlm-r-large_fsdp.yaml",
            [*common, *stage2_flags],
            folder / "cli-fsdp",
            smoke,
        )
    if has_deepspeed:  # ZeRO-3 on a GPU (CPU processes: tests/training/test_backends.py)
        zero3 = ["--deepspeed", str(REPO / "training" / "configs" / "deepspeed_zero3.json")]
        rows["contrastive, contrastive_vit-l-14_xlm-r-large.yaml, deepspeed_zero3.json"] = run_cli(
            "contrastive",
            "contrastive_vit-l-14_xlm-r-large.yaml",
            [*common, *stage2_flags, *zero3],
            folder / "cli-zero3",
            smoke,
        )
    # LoRA (r=16, text tower) on the same stage-2 config: DeepSpeed off (LoRA runs with DDP; see test_lora.py)
    rows["contrastive, contrastive_vit-l-14_xlm-r-large.yaml, LoRA r=16"] = run_cli(
        "contrastive",
        "contrastive_vit-l-14_xlm-r-large.yaml",
        [*common, "--deepspeed", "", *stage2_flags, "--lora_r", "16", "--lora_alpha", "32"],
        folder / "cli-lora",
        smoke,
    )
    rows["index build (altclip-index) over the images"] = run_index_build(
        stage1, data["captions"], folder / "index", device, batch, smoke
    )
    rows["deepspeed"] = (
        "ZeRO-2 config in use, ZeRO-3 row added" if has_deepspeed else "not installed (or no CUDA): runs without it"
    )
    return rows


def run_index_build(model: Path, table: Path, output: Path, device: torch.device, batch: int, smoke: bool) -> dict:
    """``altclip-index build`` (1 process) of the shapes images with the stage-1 model; images/s from the manifest's
    count over the wall time."""
    command = [sys.executable, "-m", "altclip.search.cli", "build", "--model", str(model), "--images", str(table)]
    command += ["--output", str(output), "--batch_size", str(batch), "--device", device.type, "--num_workers", "0"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1" if smoke else "4"}
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    row = {"returncode": result.returncode, "wall_s": round(wall, 1)}
    if result.returncode:
        row["error"] = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-1][:300]
        return row
    manifest = json.loads((output / "manifest.json").read_text())
    count = manifest["counts"]["images"]
    row.update({"images": count, "dim": manifest["dim"], "index": manifest["index"]})
    row["images_per_second"] = round(count / wall, 1)
    return row


# ---------------------------------------------------------------- report


def run(args) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16
    shapes = [SMOKE_SHAPE] if args.smoke else args.shapes
    peak, peak_source = peak_tflops(device, args.peak_tflops)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "smoke": args.smoke,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peak_bf16_tflops": peak,
        "peak_source": peak_source,
        "shapes": {},
    }
    small = args.smoke or device.type != "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        for shape in shapes:
            folder = Path(tmp) / shape
            models = write_models(shape, folder)
            print(f"[{shape}] numerics", flush=True)
            row = {"numerics": numerics(models["altclip"], device, 8 if small else 64)}
            print(f"[{shape}] inference", flush=True)
            row["inference_bf16"] = inference(models["altclip"], device, dtype, 8 if small else 256, 5 if small else 10)
            row["training_bf16"] = {}
            for stage in ("teacher", "contrastive"):
                for ckpt in (False, True):
                    for compile_ in (False, True):
                        name = f"{stage}{', checkpointing' if ckpt else ''}{', compile' if compile_ else ''}"
                        if compile_ and (small and not args.compile):
                            row["training_bf16"][name] = {"skipped": "torch.compile only on a GPU or with --compile"}
                            continue
                        print(f"[{shape}] training: {name}", flush=True)
                        batch = args.batch or (8 if small else 128)
                        steps = 2 if small else args.steps
                        row["training_bf16"][name] = train_row(
                            folder, models, shape, stage, device, dtype, batch, steps, ckpt, compile_, peak
                        )
            if shape in (RELEASED_SHAPE, SMOKE_SHAPE):
                print(f"[{shape}] largest batch", flush=True)
                row["largest_contrastive_batch"] = largest_batch(models, device, dtype, 32 if small else 8192)
                print(f"[{shape}] the CLI with the shipped configs", flush=True)
                row["cli"] = cli_rows(folder, models, device, 2 if small else 30, 4 if small else 32, small)
            result["shapes"][shape] = row
    return result


def print_table(result: dict) -> None:
    print(f"\n{result['device']}  (bf16 peak: {result['peak_bf16_tflops']} TFLOP/s, {result['peak_source']})")
    for shape, row in result["shapes"].items():
        print(f"\n== {shape}")
        for name, numbers in row["numerics"].items():
            print(f"  numerics {name:28s} {numbers}")
        inference = row["inference_bf16"]
        for name in ("ours", "transformers"):
            speed = inference[name]
            print(f"  inference {name:13s} {speed['images_per_s']:10.1f} images/s {speed['texts_per_s']:10.1f} texts/s")
        print(f"  inference speedup      {inference['speedup']}")
        for name, numbers in row["training_bf16"].items():
            if "skipped" in numbers:
                print(f"  train {name:36s} skipped: {numbers['skipped']}")
                continue
            mfu = f"{100 * numbers['mfu']:.1f}% MFU" if numbers["mfu"] is not None else "MFU n/a"
            memory = f"{numbers['peak_memory_gib']} GiB" if numbers["peak_memory_gib"] is not None else ""
            print(f"  train {name:36s} {numbers['samples_per_s']:9.1f} samples/s  {mfu:12s} {memory}")
        if "largest_contrastive_batch" in row:
            print(f"  largest stage-2 batch  {row['largest_contrastive_batch']}")
            for name, numbers in row["cli"].items():
                print(f"  cli {name}: {numbers}")


def draw(result: dict, path: Path) -> None:
    shapes = list(result["shapes"])
    figure, axes = plt.subplots(1, 2, figsize=(12, 4), dpi=120)
    for offset, shape in enumerate(shapes):
        training = {k: v for k, v in result["shapes"][shape]["training_bf16"].items() if "samples_per_s" in v}
        values = [v["mfu"] * 100 if v["mfu"] is not None else v["samples_per_s"] for v in training.values()]
        positions = [i + offset * 0.4 for i in range(len(training))]
        axes[0].bar(positions, values, width=0.4, label=shape)
        axes[0].set_xticks(range(len(training)), list(training), rotation=30, ha="right", fontsize=7)
        inference = result["shapes"][shape]["inference_bf16"]["speedup"]
        axes[1].bar([offset * 2, offset * 2 + 0.8], list(inference.values()), width=0.8, label=shape)
    axes[0].set_ylabel("MFU %" if result["peak_bf16_tflops"] else "samples/s")
    axes[0].set_title(f"Training, bf16 ({result['device']})")
    axes[0].legend(fontsize=7)
    axes[1].axhline(1.0, color="#888", linewidth=0.8)
    axes[1].set_ylabel("ours / transformers")
    axes[1].set_title("Inference speedup (images/s, texts/s)")
    axes[1].legend(fontsize=7)
    figure.tight_layout()
    save_png(figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="Tiny shapes; minutes on a CPU.")
    parser.add_argument("--shapes", nargs="+", default=["vit-b-32_xlm-r-base", RELEASED_SHAPE], choices=list(SHAPES))
    parser.add_argument("--peak_tflops", type=float, default=None, help="The device's dense bf16 peak.")
    parser.add_argument("--batch", type=int, default=None, help="Training batch of the speed rows.")
    parser.add_argument("--steps", type=int, default=10, help="Timed training steps per row.")
    parser.add_argument("--compile", action="store_true", help="Also the torch.compile rows off a GPU.")
    parser.add_argument("--output_dir", default=str(RESULTS_DIR))
    args = parser.parse_args()
    started = time.perf_counter()
    result = run(args)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print_table(result)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    name = "gpu_check_smoke" if args.smoke else "gpu_check"
    replace_atomically(output / f"{name}.json", lambda p: p.write_text(json.dumps(result, indent=2)))
    draw(result, output / f"{name}.png")
    print(f"Wrote {output / name}.json and .png in {result['seconds']} s")


if __name__ == "__main__":
    main()
