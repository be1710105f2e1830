"""Stage 2's objective: the contrastive loss (InfoNCE or SigLIP's sigmoid) on the full embeddings or, with
Matryoshka dimensions, on nested prefixes of them (Kusupati et al. 2022, arXiv 2205.13147).

Matryoshka: the loss of each prefix width d is computed on the first d coordinates of both embeddings,
re-normalised, and the losses are summed with weights (1 each by default, as in the paper), so that the first d
dimensions of any embedding are an embedding of their own. The full width is always one of them.
"""

import contextlib
import logging
from collections.abc import Callable, Sequence

import torch

from altclip.common.errors import UsageError

from .losses import ClipLoss, prefix, weighted_over_widths
from .sigmoid_loss import SIGLIP_LOGIT_BIAS_INIT, SIGLIP_LOGIT_SCALE_INIT, SigLipLoss

logger = logging.getLogger(__name__)

CONTRASTIVE_LOSSES = ("infonce", "siglip")

# (image_embeds, text_embeds, exp(logit_scale), logit_bias or None) -> loss
Objective = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def parse_dims(text: str | None, flag: str = "--matryoshka_dims") -> list[int]:
    """'64,128,256' as [64, 128, 256]; one line naming the flag and the value when it is not a list of positive
    integers."""
    if not text:
        return []
    try:
        values = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"{flag} {text!r}: give comma-separated whole numbers, e.g. 64,128,256.") from None
    if not values or any(value < 1 for value in values):
        raise UsageError(f"{flag} {text!r}: every width must be a positive whole number.")
    return values


def matryoshka_widths(dims: Sequence[int], full: int) -> list[int]:
    """The distinct widths of `dims`, smallest first, with the full width `full` last (added if absent); one line
    for a width above `full`."""
    if too_wide := [dim for dim in dims if dim > full]:
        raise UsageError(
            f"--matryoshka_dims {','.join(map(str, dims))}: {too_wide[0]} is wider than the model's embeddings "
            f"(projection_dim {full}); give widths up to {full}."
        )
    return sorted({*dims, full})


def matryoshka_weights(text: str | None, widths: Sequence[int]) -> list[float]:
    """One weight per width (``--matryoshka_weights``), 1 each when not given."""
    if not text:
        return [1.0] * len(widths)
    weights = parse_weights(text)
    if len(weights) != len(widths):
        raise UsageError(
            f"--matryoshka_weights {text!r}: give {len(widths)} non-negative weights (not all 0), one per width "
            f"{','.join(map(str, widths))} (the full width is always trained, last)."
        )
    return weights


