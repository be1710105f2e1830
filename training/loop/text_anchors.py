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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from altclip.common.errors import InputDataError, UsageError
from altclip.common.records import DataFormatError, SkipCounter, Skipped, iter_records

from .distributed_backends import gathered
from .feature_caches import module_digest

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt",)


@dataclass(frozen=True)
class AnchorTexts:
    """What a rank keeps of ``--anchor_texts``: its share of the distinct texts, and of them all only their count and
    digest (what a resumed run must share; the files' paths may differ)."""

    share: list[str]
    count: int
    digest: str


def _text_file_lines(path: Path, name: str) -> Iterator[str]:
    if not path.is_file():
        raise InputDataError(f"--anchor_texts {name}: no such file; give a .txt (one text per line) or a table.")
    try:
        with path.open(encoding="utf-8-sig") as handle:
            for line in handle:  # str.splitlines' line ends (\u2028, \x0c, ...), not only \n
                yield from line.splitlines()
    except UnicodeDecodeError as error:
        raise InputDataError(f"--anchor_texts {name}: not UTF-8 text ({error.reason}); save it as UTF-8.") from None


def _table_texts(path: Path, column: str, skipped: SkipCounter) -> Iterator[str]:
    try:
        for row in iter_records(path, [column]):
            if isinstance(row, Skipped):
                skipped.add(row)
                continue
            value = row.fields[column]
            if not isinstance(value, str) or not value.strip():
                skipped.add(Skipped(row.where, f"{column} is not a non-empty string"))
                continue
            yield value
    except DataFormatError as error:
        raise InputDataError(
            f"--anchor_texts: {error} (a .txt file holds one text per line; a table's texts are in "
            f"--anchor_text_column, now {column!r})"
        ) from None


def iter_anchor_texts(paths: Sequence[str], column: str, skipped: SkipCounter) -> Iterator[str]:
    """The non-empty texts of `paths`, stripped, in order (repeats included): ``.txt`` files one text per line,
    tables (JSONL/CSV/TSV, a save_to_disk folder) their `column`, a row without it skipped and counted in
    `skipped`. A file without any text is an error naming it."""
    for name in paths:
        path = Path(name)
        found = 0
        lines = _text_file_lines(path, name) if path.suffix.lower() in TEXT_SUFFIXES else None
        for text in lines if lines is not None else _table_texts(path, column, skipped):
            if text.strip():
                found += 1
                yield text.strip()
        if not found:
            raise InputDataError(
                f"--anchor_texts {name}: no text in it (a .txt file holds one text per line; a table's texts are in "
                f"--anchor_text_column {column!r})."
            )


