"""Weight-space interpolation between the starting and the fine-tuned model (WiSE-FT, Wortsman et al. 2022).

``start + alpha * (fine-tuned - start)``: alpha 0 is the start model, 1 the fine-tuned one; in between usually keeps
most of the new domain's gain and most of what the start model knew. Only the trained parameters move, so only
they are kept (on the CPU). With LoRA the start adapter's B matrices are zero and the interpolated model is
``W + alpha * scale * B @ A``: B is scaled and A kept, which is the same update scaled, still an adapter.
Hand-written: neither peft nor transformers offers it (open_clip users do it by hand too).
"""

import torch

from altclip.common.errors import UsageError

# An interpolated alpha is written with this many decimals in names and summaries.
ALPHA_DECIMALS = 4


def parse_alphas(text: str | None) -> list[float]:
    """ "0,0.5,1" -> [0.0, 0.5, 1.0]; refused in one line when a value is not a number in [0, 1]."""
    if not text:
        return []
    alphas = []
    for part in text.split(","):
        try:
            alpha = float(part)
        except ValueError:
            raise UsageError(f"altclip-train: --wise_ft_sweep {text!r}: {part.strip()!r} is not a number.") from None
        if not 0 <= alpha <= 1:
            raise UsageError(f"altclip-train: --wise_ft_sweep {text!r}: {alpha} is outside [0, 1].")
        alphas.append(alpha)
    return sorted(set(alphas))


class WeightInterpolation:
    """The trained parameters of `model` as they start; later, any interpolation towards their fine-tuned values."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.start = self._snapshot()
        self.finetuned: dict[str, torch.Tensor] | None = None

    def _trained(self) -> dict[str, torch.nn.Parameter]:
        return {name: parameter for name, parameter in self.model.named_parameters() if parameter.requires_grad}

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {name: parameter.detach().to("cpu", copy=True) for name, parameter in self._trained().items()}

    def keep_finetuned(self) -> None:
        """Remembers the trained weights as training left them (call once, after the last step)."""
        self.finetuned = self._snapshot()

    @torch.no_grad()
    def apply(self, alpha: float) -> None:
        """Sets the trained parameters to the interpolation at `alpha` (exactly start at 0, fine-tuned at 1)."""
        if self.finetuned is None:
            self.keep_finetuned()
        for name, parameter in self._trained().items():
            start, end = self.start[name], self.finetuned[name]
            if ".lora_A." in name:  # the update is B @ A: scaling B alone scales it
                value = end
            else:  # torch.lerp returns `end` itself at weight 1 and `start` at 0
                value = torch.lerp(start.float(), end.float(), alpha).to(end.dtype)
            parameter.copy_(value.to(parameter.device))
