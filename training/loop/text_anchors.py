"""Text anchors: fine-tuning that keeps what the model already knew (``--anchor_texts``, ``--anchor_weight``).

Fine-tuning a trained AltCLIP on a domain's captions moves its text tower, and the names it knew drift away from
their images (docs/finetuning.md measures the loss: 60 → 30% top-1 on the emoji it was trained on). Here every
training micro-batch also carries a draw of anchor texts — names or captions the model should keep, in the languages
it serves — and the loss adds ``anchor_weight · mean(1 − cos(e, e₀))`` between their embeddings now (e) and the
starting model's (e₀): learning without forgetting by feature distillation on reference text (Li & Hoiem 2017;
ZSCL, Zheng et al. 2023, distils on reference text the same way), the way ``--teacher self`` keeps a model's space
while it learns a language.

The starting embeddings are computed once, before the first step, by the model as loaded from
``--model_name_or_path`` (a resumed run loads its checkpoint only later, inside ``Trainer.train``); each rank
computes and keeps only its own share of the anchors (rank r: anchors r, r + world, ...). The anchors of a
micro-batch are drawn from that share by (seed, rank, step, micro-batch), so a resumed run draws what the
uninterrupted run drew. They ride in the same forward as the captions (one text batch, padded together), so DDP,
FSDP2 and DeepSpeed see one forward per micro-batch. Hand-written because neither peft nor transformers offers a
feature-distillation regulariser for contrastive fine-tuning.
"""

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from altclip.common.errors import InputDataError, UsageError
from altclip.common.records import DataFormatError, SkipCounter, Skipped, iter_records

from .distributed_backends import gathered

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt",)


def read_anchor_texts(paths: Sequence[str], column: str) -> list[str]:
    """The distinct non-empty texts of `paths` in first-seen order: ``.txt`` files one text per line, tables
    (JSONL/CSV/TSV, a save_to_disk folder) their `column`. A table row without it is skipped and counted; a file
    with no text at all is an error naming it."""
    texts: dict[str, None] = {}
    skipped = SkipCounter()
    for name in paths:
        path = Path(name)
        found = 0
        if path.suffix.lower() in TEXT_SUFFIXES:
            if not path.is_file():
                raise InputDataError(
                    f"--anchor_texts {name}: no such file; give a .txt (one text per line) or a table."
                )
            try:
                lines = path.read_text(encoding="utf-8-sig").splitlines()
            except UnicodeDecodeError as error:
                raise InputDataError(
                    f"--anchor_texts {name}: not UTF-8 text ({error.reason}); save it as UTF-8."
                ) from None
            for line in lines:
                if line.strip():
                    texts.setdefault(line.strip(), None)
                    found += 1
        else:
            try:
                for row in iter_records(path, [column]):
                    if isinstance(row, Skipped):
                        skipped.add(row)
                        continue
                    value = row.fields[column]
                    if not isinstance(value, str) or not value.strip():
                        skipped.add(Skipped(row.where, f"{column} is not a non-empty string"))
                        continue
                    texts.setdefault(value.strip(), None)
                    found += 1
            except DataFormatError as error:
                raise InputDataError(
                    f"--anchor_texts: {error} (a .txt file holds one text per line; a table's texts are in "
                    f"--anchor_text_column, now {column!r})"
                ) from None
        if not found:
            raise InputDataError(
                f"--anchor_texts {name}: no text in it (a .txt file holds one per line; a table's texts are in "
                f"--anchor_text_column {column!r})."
            )
    if skipped.total:
        logger.warning("Anchor texts: %d record(s) skipped (%s)", skipped.total, dict(skipped.by_reason))
    return list(texts)


