"""Length-sorted text batches: each batch holds texts of similar length, so padding to its longest wastes little."""

from collections.abc import Sequence


def length_sorted_batches(texts: Sequence[str], batch_size: int) -> list[list[int]]:
    """Indices of `texts` in batches of `batch_size`, longest first (character length stands in for tokens)."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
