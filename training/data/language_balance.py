"""Language balancing: sampling sources, and languages within a table, by their size to the power alpha.

XLM-R (Conneau et al. 2020, alpha 0.3) and mT5 (Xue et al. 2021, alpha 0.3) sample language l with probability
q_l = n_l^alpha / sum_k n_k^alpha: alpha 1 keeps the natural mix, alpha 0 samples every language alike, values in
between lift small languages without drowning in their repeats. Here that runs at two levels:

- ``--language_sampling_alpha A`` weighs each ``--train_files`` source by its samples n^A (in place of
  ``--train_file_weights``), for tables and webdataset shards alike (the existing source weighting then applies);
- with ``--language_column NAME`` (tables), a source's rows are further grouped by that column and the source's
  samples per epoch are shared among its languages by n^A as well.

An epoch keeps its length (the rows of all sources); a language drawn more often than it has rows repeats rows
(each row once before any row twice), one drawn less often trains a different subset each epoch. Without alpha
nothing is weighted: every row once per epoch, and ``--language_column`` only reports the languages.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from altclip.common.errors import UsageError
from altclip.common.records import DataFormatError

from .epoch_plan import drawn_per_source
from .sources import Source
from .tables import SKIPPED, open_table

logger = logging.getLogger(__name__)

NO_LANGUAGE = "(none)"  # rows whose language cell is empty, or a source whose table has no such column
SLICE_ROWS = 1 << 20  # rows of the language column looked up at a time


def size_weights(sizes: Sequence[int], alpha: float) -> list[float]:
    """n^alpha of each size (0 for an empty source)."""
    return [float(size) ** alpha if size else 0.0 for size in sizes]


def shares(total: int, sizes: Sequence[int], alpha: float | None) -> list[int]:
    """`total` split over groups of `sizes` by n^alpha, whole numbers summing to `total` (largest remainders);
    alpha None: the sizes themselves (every row once)."""
    if alpha is None:
        return list(sizes)
    weights = np.asarray(size_weights(sizes, alpha))
    if not weights.sum():
        return [0] * len(sizes)
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(np.int64)
    for index in np.argsort(-(exact - counts), kind="stable")[: total - int(counts.sum())]:
        counts[index] += 1
    return counts.tolist()


def check_balancing_flags(data_args, sources: Sequence[Source]) -> None:
    """Flag combinations balancing cannot use, in one line before anything loads."""
    alpha = data_args.language_sampling_alpha
    if alpha is not None and not 0 <= alpha <= 1:
        raise UsageError(
            f"--language_sampling_alpha {alpha}: give a value in 0..1 (1: the natural mix, 0: every language alike; "
            "XLM-R and mT5 use 0.3)."
        )
    if alpha is not None and data_args.train_file_weights is not None:
        raise UsageError(
            "--language_sampling_alpha sets the sources' weights from their sizes; drop --train_file_weights (or "
            "drop --language_sampling_alpha to weigh them by hand)."
        )
    if data_args.language_column and sources[0].is_shards:
        raise UsageError(
            "--language_column groups table rows by language; webdataset shards stream and are not read ahead: "
            "give one --train_files source per language and --language_sampling_alpha instead."
        )


def with_size_weights(sources: Sequence[Source], samples: Sequence[int], alpha: float | None) -> list[Source]:
    """`sources` weighted by their `samples` to the power `alpha` (unchanged without alpha)."""
    if alpha is None:
        return list(sources)
    return [replace(source, weight=weight) for source, weight in zip(sources, size_weights(samples, alpha))]


@dataclass
class LanguageGroup:
    source: int
    language: str
    indices: np.ndarray  # global row indices (the dataset's, sources back to back)
    samples_per_epoch: int


class LanguagePlan:
    """Each source's rows grouped by language, with the samples each group gets per epoch."""

    def __init__(self, groups: list[LanguageGroup], specs: Sequence[str], alpha: float | None):
        self.groups, self.specs, self.alpha = groups, list(specs), alpha

    @property
    def samples_per_epoch(self) -> int:
        return sum(group.samples_per_epoch for group in self.groups)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """One epoch's row indices (unshuffled across groups): each group's rows permuted, repeated where it gets
        more samples than rows, cut where fewer (a different subset every epoch)."""
        parts = []
        for group in self.groups:
            size, wanted = len(group.indices), group.samples_per_epoch
            if wanted == 0 or size == 0:
                continue
            order = np.concatenate([rng.permutation(size) for _ in range(-(-wanted // size))])[:wanted]
            parts.append(group.indices[order])
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def report(self) -> list[dict]:
        """Rows and samples per epoch of every (source, language), as the plan prints them."""
        return [
            {
                "source": self.specs[group.source],
                "language": group.language,
                "rows": len(group.indices),
                "samples_per_epoch": group.samples_per_epoch,
            }
            for group in self.groups
        ]


def language_plan(
    rows, language_column: str, alpha: float | None, weights: Sequence[float] | None, cache_dir: str | None = None
) -> LanguagePlan:
    """The `LanguagePlan` of a dataset's `rows` (`tables.TableRows`): each source's samples per epoch (its rows, or
    its share by `weights`) shared among its languages by n^alpha. The language column is read into an Arrow table
    of its own (one more pass over a text table on its first use, then cached) and grouped in Arrow and NumPy, with
    no Python object per row (``benchmarks/language_balance_memory.py``)."""
    per_source = rows.sizes if weights is None else drawn_per_source(rows.sizes, weights)
    groups = []
    for source_index, source in enumerate(rows.sources):
        names, members = language_groups(source, language_column, rows.sizes[source_index], cache_dir)
        for indices in members:  # views into one array of the source's rows: offset in place
            indices += rows.offsets[source_index]
        # without alpha a source's samples (its rows, or its --train_file_weights share) follow its languages' rows
        counts = shares(per_source[source_index], [len(m) for m in members], 1.0 if alpha is None else alpha)
        groups += [
            LanguageGroup(source_index, name, indices, count) for name, indices, count in zip(names, members, counts)
        ]
    return LanguagePlan(groups, [source.spec for source in rows.sources], alpha)


def language_groups(source: Source, column: str, rows: int, cache_dir: str | None) -> tuple[list[str], list]:
    """The languages of `source` (sorted) and the row indices of each (int64, ascending, counted from the source's
    first row): a row whose cell is empty or None, or whose line was skipped, is NO_LANGUAGE, as is every row of a
    table without the column."""
    try:
        table = open_table(source, [column], cache_dir)
    except DataFormatError as error:
        logger.warning("%s: no language column %r (%s); its rows count as one group", source.spec, column, error)
        return ([NO_LANGUAGE], [np.arange(rows, dtype=np.int64)]) if rows else ([], [])
    if len(table) != rows:  # both tables come from the same reader over the same lines: a bug if not
        raise RuntimeError(f"{source.spec}: {len(table)} language cells for {rows} rows.")
    skipped = table.data.column(SKIPPED) if SKIPPED in table.column_names else None
    return grouped_rows(*language_codes(table.data.column(column), skipped))


def language_name(value) -> str:
    """A language cell as the plan names it: its text, stripped; NO_LANGUAGE for None or an empty string."""
    return str(value).strip() if value not in (None, "") else NO_LANGUAGE


def language_codes(values: pa.ChunkedArray, skipped: pa.ChunkedArray | None = None) -> tuple[list[str], np.ndarray]:
    """(names, codes): the languages, sorted, each of which some row has, and every row's index into them (the
    smallest unsigned dtype that holds it). `language_name` is applied to each distinct cell, not to each row; a row
    whose `skipped` cell is set (a truthy reason) is NO_LANGUAGE."""
    labels, codes = distinct_codes(values, language_name)
    if skipped is not None:
        reasons, reason_codes = distinct_codes(skipped, bool)
        if any(reasons):
            lines = np.asarray(reasons, dtype=bool)[reason_codes]
            if lines.any():
                if NO_LANGUAGE not in labels:
                    labels.append(NO_LANGUAGE)
                codes[lines] = labels.index(NO_LANGUAGE)
    present = np.flatnonzero(np.bincount(codes, minlength=len(labels)))
    names = sorted(labels[index] for index in present)  # np.unique's order: Python's string comparison
    renumber = np.zeros(len(labels), dtype=np.min_scalar_type(max(len(names) - 1, 0)))
    position = {name: code for code, name in enumerate(names)}
    renumber[present] = [position[labels[index]] for index in present]
    return names, renumber[codes]


def grouped_rows(names: list[str], codes: np.ndarray) -> tuple[list[str], list[np.ndarray]]:
    """`names` and the ascending row indices of each, as views into one int64 array: a stable argsort of the codes
    (a radix sort while they fit 16 bits) cut at their counts."""
    if not names:
        return [], []
    order = np.argsort(codes, kind="stable").astype(np.int64, copy=False)
    ends = np.cumsum(np.bincount(codes, minlength=len(names)))
    return names, np.split(order, ends[:-1])


def distinct_codes(values: pa.ChunkedArray, label, slice_rows: int | None = None) -> tuple[list, np.ndarray]:
    """(labels, codes): `label` of the distinct values of `values` (a null is None), each label once in first-seen
    order, and every row's index into them (the smallest unsigned dtype that holds one more label). `label` runs
    once per distinct value; Arrow looks up the rows a slice at a time, so no array of every row is wider than the
    codes. A column Arrow cannot hash (lists, structs) is labelled in Python, one slice of rows at a time."""
    slice_rows = slice_rows or SLICE_ROWS
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    try:
        distinct = pc.unique(values)
        index: dict = {}
        lookup = [index.setdefault(label(value), len(index)) for value in distinct.to_pylist()]
        # one more label may join these: NO_LANGUAGE for skipped lines
        lookup = np.asarray(lookup, dtype=np.min_scalar_type(len(index)))
        codes = np.empty(len(values), dtype=lookup.dtype)
        for start in range(0, len(values), slice_rows):
            # nulls match the null in `distinct`
            rows = pc.index_in(values.slice(start, slice_rows), value_set=distinct).to_numpy()
            codes[start : start + len(rows)] = lookup[rows]
    except (pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return _sliced_codes(values, label, slice_rows)
    return list(index), codes


def _sliced_codes(values: pa.ChunkedArray, label, slice_rows: int) -> tuple[list, np.ndarray]:
    """`distinct_codes` for a column Arrow cannot hash: the Python values of one slice of rows at a time."""
    index: dict = {}
    codes = np.empty(len(values), dtype=np.int32)
    for start in range(0, len(values), slice_rows):
        part = [index.setdefault(label(value), len(index)) for value in values.slice(start, slice_rows).to_pylist()]
        codes[start : start + len(part)] = part
    return list(index), codes


def balance_tables(sources: Sequence[Source], dataset, data_args) -> tuple[list[Source], LanguagePlan | None]:
    """Table sources weighted by ``--language_sampling_alpha`` (from the dataset's rows per source) and, with
    ``--language_column``, the plan of languages within them."""
    from .sources import source_weights

    alpha = data_args.language_sampling_alpha
    sources = with_size_weights(sources, dataset.sizes, alpha)
    if not data_args.language_column:
        return sources, None
    plan = language_plan(
        dataset.rows, data_args.language_column, alpha, source_weights(sources), data_args.data_cache_dir
    )
    return sources, plan


def balance_shards(sources: Sequence[Source], shard_sizes: Sequence[int], alpha: float | None) -> list[Source]:
    """Shard sources weighted by ``--language_sampling_alpha`` from their samples (`shard_sizes`, per shard in
    source order)."""
    ends = np.cumsum([0, *(len(source.urls) for source in sources)])
    samples = [int(sum(shard_sizes[ends[i] : ends[i + 1]])) for i in range(len(sources))]
    return with_size_weights(sources, samples, alpha)
