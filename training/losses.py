"""Losses of the two stages: distillation onto the CLIP teacher, and CLIP's contrastive loss across ranks."""

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_functional
import torch.nn.functional as F

DISTILLATION_LOSSES = ("mse", "cosine")


def rank_share(local_rows: int, device: torch.device) -> float:
    """The factor that turns this rank's *sum* of per-row losses into its part of the global-batch mean, such that
    DDP's averaging over ranks gives exactly the one-process mean, also when ranks hold different row counts
    (skipped records): world_size / global_rows."""
    if not _is_distributed():
        return 1.0 / max(local_rows, 1)
    rows = torch.tensor([float(local_rows)], device=device)
    dist.all_reduce(rows)
    return dist.get_world_size() / max(float(rows.item()), 1.0)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Distance between student features and the (fixed) teacher features: mean squared error, or 1 - cosine,
    averaged over the global batch (see `rank_share`)."""
    if student.shape != teacher.shape:
        raise ValueError(f"Student features {tuple(student.shape)} and teacher features {tuple(teacher.shape)} differ.")
    teacher = teacher.detach().to(student.dtype)
    if kind == "mse":
        per_row = (student - teacher).pow(2).mean(dim=-1)
    elif kind == "cosine":
        per_row = 1 - F.cosine_similarity(student, teacher, dim=-1)
    else:
        raise ValueError(f"Unknown distillation loss {kind!r}; choose one of {', '.join(DISTILLATION_LOSSES)}.")
    return per_row.sum() * rank_share(student.shape[0], student.device)


def _gather(features: torch.Tensor, with_grad: bool) -> list[torch.Tensor]:
    """Every rank's `features`, in rank order. Ranks may hold different numbers of rows (skipped records):
    rows are padded to the largest count for the collective and cut back afterwards."""
    count = torch.tensor([features.shape[0]], device=features.device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    counts = [int(c.item()) for c in counts]
    padded = F.pad(features, (0, 0, 0, max(counts) - features.shape[0]))
    if with_grad:
        gathered = list(dist_functional.all_gather(padded))
    else:
        gathered = [torch.zeros_like(padded) for _ in counts]
        dist.all_gather(gathered, padded)
        gathered[dist.get_rank()] = padded  # keep the gradient of this rank's own features
    return [chunk[:n] for chunk, n in zip(gathered, counts)]


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class ClipLoss(torch.nn.Module):
    """Symmetric InfoNCE whose negatives are the global batch, as in open_clip's ``ClipLoss``.

    Each rank scores its own images and texts against everything gathered from all ranks (``local_loss``); with
    ``gather_with_grad`` the gradient flows back through the gather, so that after DDP's gradient averaging the
    update equals that of one process holding the whole global batch. Each rank's loss is weighted by its share of
    the global batch (`rank_share`), so ranks with fewer rows (skipped records) keep that equality.
    """

    def __init__(self, gather_with_grad: bool = True):
        super().__init__()
        self.gather_with_grad = gather_with_grad

    def forward(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
        """`image_embeds` and `text_embeds` are L2-normalised, row i of one matching row i of the other."""
        if image_embeds.shape[0] != text_embeds.shape[0]:
            raise ValueError(f"{image_embeds.shape[0]} images but {text_embeds.shape[0]} texts in a contrastive batch.")
        offset, rows = 0, image_embeds.shape[0]
        all_images, all_texts = image_embeds, text_embeds
        share = 1.0 / max(rows, 1)
        if _is_distributed():
            images, texts = _gather(image_embeds, self.gather_with_grad), _gather(text_embeds, self.gather_with_grad)
            offset = sum(len(chunk) for chunk in images[: dist.get_rank()])
            all_images, all_texts = torch.cat(images), torch.cat(texts)
            share = dist.get_world_size() / max(len(all_images), 1)
        labels = torch.arange(rows, device=image_embeds.device) + offset
        logits_per_image = logit_scale * image_embeds @ all_texts.t()
        logits_per_text = logit_scale * text_embeds @ all_images.t()
        summed = F.cross_entropy(logits_per_image, labels, reduction="sum") + F.cross_entropy(
            logits_per_text, labels, reduction="sum"
        )
        return summed / 2 * share
