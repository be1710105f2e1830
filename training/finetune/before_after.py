"""What fine-tuning gained and what it forgot, in one run: the validation set (eval_loss) and the ``--zeroshot_*``
set scored before the first step and at the end, and WiSE-FT's alpha applied or chosen by a sweep.

The zero-shot side goes through the training job's `ZeroShotMonitor` (the same scoring as during training); the
numbers go to ``training_summary.json`` and a chart, ``before_after.png`` (the forgetting view).
"""

import logging
from pathlib import Path

import torch

from altclip.common.errors import PathError, UsageError
from altclip.common.plots import plt, save_png

from ..arguments import FineTuningArguments, ZeroShotArguments
from ..loop.zeroshot_monitor import ZeroShotMonitor, languages
from .wise_ft import ALPHA_DECIMALS, WeightInterpolation, parse_alphas

logger = logging.getLogger(__name__)

BEFORE_AFTER_CHART = "before_after.png"
LOWER_IS_BETTER = ("eval_loss",)


def check_fine_tuning_arguments(
    args: FineTuningArguments, zeroshot: ZeroShotArguments, has_validation: bool, training_args
) -> None:
    """One-line refusals before any model loads."""
    alphas = parse_alphas(args.wise_ft_sweep)
    if args.wise_ft_alpha is not None and not 0 <= args.wise_ft_alpha <= 1:
        raise UsageError(f"altclip-train: --wise_ft_alpha must be in [0, 1], not {args.wise_ft_alpha}.")
    if args.wise_ft_alpha is not None and alphas:
        raise UsageError("altclip-train: give --wise_ft_alpha or --wise_ft_sweep, not both.")
    has_zeroshot = bool(zeroshot.zeroshot_data_dir)
    if has_zeroshot and not Path(zeroshot.zeroshot_data_dir).is_dir():
        raise PathError(f"altclip-train: --zeroshot_data_dir {zeroshot.zeroshot_data_dir}: no such folder.")
    for flag, wanted in (("--before_after", args.before_after), ("--wise_ft_sweep", bool(alphas))):
        if wanted and not (has_validation or has_zeroshot):
            raise UsageError(
                f"altclip-train: {flag} scores the model on --validation_files and/or --zeroshot_data_dir; give one."
            )
    if alphas:
        if args.wise_ft_metric == "eval_loss" and not has_validation:
            raise UsageError("altclip-train: --wise_ft_metric eval_loss needs --validation_files.")
        if args.wise_ft_metric != "eval_loss" and not (args.wise_ft_metric.startswith("zeroshot/") and has_zeroshot):
            raise UsageError(
                f"altclip-train: --wise_ft_metric {args.wise_ft_metric!r}: choose eval_loss or a zero-shot score "
                f"zeroshot/{zeroshot.zeroshot_dataset}/LANGUAGE/top1 (with --zeroshot_data_dir)."
            )
        if args.wise_ft_metric != "eval_loss":
            check_zeroshot_metric(args.wise_ft_metric, zeroshot)
    if (alphas or args.wise_ft_alpha is not None) and (training_args.deepspeed or training_args.fsdp):
        raise UsageError(
            "altclip-train: --wise_ft_alpha/--wise_ft_sweep keep the start weights beside the trained ones; they run "
            "with DDP, not --deepspeed/--fsdp."
        )


def check_zeroshot_metric(metric: str, zeroshot: ZeroShotArguments) -> None:
    """A zero-shot --wise_ft_metric must name the scored dataset and one of --zeroshot_languages, or the sweep would
    score every alpha and find nothing to choose by."""
    parts = metric.split("/")
    scored = languages(zeroshot)
    example = f"zeroshot/{zeroshot.zeroshot_dataset}/{scored[0] if scored else 'en'}/top1"
    if len(parts) != 4 or parts[1] != zeroshot.zeroshot_dataset or not parts[3]:
        raise UsageError(f"altclip-train: --wise_ft_metric {metric!r}: a zero-shot score reads like {example}.")
    if parts[2] not in scored:
        raise UsageError(
            f"altclip-train: --wise_ft_metric {metric!r} names language {parts[2]!r}, which is not scored "
            f"(--zeroshot_languages {zeroshot.zeroshot_languages}); add it there or choose one of {', '.join(scored)}."
        )