def texts_digest(texts: Sequence[str]) -> str:
    """SHA-256 of the anchor texts in order: what a resumed run must share (the file's path may differ)."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    return digest.hexdigest()


@torch.no_grad()
def starting_embeddings(
    model, tokenizer, texts: Sequence[str], max_length: int, device: torch.device | str, batch_size: int = 256
) -> tuple[list[list[int]], torch.Tensor]:
    """Token ids (truncated to `max_length`) and L2-normalised embeddings of `texts` by `model` as it is now, in eval
    mode; its text side is moved to `device` for the work and back (gathered whole if ZeRO-3 partitioned it)."""
    text_side = torch.nn.ModuleDict({"text_model": model.text_model, "text_projection": model.text_projection})
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    embeddings = []
    was_training = text_side.training
    with gathered(text_side):
        parameter = next(text_side.parameters())
        partitioned, home = hasattr(parameter, "ds_id"), parameter.device
        if not partitioned:
            text_side.to(device)
        text_side.eval()
        try:
            for first in range(0, len(ids), batch_size):
                batch = tokenizer.pad({"input_ids": ids[first : first + batch_size]}, return_tensors="pt")
                batch = {key: value.to(parameter.device if partitioned else device) for key, value in batch.items()}
                features = model.get_text_features(batch["input_ids"], batch["attention_mask"]).pooler_output
                embeddings.append(F.normalize(features.float(), dim=-1).cpu())
        finally:
            text_side.train(was_training)
            if not partitioned:
                text_side.to(home)
    return ids, torch.cat(embeddings)


def share_of(texts: Sequence[str], rank: int, world_size: int) -> list[str]:
    """Rank `rank`'s anchors: every `world_size`-th from the rank's own place, so that the ranks' shares are disjoint
    and cover the texts; all of them where there are fewer texts than ranks."""
    return list(texts[rank::world_size]) if len(texts) >= world_size else list(texts)


class TextAnchors:
    """This rank's share of the anchor texts: their token ids, their starting embeddings, and the draw of each
    micro-batch."""

    def __init__(
        self,
        ids: list[list[int]],
        targets: torch.Tensor,
        weight: float,
        batch_size: int,
        pad_token_id: int,
        seed: int,
        rank: int = 0,
    ):
        if len(ids) != len(targets) or not ids:
            raise ValueError(f"TextAnchors needs one target per text, and texts ({len(ids)} texts, {len(targets)}).")
        self.ids, self.targets = ids, targets
        self.weight, self.batch_size = weight, min(batch_size, len(ids))
        self.pad_token_id, self.seed, self.rank = pad_token_id, seed, rank
        self.loss_sum, self.loss_count = 0.0, 0

    @classmethod
    def for_rank(
        cls, model, tokenizer, texts: Sequence[str], max_length: int, weight: float, batch_size: int, seed: int,
        rank: int, world_size: int, device: torch.device | str,
    ) -> "TextAnchors":  # fmt: skip
        """Rank `rank`'s share of `texts` (all of them when there are fewer texts than ranks), embedded by `model`."""
        share = share_of(texts, rank, world_size)
        ids, targets = starting_embeddings(model, tokenizer, share, max_length, device)
        logger.info("Anchor texts: %d on this rank (of %d), %d per micro-batch, weight %g", len(share), len(texts),
                    min(batch_size, len(share)), weight)  # fmt: skip
        return cls(ids, targets, weight, batch_size, tokenizer.pad_token_id, seed, rank)

    def draw(self, step: int, micro_batch: int) -> np.ndarray:
        """Indices of the anchors of optimizer step `step`'s micro-batch `micro_batch` on this rank (no repeats)."""
        generator = np.random.default_rng([self.seed, self.rank, step, micro_batch])
        return np.sort(generator.choice(len(self.ids), self.batch_size, replace=False))

    def join(self, inputs: dict, indices: np.ndarray) -> int:
        """Appends the anchors `indices` to the batch's texts (``input_ids``, ``attention_mask``), both padded to the
        longer of the two, and keeps their indices in ``anchor_rows``; returns the number of captions."""
        captions, mask = inputs["input_ids"], inputs["attention_mask"]
        anchors = [self.ids[index] for index in indices]
        length = max(captions.shape[1], max(len(ids) for ids in anchors))
        extra_ids = torch.full((len(anchors), length), self.pad_token_id, dtype=captions.dtype)
        extra_mask = torch.zeros((len(anchors), length), dtype=mask.dtype)
        for row, ids in enumerate(anchors):
            extra_ids[row, : len(ids)] = torch.tensor(ids, dtype=captions.dtype)
            extra_mask[row, : len(ids)] = 1
        pad = length - captions.shape[1]
        padded = F.pad(captions, (0, pad), value=self.pad_token_id)
        inputs["input_ids"] = torch.cat([padded, extra_ids.to(captions.device)])
        inputs["attention_mask"] = torch.cat([F.pad(mask, (0, pad), value=0), extra_mask.to(mask.device)])
        inputs["anchor_rows"] = torch.as_tensor(indices)
        return len(captions)

    def loss(self, embeds: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``weight · mean(1 − cos)`` between the anchors' normalised embeddings now and at the start."""
        targets = self.targets[rows.cpu()].to(embeds.device)
        distance = (1 - (embeds.float() * targets).sum(-1)).mean()
        if torch.is_grad_enabled():  # not full-batch negatives' first pass, without gradients
            self.loss_sum = self.loss_sum + distance.detach()  # a tensor: no device sync until it is logged
            self.loss_count += 1
        return self.weight * distance

    def logged(self) -> float | None:
        """The mean anchor distance (1 − cos, before the weight) since the last call; None if there was none."""
        if not self.loss_count:
            return None
        mean = float(self.loss_sum) / self.loss_count
        self.loss_sum, self.loss_count = 0.0, 0
        return round(mean, 6)


def check_anchor_arguments(stage_args, flags_given: frozenset[str]) -> None:
    """``--anchor_texts`` and ``--anchor_weight`` come together (a weight alone, or texts at weight 0, would do
    nothing without a word)."""
    if stage_args.anchor_texts and stage_args.anchor_weight == 0:
        raise UsageError("altclip-train: --anchor_texts at --anchor_weight 0 does nothing; give a weight above 0.")
    if not stage_args.anchor_texts and {"--anchor_weight", "--anchor_batch_size", "--anchor_text_column"} & flags_given:
        raise UsageError(
            "altclip-train: --anchor_weight, --anchor_batch_size and --anchor_text_column need --anchor_texts (the "
            "texts whose embeddings fine-tuning keeps)."
        )
