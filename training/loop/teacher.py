"""The frozen text teacher of stage 1 (CLIP's, or the model's own for ``--teacher self``), and its features
precomputed once by all ranks for reuse."""

import copy
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

from altclip.common.constants import CLIP_CONTEXT_LENGTH

from .feature_caches import MANIFEST, ShardedFeatures, compute_sharded_features, fingerprint, module_digest

logger = logging.getLogger(__name__)

# Weights of a full CLIPModel checkpoint that its text tower does not use.
CLIP_IMAGE_SIDE = ("vision_model.", "visual_projection.", "text_projection.", "logit_scale")


class FrozenTextTeacher(torch.nn.Module):
    """A text encoder without gradients and always in eval mode, whatever the Trainer calls on it; its feature is
    its ``pooler_output``.

    CLIP's (``--teacher clip``): the pooled [EOS] state after the final LayerNorm, before ``text_projection``, the
    space that AltCLIP's ``transformation`` maps into. A copy of the student itself (``--teacher self``): that
    ``transformation`` output, as the starting model computes it.
    """

    def __init__(self, text_model: torch.nn.Module):
        super().__init__()
        self.text_model = text_model.requires_grad_(False).eval()

    @property
    def width(self) -> int:
        config = self.text_model.config
        return getattr(config, "project_dim", None) or config.hidden_size

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


def self_teacher(text_model: torch.nn.Module, dtype: torch.dtype = torch.float32) -> FrozenTextTeacher:
    """A frozen copy of an AltCLIP text tower, taken before any adapter or training touches it: the teacher of a
    model that learns a language in the space it already has (multilingual knowledge distillation, Reimers &
    Gurevych 2020). Distilling a stage-2 model toward CLIP's features instead pulls its whole text tower back
    toward stage 1's targets, and every language forgets what stage 2 taught (docs/finetuning.md)."""
    return FrozenTextTeacher(copy.deepcopy(text_model).to(dtype))


def tokenizer_digest(tokenizer) -> str:
    """SHA-256 of what a tokenizer does: its serialized fast tokenizer (vocabulary, merges, normalizers), or its
    vocabulary, and its special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    specials = json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str)
    return hashlib.sha256((text + specials).encode()).hexdigest()


def teacher_max_length(tokenizer) -> int:
    """Teacher tokens per text: CLIP's 77 positions, or fewer if its tokenizer says so."""
    return min(tokenizer.model_max_length, CLIP_CONTEXT_LENGTH)


def precomputed_teacher_features(
    teacher: FrozenTextTeacher,
    tokenizer,
    texts: Sequence[str],
    cache_root: str | os.PathLike,
    corpus_digest: str,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    shard_rows: int = 65_536,
    wait_seconds: float = 1800.0,
    max_length: int | None = None,
) -> ShardedFeatures:
    """Teacher features of `texts` (the distinct English sentences, in group order), computed by all ranks in
    parallel into half-precision shards under ``cache_root/teacher-<fingerprint>``. The fingerprint covers the
    teacher's weights, its tokenizer, dtype and max length (`max_length`, default CLIP's 77) and the corpus, so a
    change recomputes."""
    max_length = max_length or teacher_max_length(tokenizer)
    key = {
        "teacher": str(teacher.text_model.config._name_or_path),
        "teacher_weights": module_digest(teacher),
        "tokenizer": tokenizer_digest(tokenizer),
        "dtype": str(next(teacher.parameters()).dtype),
        "max_length": max_length,
        "corpus": corpus_digest,
        "rows": len(texts),
    }
    folder = Path(cache_root) / f"teacher-{fingerprint(key)}"
    if (folder / MANIFEST).is_file():
        logger.info(
            "Reusing teacher features from %s (shard headers and sizes checked; a damaged one is recomputed)", folder
        )
    teacher = teacher.to(device)
    progress = tqdm(desc="Teacher features", unit="text", disable=rank != 0)

    def encode(start: int, stop: int) -> np.ndarray:
        parts = []
        for first in range(start, stop, batch_size):
            batch = tokenizer(
                list(texts[first : min(first + batch_size, stop)]),
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(device)
            parts.append(teacher(**batch).float().cpu().numpy())
            progress.update(len(batch["input_ids"]))
        return np.concatenate(parts)

    features = compute_sharded_features(
        folder, len(texts), teacher.width, encode, rank, world_size, shard_rows, key, wait_seconds=wait_seconds
    )
    progress.close()
    return features