def broadcast_from_main(value):
    """`value` as rank 0 has it, on every rank (scores are computed on rank 0 only)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        holder = [value]
        torch.distributed.broadcast_object_list(holder, src=0)
        return holder[0]
    return value


def score_model(trainer, monitor: ZeroShotMonitor | None, name: str) -> dict[str, float]:
    """eval_loss on the validation set (all ranks) and the zero-shot scores (rank 0), the same on every rank."""
    scores = {}
    if trainer.eval_dataset is not None:
        scores["eval_loss"] = trainer.evaluate()["eval_loss"]
    if monitor is not None:
        scores.update(monitor.score(trainer.state.global_step, name=name) or {})
    scores = broadcast_from_main(scores)
    logger.info("Scores (%s): %s", name, scores)
    return scores


def better(metric: str, candidate: float, best: float) -> bool:
    return candidate < best if metric in LOWER_IS_BETTER else candidate > best


def alpha_name(alpha: float) -> str:
    return f"wise-ft-{alpha:.{ALPHA_DECIMALS}g}"


class BeforeAfter:
    """Scores before the first step; at the end, WiSE-FT and the scores after; see the module docstring."""

    def __init__(self, trainer, args: FineTuningArguments, trained: torch.nn.Module, monitor: ZeroShotMonitor | None):
        self.trainer, self.args, self.monitor = trainer, args, monitor
        self.alphas = parse_alphas(args.wise_ft_sweep)
        interpolates = bool(self.alphas) or args.wise_ft_alpha is not None
        self.interpolation = WeightInterpolation(trained) if interpolates else None
        self.before = score_model(trainer, monitor, "before") if args.before_after else None

    @classmethod
    def start(cls, trainer, args: FineTuningArguments, zeroshot: ZeroShotArguments, trained, model, processor):
        """Before training: keeps the start weights (WiSE-FT) and scores the start model (``--before_after``)."""
        monitor = None
        if zeroshot.zeroshot_data_dir and (args.before_after or args.wise_ft_sweep):
            monitor = ZeroShotMonitor(zeroshot, model, processor)
            monitor.trainer = trainer
        return cls(trainer, args, trained, monitor)

    def finish(self) -> dict:
        """After training: applies the chosen alpha and scores the result; the summary's fields."""
        summary = {}
        if self.alphas:
            sweep = {alpha: score_model(self.trainer, self.monitor, self._apply(alpha)) for alpha in self.alphas}
            metric = self.args.wise_ft_metric
            scored = [alpha for alpha in self.alphas if metric in sweep[alpha]]
            if not scored:
                raise UsageError(f"altclip-train: the WiSE-FT sweep produced no {metric!r}; keeping nothing.")
            best = scored[0]
            for alpha in scored[1:]:
                if better(metric, sweep[alpha][metric], sweep[best][metric]):
                    best = alpha
            self._apply(best)
            summary["wise_ft"] = {"alpha": best, "metric": metric, "sweep": {str(a): s for a, s in sweep.items()}}
            after = sweep[best]
        else:
            if self.args.wise_ft_alpha is not None:
                self._apply(self.args.wise_ft_alpha)
                summary["wise_ft"] = {"alpha": self.args.wise_ft_alpha}
            after = score_model(self.trainer, self.monitor, "after") if self.args.before_after else None
        if self.before is not None:
            summary["before_after"] = {"before": self.before, "after": after}
        return summary

    def _apply(self, alpha: float) -> str:
        self.interpolation.apply(alpha)
        return alpha_name(alpha)


def save_before_after_chart(before: dict[str, float], after: dict[str, float], path: Path, title: str) -> Path | None:
    """One small bar pair per score (before, after); none when nothing was scored on both sides."""
    metrics = [metric for metric in before if metric in after]
    if not metrics:
        return None
    figure, axes = plt.subplots(1, len(metrics), figsize=(2.6 * len(metrics) + 1, 3.4), dpi=120, squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        values = [before[metric], after[metric]]
        bars = axis.bar(["before", "after"], values, color=["#9aa5b1", "#2b6cb0"])
        axis.bar_label(bars, fmt="%.3g", fontsize=8)
        hint = " (lower is better)" if metric in LOWER_IS_BETTER else ""
        axis.set_title(metric.removeprefix("zeroshot/") + hint, fontsize=8)
        axis.grid(axis="y", alpha=0.3)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    save_png(figure, path)
    return path
