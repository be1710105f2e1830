"""`evaluate` metric modules of this repository, loaded by path (``evaluate.load(name)`` would need the network)."""

from functools import cache
from pathlib import Path

METRICS_DIR = Path(__file__).parent


@cache
def load_metric(name: str):
    """``zeroshot_accuracy`` or ``retrieval_recall`` as an `evaluate.Metric`."""
    import evaluate

    return evaluate.load(str(METRICS_DIR / name))
