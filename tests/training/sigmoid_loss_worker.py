"""Run under torchrun (gloo): the gradient DDP would apply with `SigLipLoss` (and its Matryoshka form) on ranks
holding 3 and 4 (or 3, 2 and 2) of 7 rows, and the one-process gradient on the same global batch, written by rank 0
as JSON to the path given as the only argument. Float64 throughout, so that what differs is the scheme, not
summation order.
"""

import json
import math
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

from altclip.training.loop.contrastive_objective import contrastive_objective
from altclip.training.loop.sigmoid_loss import summed_sigmoid_loss

ROWS, WIDTH = 7, 8


def parameters() -> list[torch.nn.Parameter]:
    """Two towers, the log-temperature (log 10) and the bias (-10, then moved so that its gradient is not tiny)."""
    torch.manual_seed(0)
    image, text = torch.nn.Linear(WIDTH, WIDTH).double(), torch.nn.Linear(WIDTH, WIDTH).double()
    log_scale = torch.nn.Parameter(torch.tensor([math.log(10.0)], dtype=torch.float64))
    bias = torch.nn.Parameter(torch.tensor([-2.0], dtype=torch.float64))
    return [*image.parameters(), *text.parameters(), log_scale, bias]


def embeds(params: list[torch.nn.Parameter], rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(ROWS, WIDTH, generator=generator, dtype=torch.float64)[rows]
    texts = torch.randn(ROWS, WIDTH, generator=generator, dtype=torch.float64)[rows]
    image_weight, image_bias, text_weight, text_bias = params[:4]
    return (
        F.normalize(F.linear(images, image_weight, image_bias), dim=-1),
        F.normalize(F.linear(texts, text_weight, text_bias), dim=-1),
    )


def gradient_of(loss_of, rows: slice) -> tuple[float, torch.Tensor]:
    params = parameters()
    images, texts = embeds(params, rows)
    loss = loss_of(images, texts, params[4].exp(), params[5])
    loss.backward()
    gradients = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]  # InfoNCE: no bias gradient
    return loss.item(), torch.cat([gradient.reshape(-1) for gradient in gradients])


def ddp(loss_of) -> tuple[float, torch.Tensor]:
    """This rank's rows, gradients averaged over ranks (DDP); the logged loss averaged likewise."""
    starts = {2: [0, 3, ROWS], 3: [0, 3, 5, ROWS]}[dist.get_world_size()]  # 3+4 rows, or 3+2+2
    rows = slice(starts[dist.get_rank()], starts[dist.get_rank() + 1])
    loss, gradient = gradient_of(loss_of, rows)
    both = torch.cat([torch.tensor([loss], dtype=torch.float64), gradient])
    dist.all_reduce(both)
    both /= dist.get_world_size()
    return both[0].item(), both[1:]


def local_only(images, texts, scale, bias) -> torch.Tensor:
    """The scheme the exchange replaces: each rank's own pairs only (no negatives from the other rank)."""
    return summed_sigmoid_loss(images, texts, scale, bias, matching=True) / len(images)


P2P_CALLS = {"batch_isend_irecv": 0, "recv": 0}
GATHERS = {"all_gather": 0, "all_gather_with_grad": 0}


def counted(name: str, function, calls: dict = P2P_CALLS):
    def call(*args, **kwargs):
        calls[name] += 1
        return function(*args, **kwargs)

    return call


def gathers_of(loss_of) -> dict:
    """How many all-gathers one DDP step of `loss_of` makes on this rank (forward and backward)."""
    before = dict(GATHERS)
    ddp(loss_of)
    return {name: GATHERS[name] - before[name] for name in GATHERS}


def main(output: str) -> None:
    dist.init_process_group("gloo")
    # what the ring exchange calls: NCCL needs each send and receive grouped, never a lone blocking receive
    dist.batch_isend_irecv = counted("batch_isend_irecv", dist.batch_isend_irecv)
    dist.recv = counted("recv", dist.recv)
    objectives = {
        "siglip": contrastive_objective("siglip"),
        "siglip_matryoshka": contrastive_objective("siglip", widths=[2, 4, WIDTH], weights=[0.5, 1.0, 1.0]),
        "infonce_matryoshka": contrastive_objective("infonce", widths=[2, 4, WIDTH], weights=[0.5, 1.0, 1.0]),
        "infonce_matryoshka_no_gather_grad": contrastive_objective(
            "infonce", gather_with_grad=False, widths=[2, 4, WIDTH], weights=[0.5, 1.0, 1.0]
        ),
    }
    results = {name: ddp(objective) for name, objective in objectives.items()}
    results["local_only"] = ddp(local_only)
    # the all-gathers of InfoNCE (feature row counts and features), counted where the loss calls them
    dist.all_gather = counted("all_gather", dist.all_gather, GATHERS)
    functional = sys.modules["torch.distributed.nn.functional"]
    functional.all_gather = counted("all_gather_with_grad", functional.all_gather, GATHERS)
    gathers = {
        "infonce": gathers_of(contrastive_objective("infonce")),
        "infonce_matryoshka": gathers_of(objectives["infonce_matryoshka"]),
    }
    if dist.get_rank() == 0:
        dist.destroy_process_group()  # the one-process runs below must not see a process group
        every_row = slice(0, ROWS)
        reference = {name: gradient_of(objective, every_row) for name, objective in objectives.items()}
        reference["local_only"] = reference["siglip"]
        report = {
            name: {
                "loss": [loss, reference[name][0]],
                "max_abs_difference": (gradient - reference[name][1]).abs().max().item(),
                "gradient_scale": reference[name][1].abs().max().item(),
                "temperature_and_bias_gradient": [gradient[-2:].tolist(), reference[name][1][-2:].tolist()],
            }
            for name, (loss, gradient) in results.items()
        }
        report["p2p_calls"] = dict(P2P_CALLS)
        report["gathers"] = gathers
        with open(output, "w") as handle:
            json.dump(report, handle, indent=2)
    else:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
