"""matplotlib without a display (the Agg backend), for the PNGs every job draws next to its JSON."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plt"]
