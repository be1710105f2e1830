"""The frozen CLIP text teacher of stage 1, and its features cached on disk for reuse across epochs."""

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import CLIPTextModel
from transformers.utils import logging as transformers_logging

logger = logging.getLogger(__name__)

# Weights of a full CLIPModel checkpoint that its text tower does not use.
CLIP_IMAGE_SIDE = ("vision_model.", "visual_projection.", "text_projection.", "logit_scale")


class FrozenTextTeacher(torch.nn.Module):
    """CLIP's text encoder without gradients and always in eval mode, whatever the Trainer calls on it.

    Its feature is CLIP's pooled [EOS] state after the final LayerNorm, before ``text_projection``: the space that
    AltCLIP's ``transformation`` maps into.
    """

    def __init__(self, text_model: CLIPTextModel):
        super().__init__()
        self.text_model = text_model.requires_grad_(False).eval()

    @property
    def width(self) -> int:
        return self.text_model.config.hidden_size

    def train(self, mode: bool = True) -> "FrozenTextTeacher":
        return super().train(False)

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output


def load_teacher(clip_name_or_path: str, dtype: torch.dtype = torch.float32, **kwargs) -> FrozenTextTeacher:
    """The text tower of a CLIP checkpoint (a full CLIPModel or a CLIPTextModel) as a frozen teacher.

    A full CLIP's image-side weights are expected leftovers; any missing or mis-shaped text weight is an error.
    """
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # the load report would list every unused vision weight
    try:
        text_model, info = CLIPTextModel.from_pretrained(
            clip_name_or_path, dtype=dtype, output_loading_info=True, **kwargs
        )
    finally:
        transformers_logging.set_verbosity(verbosity)
    problems = sorted(info["missing_keys"]) + [str(key[0]) for key in info["mismatched_keys"]]
    unexpected = [key for key in info["unexpected_keys"] if not key.startswith(CLIP_IMAGE_SIDE)]
    if problems or unexpected:
        raise ValueError(
            f"{clip_name_or_path} is not a usable CLIP text tower: missing or mis-shaped {problems}, "
            f"unexpected {sorted(unexpected)}."
        )
    return FrozenTextTeacher(text_model)


def _fingerprint(teacher: FrozenTextTeacher, texts: Sequence[str], max_length: int) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(teacher.text_model.config.to_dict(), sort_keys=True, default=str).encode())
    digest.update(str(teacher.text_model.config._name_or_path).encode())
    digest.update(str(max_length).encode())
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    return digest.hexdigest()[:20]


def cached_teacher_features(
    teacher: FrozenTextTeacher,
    tokenizer,
    texts: Sequence[str],
    cache_dir: str | os.PathLike,
    batch_size: int = 256,
    max_length: int = 77,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Teacher features of `texts` as a read-only [len(texts), width] memory-mapped array.

    Computed once and written atomically to ``cache_dir/teacher-<fingerprint>.npy``; the fingerprint covers the
    teacher's config and path and every text, so a changed corpus or teacher never reuses stale features.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"teacher-{_fingerprint(teacher, texts, max_length)}.npy"
    if path.is_file():
        logger.info("Reusing teacher features from %s", path)
        return np.load(path, mmap_mode="r")
    partial = path.with_suffix(f".{os.getpid()}.partial")
    features = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=(len(texts), teacher.width))
    teacher = teacher.to(device)
    for start in tqdm(range(0, len(texts), batch_size), desc="Teacher features", unit="batch"):
        batch = tokenizer(
            list(texts[start : start + batch_size]),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        ).to(device)
        features[start : start + len(batch["input_ids"])] = teacher(**batch).float().cpu().numpy()
    features.flush()
    del features
    os.replace(partial, path)
    logger.info("Wrote teacher features of %d texts to %s", len(texts), path)
    return np.load(path, mmap_mode="r")
