"""The English CLIP teacher, trained from scratch on the training emoji (no pretrained CLIP is available offline).

A small ViT and text transformer learn from (augmented glyph, English name) pairs with the package's symmetric
InfoNCE loss; the result is a regular `CLIPModel` folder, the `--clip_model_name_or_path` of both stages.
"""

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm
from transformers import CLIPImageProcessorPil, CLIPModel, PreTrainedTokenizerFast, get_cosine_schedule_with_warmup

from altclip.training.loop.losses import ClipLoss
from altclip.training.loop.reporting import LOSS_CURVE_FILE, SUMMARY_FILE, save_loss_curve, save_summary
from altclip.training.toy_setup import english_word_tokenizer, write_tiny_clip

from .emoji_data import augmented

logger = logging.getLogger(__name__)


@dataclass
class TeacherSize:
    width: int = 128
    layers: int = 3
    image_size: int = 48
    projection_dim: int = 128
    steps: int = 1500
    batch_size: int = 128
    learning_rate: float = 1e-3


def train_teacher_clip(data_dir: str | Path, output_dir: str | Path, size: TeacherSize, seed: int = 0) -> Path:
    """Trains and saves the teacher; returns its folder (model, word-level tokenizer, image processor, loss curve)."""
    data_dir, output_dir = Path(data_dir), Path(output_dir)
    rows = [json.loads(line) for line in (data_dir / "teacher_train.jsonl").read_text(encoding="utf-8").splitlines()]
    names = [row["caption"] for row in rows]
    tokenizer = english_word_tokenizer(names)
    write_tiny_clip(
        output_dir,
        seed,
        size.width,
        tokenizer=tokenizer,
        vision_width=size.width,
        layers=size.layers,
        image_size=size.image_size,
        projection_dim=size.projection_dim,
    )
    model = CLIPModel.from_pretrained(output_dir).train()
    image_processor = CLIPImageProcessorPil.from_pretrained(output_dir)
    glyphs = [Image.open(data_dir / row["image"]).convert("RGBA") for row in rows]
    history = fit(model, tokenizer, image_processor, glyphs, names, size, seed)
    model.eval().save_pretrained(output_dir)
    save_loss_curve(history, output_dir / LOSS_CURVE_FILE, "English CLIP teacher on emoji")
    save_summary(
        {
            "stage": "teacher CLIP (from scratch)",
            "global_step": size.steps,
            "train_emoji": len(rows),
            "first_loss": history[0]["loss"],
            "last_loss": history[-1]["loss"],
        },
        output_dir / SUMMARY_FILE,
    )
    return output_dir


def fit(
    model: CLIPModel,
    tokenizer: PreTrainedTokenizerFast,
    image_processor,
    glyphs: list[Image.Image],
    names: list[str],
    size: TeacherSize,
    seed: int,
) -> list[dict]:
    """The training loop: each step a batch of distinct emoji, each seen in a fresh random view."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=size.learning_rate, weight_decay=0.1)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, size.steps // 20), size.steps)
    loss_fn, history, running = ClipLoss(gather_with_grad=False), [], []
    batch_size = min(size.batch_size, len(glyphs))
    for step in tqdm(range(1, size.steps + 1), desc="Teacher CLIP", unit="step"):
        chosen = rng.sample(range(len(glyphs)), batch_size)
        pixels = image_processor([augmented(glyphs[i], size.image_size, rng) for i in chosen], return_tensors="pt")
        tokens = tokenizer([names[i] for i in chosen], padding=True, return_tensors="pt")
        image_embeds = F.normalize(model.get_image_features(pixel_values=pixels["pixel_values"]).pooler_output, dim=-1)
        text_embeds = F.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
        loss = loss_fn(image_embeds, text_embeds, model.logit_scale.exp().clamp(max=100))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        running.append(loss.item())
        if step % 50 == 0 or step == size.steps:
            history.append({"step": step, "loss": sum(running) / len(running)})
            logger.info("teacher step %d loss %.3f", step, history[-1]["loss"])
            running = []
    return history