def text_hash(text: str) -> int:
    """An 8-byte hash of a text (BLAKE2b)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def read_anchor_texts(paths: Sequence[str], column: str, rank: int = 0, world_size: int = 1) -> AnchorTexts:
    """Rank `rank`'s share of the distinct texts of `paths` in first-seen order (rank r keeps distinct texts r,
    r + world, ...; all of them where there are fewer texts than ranks), their count and digest.

    Streamed twice, so that no rank holds the whole file: the first pass finds each text's first occurrence by an
    8-byte hash (8 bytes a line: 400 MB at 50M lines, where the texts would be gigabytes on every rank; two texts
    sharing a hash, a chance of about n²/2⁶⁵, would drop one), the second keeps the share and digests the distinct
    texts in order."""
    skipped = SkipCounter()
    hashes = np.fromiter((text_hash(text) for text in iter_anchor_texts(paths, column, skipped)), dtype=np.uint64)
    if skipped.total:
        logger.warning("Anchor texts: %d record(s) skipped (%s)", skipped.total, dict(skipped.by_reason))
    first = np.zeros(len(hashes), dtype=bool)
    first[np.unique(hashes, return_index=True)[1]] = True
    count = int(first.sum())
    del hashes
    share, digest, distinct, read = [], hashlib.sha256(), 0, 0
    for index, text in enumerate(iter_anchor_texts(paths, column, SkipCounter(log_first=0))):
        read = index + 1
        if read > len(first):
            break
        if not first[index]:
            continue
        digest.update(text.encode("utf-8") + b"\0")
        if count < world_size or distinct % world_size == rank:
            share.append(text)
        distinct += 1
    if read != len(first):  # every first occurrence was met again (distinct == count) exactly when this holds
        raise InputDataError(
            f"--anchor_texts {' '.join(paths)}: the files changed while being read ({len(first)} texts, then "
            f"{read}); give files that stay as they are for the run."
        )
    return AnchorTexts(share, count, digest.hexdigest())


def text_side_of(model) -> torch.nn.Module:
    return torch.nn.ModuleDict({"text_model": model.text_model, "text_projection": model.text_projection})


def start_digest(model) -> str:
    """The digest of the model's text side's weights (gathered whole if ZeRO-3 partitioned them): the start a resumed
    anchored run must share."""
    text_side = text_side_of(model)
    with gathered(text_side):
        return module_digest(text_side)


@torch.no_grad()
def starting_embeddings(
    model, tokenizer, texts: Sequence[str], max_length: int, device: torch.device | str, batch_size: int = 256
) -> tuple[list[list[int]], torch.Tensor]:
    """Token ids (truncated to `max_length`) and L2-normalised embeddings (on `device`) of `texts` by `model` as it is
    now, in eval mode; its text side is moved to `device` for the work and back (gathered whole if ZeRO-3
    partitioned it)."""
    text_side = text_side_of(model)
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
                chunk = {"input_ids": ids[first : first + batch_size]}
                batch = tokenizer.pad(chunk, padding_side="right", return_tensors="pt")  # as `join` pads
                batch = {key: value.to(parameter.device if partitioned else device) for key, value in batch.items()}
                features = model.get_text_features(batch["input_ids"], batch["attention_mask"]).pooler_output
                embeddings.append(F.normalize(features.float(), dim=-1).to(device))
        finally:
            text_side.train(was_training)
            if not partitioned:
                text_side.to(home)
    return ids, torch.cat(embeddings)


class TextAnchors:
    """This rank's share of the anchor texts: their token ids, their starting embeddings (kept on the training
    device: no copy in the step), and the draw of each micro-batch."""

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
        cls, model, tokenizer, texts: AnchorTexts, max_length: int, weight: float, batch_size: int, seed: int,
        rank: int, device: torch.device | str,
    ) -> "TextAnchors":  # fmt: skip
        """This rank's share of the anchor texts (`read_anchor_texts`), embedded by `model`."""
        ids, targets = starting_embeddings(model, tokenizer, texts.share, max_length, device)
        logger.info("Anchor texts: %d on this rank (of %d), %d per micro-batch, weight %g", len(texts.share),
                    texts.count, min(batch_size, len(texts.share)), weight)  # fmt: skip
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
        inputs["anchor_rows"] = torch.as_tensor(indices, device=self.targets.device)
        return len(captions)

    def loss(self, embeds: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``weight · mean(1 − cos)`` between the anchors' normalised embeddings now and at the start."""
        targets = self.targets[rows.to(self.targets.device)].to(embeds.device)
        distance = (1 - (embeds.float() * targets).sum(-1)).mean()
        if torch.is_grad_enabled():  # not full-batch negatives' first pass, without gradients
            self.loss_sum = self.loss_sum + distance.detach()  # a tensor: read (a device sync) only when logged
            self.loss_count += 1
        return self.weight * distance

    def logged(self) -> float | None:
        """The mean anchor distance (1 − cos, before the weight) since the last call; None if there was none."""
        if not self.loss_count:
            return None
        mean = float(self.loss_sum) / self.loss_count
        self.loss_sum, self.loss_count = 0.0, 0
        return round(mean, 6)


def check_anchor_arguments(stage_args, flags_given: frozenset[str], model_name_or_path: str | None) -> None:
    """``--anchor_texts`` and ``--anchor_weight`` come together (a weight alone, or texts at weight 0, would do
    nothing without a word), and keep a trained model (``--model_name_or_path``), not a new one's random start."""
    if stage_args.anchor_texts and not model_name_or_path:
        raise UsageError(
            "altclip-train: --anchor_texts keeps a trained model's embeddings; give it as --model_name_or_path (a "
            "model built anew from CLIP and XLM-R has nothing to keep)."
        )
    if stage_args.anchor_texts and stage_args.anchor_weight == 0:
        raise UsageError("altclip-train: --anchor_texts at --anchor_weight 0 does nothing; give a weight above 0.")
    if not stage_args.anchor_texts and {"--anchor_weight", "--anchor_batch_size", "--anchor_text_column"} & flags_given:
        raise UsageError(
            "altclip-train: --anchor_weight, --anchor_batch_size and --anchor_text_column need --anchor_texts (the "
            "texts whose embeddings fine-tuning keeps)."
        )
