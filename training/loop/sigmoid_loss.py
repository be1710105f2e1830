"""SigLIP's pairwise sigmoid loss (Zhai et al. 2023, arXiv 2303.15343) across ranks, as open_clip's ``SigLipLoss``.

Every image-text pair of the global batch is a binary problem: label +1 for the matching pair, -1 for all others,
loss ``-log sigmoid(label * (t * <image, text> + b))`` summed over the texts and averaged over the images, with a
learnable temperature ``t`` (log-scale initialised to log 10) and bias ``b`` (initialised to -10).

Across ranks no rank holds every rank's features: each keeps its images and passes its texts around the ring of
ranks (big_vision's chunked form, open_clip's neighbour exchange), one chunk at a time, scoring its images against
each chunk as it passes. The exchange carries gradients back along the ring, so each pair is scored once, on the
rank of its image, and the gradient of every text reaches the rank that embedded it. Ranks may hold different
numbers of rows (skipped records): chunks are padded to the largest count for the exchange and cut back.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F

SIGLIP_LOGIT_SCALE_INIT = 2.302585092994046  # log(10), the paper's t' init
SIGLIP_LOGIT_BIAS_INIT = -10.0


class _RingShift(torch.autograd.Function):
    """Sends a tensor to the next rank and returns the previous rank's; the gradient goes the opposite way."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, to_rank: int, from_rank: int) -> torch.Tensor:
        ctx.to_rank, ctx.from_rank = to_rank, from_rank
        return _shift(tensor, to_rank, from_rank)

    @staticmethod
    def backward(ctx, gradient: torch.Tensor):
        return _shift(gradient, ctx.from_rank, ctx.to_rank), None, None


def _shift(tensor: torch.Tensor, to_rank: int, from_rank: int) -> torch.Tensor:
    """One batched send-and-receive (open_clip's ``neighbour_exchange``): NCCL needs the pair grouped, as a lone
    send followed by a blocking receive waits on a ring of 3 or more ranks until the collective times out."""
    tensor = tensor.contiguous()
    received = torch.empty_like(tensor)
    requests = dist.batch_isend_irecv(
        [dist.P2POp(dist.isend, tensor, to_rank), dist.P2POp(dist.irecv, received, from_rank)]
    )
    for request in requests:
        request.wait()
    return received


def summed_sigmoid_loss(
    images: torch.Tensor, texts: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, matching: bool
) -> torch.Tensor:
    """Sum over every (image, text) pair of ``-log sigmoid(label * logit)``; with `matching`, row i of both is a
    positive pair (label +1), all else negatives (-1)."""
    logits = scale * images @ texts.t() + bias
    labels = -torch.ones_like(logits)
    if matching:
        labels = labels + 2 * torch.eye(len(images), len(texts), dtype=logits.dtype, device=logits.device)
    return -F.logsigmoid(labels * logits).sum()


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class SigLipLoss(torch.nn.Module):
    """The sigmoid loss of the global batch, divided by its rows; under DDP each rank's part is scaled so that the
    ranks' averaged gradient equals that of one process holding the whole global batch."""

    def forward(
        self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor
    ) -> torch.Tensor:
        """`image_embeds`/`text_embeds` L2-normalised, row i of one matching row i of the other; `logit_scale` is
        the applied temperature ``exp(t')``."""
        if image_embeds.shape[0] != text_embeds.shape[0]:
            raise ValueError(f"{image_embeds.shape[0]} images but {text_embeds.shape[0]} texts in a contrastive batch.")
        summed = summed_sigmoid_loss(image_embeds, text_embeds, logit_scale, logit_bias, matching=True)
        if not _is_distributed():
            return summed / max(len(image_embeds), 1)
        world_size, rank = dist.get_world_size(), dist.get_rank()
        count = torch.tensor([len(text_embeds)], device=text_embeds.device)
        counts = [torch.zeros_like(count) for _ in range(world_size)]
        dist.all_gather(counts, count)
        counts = [int(c.item()) for c in counts]
        chunk = F.pad(text_embeds, (0, 0, 0, max(counts) - len(text_embeds)))
        to_rank, from_rank = (rank + 1) % world_size, (rank - 1) % world_size
        for step in range(1, world_size):
            chunk = _RingShift.apply(chunk, to_rank, from_rank)
            owner = (rank - step) % world_size
            summed = summed + summed_sigmoid_loss(
                image_embeds, chunk[: counts[owner]], logit_scale, logit_bias, matching=False
            )
        # DDP averages the ranks' gradients: world_size / global rows makes their sum the global-batch mean
        return summed * world_size / max(sum(counts), 1)
