"""matplotlib without a display (the Agg backend), for the PNGs every job draws next to its JSON."""

from pathlib import Path

import matplotlib

from altclip.common.files import replace_atomically

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plt", "save_png"]


def save_png(figure, path: Path) -> None:
    """Writes `figure` to `path` as a PNG (whole or not at all: a reader never sees half a picture), then closes it."""
    try:
        replace_atomically(Path(path), lambda partial: figure.savefig(partial, format="png"))
    finally:
        plt.close(figure)