def parse_weights(text: str) -> list[float]:
    """``--matryoshka_weights`` as numbers: non-negative, not all 0."""
    try:
        weights = [float(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--matryoshka_weights {text!r}: give comma-separated numbers.") from None
    if not weights or any(not weight >= 0 for weight in weights) or not any(weights):
        raise UsageError(f"--matryoshka_weights {text!r}: give non-negative numbers, not all 0.")
    return weights


class MatryoshkaLoss(torch.nn.Module):
    """The weighted sum over `widths` of `loss` on each prefix of both embeddings: for the sigmoid loss, whose ring
    exchange runs once per width (InfoNCE computes its widths from one gather: `ClipLoss`'s `widths`)."""

    def __init__(self, loss: Objective, widths: Sequence[int], weights: Sequence[float]):
        super().__init__()
        self.loss, self.widths, self.weights = loss, list(widths), list(weights)

    def forward(self, images, texts, scale, bias=None) -> torch.Tensor:
        return weighted_over_widths(
            self.widths, self.weights, lambda width: self.loss(prefix(images, width), prefix(texts, width), scale, bias)
        )


class _InfoNCE(torch.nn.Module):
    """`ClipLoss` with the objective's signature (a logit bias does not change a softmax; there is none), on the
    Matryoshka `widths` if given."""

    def __init__(self, gather_with_grad: bool, widths: Sequence[int] = (), weights: Sequence[float] | None = None):
        super().__init__()
        self.clip_loss = ClipLoss(gather_with_grad=gather_with_grad, widths=widths, weights=weights)

    def forward(self, images, texts, scale, bias=None) -> torch.Tensor:
        return self.clip_loss(images, texts, scale)


class _Sigmoid(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.siglip = SigLipLoss()

    def forward(self, images, texts, scale, bias=None) -> torch.Tensor:
        if bias is None:
            raise ValueError("The sigmoid loss needs the model's logit_bias; see contrastive_objective.add_logit_bias.")
        return self.siglip(images, texts, scale, bias)


def contrastive_objective(
    loss: str = "infonce",
    gather_with_grad: bool = True,
    widths: Sequence[int] = (),
    weights: Sequence[float] | None = None,
) -> Objective:
    """The loss named `loss`, on nested prefixes when more than one width is given."""
    if loss not in CONTRASTIVE_LOSSES:
        raise UsageError(f"--loss {loss!r}: choose one of {', '.join(CONTRASTIVE_LOSSES)}.")
    nested = len(widths) > 1
    weights = list(weights) if weights is not None else [1.0] * len(widths)
    if loss == "infonce":
        return _InfoNCE(gather_with_grad, widths if nested else (), weights if nested else None)
    return MatryoshkaLoss(_Sigmoid(), widths, weights) if nested else _Sigmoid()


@torch.no_grad()
def add_logit_bias(model, reset_temperature: bool = True) -> bool:
    """Gives `model` SigLIP's learnable logit bias (-10) and, with `reset_temperature`, its temperature init (log
    10), recorded in its config; a model that already has a bias (trained with this loss before) keeps both.
    Returns whether the model changed."""
    if getattr(model, "logit_bias", None) is not None:
        return False
    parameter = model.logit_scale
    model.logit_bias = torch.nn.Parameter(
        torch.full((1,), SIGLIP_LOGIT_BIAS_INIT, dtype=parameter.dtype, device=parameter.device)
    )
    model.config.logit_bias_init_value = SIGLIP_LOGIT_BIAS_INIT
    if reset_temperature:
        with modifiable(parameter):
            parameter.data.fill_(SIGLIP_LOGIT_SCALE_INIT)
    return True


def modifiable(parameter: torch.nn.Parameter):
    """A context in which a ZeRO-3-partitioned `parameter` is whole and written back from rank 0; a no-op
    otherwise."""
    if not hasattr(parameter, "ds_id"):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters([parameter], modifier_rank=0)


def check_objective_flags(stage_args) -> None:
    """``--loss``/``--matryoshka_*`` values no run can use, refused in one line before any model loads."""
    widths = parse_dims(stage_args.matryoshka_dims)
    if stage_args.matryoshka_weights and not widths:
        raise UsageError("--matryoshka_weights needs --matryoshka_dims (the widths they weigh).")
    if stage_args.matryoshka_weights:  # their count is checked once the model's full width is known
        parse_weights(stage_args.matryoshka_weights)
    if stage_args.loss == "siglip" and not stage_args.gather_with_grad:
        raise UsageError(
            "--loss siglip exchanges text features between ranks with their gradients (no rank holds the whole "
            "batch); --gather_with_grad false applies to --loss infonce only: drop it."
        )


def objective_for(stage_args, model, lora: bool = False) -> Objective:
    """The objective of ``--loss`` and ``--matryoshka_dims`` for `model`: SigLIP's bias added to the model where it
    has none, and the trained widths recorded in its config (None: this run trained the full width only)."""
    if stage_args.loss == "siglip" and lora and getattr(model, "logit_bias", None) is None:
        raise UsageError(
            "--loss siglip on a model trained without it starts a new temperature (10) and bias (-10), which LoRA "
            "(--lora_r) would keep frozen; train it with --loss siglip without LoRA first, or use --loss infonce."
        )
    if stage_args.loss == "siglip" and add_logit_bias(model):
        logger.info("--loss siglip: added logit_bias = %s and set logit_scale to log(10)", SIGLIP_LOGIT_BIAS_INIT)
    dims = parse_dims(stage_args.matryoshka_dims)
    widths = matryoshka_widths(dims, model.config.projection_dim) if dims else []
    weights = matryoshka_weights(stage_args.matryoshka_weights, widths) if widths else None
    model.config.matryoshka_dims = widths or None
    if widths:
        logger.info("Matryoshka widths %s, weights %s", widths, weights)
    return contrastive_objective(stage_args.loss, stage_args.gather_with_grad, widths, weights)
