"""Run under torchrun (gloo): the gradient DDP would apply with each `ClipLoss` gather mode, and the one-process
gradient on the same global batch, written by rank 0 as JSON to the path given as the only argument.

Ranks hold unequal row counts (3 and 4 of 7), as after skipped records. Float64 throughout, so that what differs
is the scheme and not the summation order.
"""

import json
import math
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

from altclip.training.loop.losses import ClipLoss, _gather, rank_share

ROWS, WIDTH = 7, 8


def towers() -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Parameter]:
    torch.manual_seed(0)
    image, text = torch.nn.Linear(WIDTH, WIDTH).double(), torch.nn.Linear(WIDTH, WIDTH).double()
    return image, text, torch.nn.Parameter(torch.tensor(math.log(10.0), dtype=torch.float64))


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(ROWS, WIDTH, generator=generator, dtype=torch.float64), torch.randn(
        ROWS, WIDTH, generator=generator, dtype=torch.float64
    )


def flat_gradient(parameters) -> torch.Tensor:
    return torch.cat([parameter.grad.reshape(-1) for parameter in parameters])


def detached_local_loss(images: torch.Tensor, texts: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The biased scheme the no-grad gather replaced: this rank's rows against detached remote features."""
    all_images, all_texts = torch.cat(_gather(images, False)), torch.cat(_gather(texts, False))
    offset = sum(len(chunk) for chunk in _gather(images, False)[: dist.get_rank()])
    labels = torch.arange(len(images)) + offset
    summed = F.cross_entropy(scale * images @ all_texts.t(), labels, reduction="sum") + F.cross_entropy(
        scale * texts @ all_images.t(), labels, reduction="sum"
    )
    return summed / 2 * rank_share(len(images), images.device)


def ddp_gradient(loss_of) -> torch.Tensor:
    """This rank's rows through the towers, `loss_of(images, texts, scale)`, gradients averaged over ranks (DDP)."""
    image_tower, text_tower, log_scale = towers()
    parameters = [*image_tower.parameters(), *text_tower.parameters(), log_scale]
    images, texts = inputs()
    rows = slice(0, 3) if dist.get_rank() == 0 else slice(3, ROWS)
    image_embeds = F.normalize(image_tower(images[rows]), dim=-1)
    text_embeds = F.normalize(text_tower(texts[rows]), dim=-1)
    loss_of(image_embeds, text_embeds, log_scale.exp()).backward()
    gradient = flat_gradient(parameters)
    dist.all_reduce(gradient)
    return gradient / dist.get_world_size()


def one_process_gradient() -> torch.Tensor:
    """CLIP's symmetric loss on all rows in one process (`ClipLoss` outside a process group reduces to it)."""
    image_tower, text_tower, log_scale = towers()
    images, texts = inputs()
    image_embeds, text_embeds = F.normalize(image_tower(images), dim=-1), F.normalize(text_tower(texts), dim=-1)
    logits = log_scale.exp() * image_embeds @ text_embeds.t()
    labels = torch.arange(ROWS)
    ((F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2).backward()
    return flat_gradient([*image_tower.parameters(), *text_tower.parameters(), log_scale])


def main(output: str) -> None:
    dist.init_process_group("gloo")
    gradients = {
        "gather_with_grad": ddp_gradient(ClipLoss(gather_with_grad=True)),
        "gather_without_grad": ddp_gradient(ClipLoss(gather_with_grad=False)),
        "detached_local_loss": ddp_gradient(detached_local_loss),
    }
    if dist.get_rank() == 0:
        reference = one_process_gradient()
        report = {
            name: {
                "cosine": F.cosine_similarity(gradient, reference, dim=0).item(),
                "max_abs_difference": (gradient - reference).abs().max().item(),
                "temperature_gradient": [gradient[-1].item(), reference[-1].item()],
                "norm_ratio": (gradient.norm() / reference.norm()).item(),
            }
            for name, gradient in gradients.items()
        }
        with open(output, "w") as handle:
            json.dump(report, handle, indent=2)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
