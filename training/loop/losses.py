"""Losses of the two stages: distillation onto the CLIP teacher, and CLIP's contrastive loss across ranks."""

from collections.abc import Sequence

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


def prefix(embeds: torch.Tensor, width: int) -> torch.Tensor:
    """The first `width` coordinates, re-normalised (for L2-normalised input: the normalised prefix of the raw
    projection, since normalising does not change directions). Row-wise, so the prefix of gathered rows is the
    gathered prefixes: one exchange serves every Matryoshka width."""
    return embeds if width >= embeds.shape[-1] else F.normalize(embeds[..., :width], dim=-1)


def weighted_over_widths(widths: Sequence[int], weights: Sequence[float], loss_at) -> torch.Tensor:
    """Matryoshka's sum: `loss_at(width)` times its weight, over the widths whose weight is not 0."""
    return torch.stack([weight * loss_at(width) for width, weight in zip(widths, weights) if weight]).sum()


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class ClipLoss(torch.nn.Module):
    """Symmetric InfoNCE whose negatives are the global batch, as in open_clip's ``ClipLoss``.

    With ``gather_with_grad`` (the default) each rank scores its own images and texts against everything gathered
    from all ranks (open_clip's ``local_loss``) and the gradient flows back through the gather; each rank's loss is
    weighted by its share of the global batch (`rank_share`), so that after DDP's averaging the update equals that of
    one process holding the whole global batch, also when ranks hold different row counts (skipped records).

    Without it (open_clip's ``gather_with_grad=False``: no collective in the backward pass, at the price of the whole
    global logit matrix on every rank) the features are gathered detached, this rank's own chunk put back with its
    gradient, and every rank computes the loss of the *whole* global batch: each term in which this rank's rows
    appear is then differentiated here, so the ranks' gradients sum to the one-process gradient (see
    `_summed_over_ranks`). A local loss over detached remote features would miss the terms in which the other ranks
    use this rank's rows as negatives, and bias the gradient.

    With `widths` (Matryoshka), the weighted sum over the widths of this loss on each re-normalised prefix of both
    embeddings, from *one* gather of the full embeddings: the exchange does not grow with the number of widths.
    """

    def __init__(
        self, gather_with_grad: bool = True, widths: Sequence[int] = (), weights: Sequence[float] | None = None
    ):
        super().__init__()
        self.gather_with_grad = gather_with_grad
        self.widths = list(widths)
        self.weights = list(weights) if weights is not None else [1.0] * len(self.widths)

    def _summed(self, images, texts, all_texts, all_images, logit_scale, offset) -> torch.Tensor:
        """`_summed_symmetric_loss`, or its weighted sum over the Matryoshka prefixes."""
        if not self.widths:
            return _summed_symmetric_loss(images, texts, all_texts, all_images, logit_scale, offset)
        return weighted_over_widths(
            self.widths,
            self.weights,
            lambda width: _summed_symmetric_loss(
                prefix(images, width), prefix(texts, width), prefix(all_texts, width), prefix(all_images, width),
                logit_scale, offset,
            ),
        )  # fmt: skip

    def forward(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
        """`image_embeds` and `text_embeds` are L2-normalised, row i of one matching row i of the other."""
        if image_embeds.shape[0] != text_embeds.shape[0]:
            raise ValueError(f"{image_embeds.shape[0]} images but {text_embeds.shape[0]} texts in a contrastive batch.")
        if not _is_distributed():
            summed = self._summed(image_embeds, text_embeds, text_embeds, image_embeds, logit_scale, 0)
            return summed / max(len(image_embeds), 1)
        images, texts = _gather(image_embeds, self.gather_with_grad), _gather(text_embeds, self.gather_with_grad)
        all_images, all_texts = torch.cat(images), torch.cat(texts)
        if not self.gather_with_grad:
            world_size = dist.get_world_size()
            # Every rank computes the temperature's whole gradient: scaled down by what `_summed_over_ranks` scales
            # up, so that DDP's average of the ranks keeps it whole.
            scale = logit_scale / world_size + logit_scale.detach() * (1 - 1 / world_size)
            summed = self._summed(all_images, all_texts, all_texts, all_images, scale, 0)
            return _summed_over_ranks(summed / max(len(all_images), 1), world_size)
        offset = sum(len(chunk) for chunk in images[: dist.get_rank()])
        summed = self._summed(image_embeds, text_embeds, all_texts, all_images, logit_scale, offset)
        return summed * dist.get_world_size() / max(len(all_images), 1)


def _summed_symmetric_loss(
    images: torch.Tensor,
    texts: torch.Tensor,
    all_texts: torch.Tensor,
    all_images: torch.Tensor,
    logit_scale: torch.Tensor,
    offset: int,
) -> torch.Tensor:
    """Sum over the rows of `images`/`texts` of the mean of CLIP's two cross-entropies, each row's match at `offset`
    plus its index among the candidates `all_texts` / `all_images`."""
    labels = torch.arange(len(images), device=images.device) + offset
    logits_per_image = logit_scale * images @ all_texts.t()
    logits_per_text = logit_scale * texts @ all_images.t()
    summed = F.cross_entropy(logits_per_image, labels, reduction="sum") + F.cross_entropy(
        logits_per_text, labels, reduction="sum"
    )
    return summed / 2


def _summed_over_ranks(loss: torch.Tensor, world_size: int) -> torch.Tensor:
    """`loss`'s value with `world_size` times its gradient: each rank's gradient holds only its own rows' part of the
    global loss's gradient, and DDP *averages* the ranks, so the parts come out summed."""
    return loss.detach() + (loss - loss.detach()) * world_size
