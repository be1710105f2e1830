"""What a run leaves beside the model: a loss-curve PNG and a JSON summary, both written atomically."""

import json
import os
from pathlib import Path
from typing import Any

from altclip.common.constants import LOSS_CURVE_FILE
from altclip.common.constants import TRAINING_SUMMARY_FILE as SUMMARY_FILE
from altclip.common.files import replace_atomically
from altclip.common.plots import plt, save_png

__all__ = ["LOSS_CURVE_FILE", "SUMMARY_FILE", "save_loss_curve", "save_summary"]


def save_loss_curve(log_history: list[dict[str, Any]], path: str | os.PathLike, title: str) -> Path:
    """Training (and evaluation, if any) loss against optimizer step, as a PNG."""
    path = Path(path)
    figure, axis = plt.subplots(figsize=(7, 4), dpi=120)
    for key, label in (("loss", "train"), ("eval_loss", "eval")):
        points = [(entry["step"], entry[key]) for entry in log_history if key in entry]
        if points:
            steps, values = zip(*points)
            axis.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=label)
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("loss")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    if axis.get_legend_handles_labels()[0]:
        axis.legend()
    figure.tight_layout()
    save_png(figure, path)
    return path


def save_summary(summary: dict[str, Any], path: str | os.PathLike) -> Path:
    path = Path(path)
    replace_atomically(path, lambda partial: partial.write_text(json.dumps(summary, indent=2, ensure_ascii=False)))
    return path
