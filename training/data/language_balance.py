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

from altclip.common.errors import UsageError
from altclip.common.records import DataFormatError

from .epoch_plan import drawn_per_source
from .sources import Source
from .tables import SKIPPED, open_table

logger = logging.getLogger(__name__)

NO_LANGUAGE = "(none)"  # rows whose language cell is empty, or a source whose table has no such column


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
    of its own (one more pass over a text table on its first use, then cached)."""
    per_source = rows.sizes if weights is None else drawn_per_source(rows.sizes, weights)
    groups = []
    for source_index, source in enumerate(rows.sources):
        languages = _languages(source, language_column, rows.sizes[source_index], cache_dir)
        names, inverse = np.unique(languages, return_inverse=True)
        members = [np.flatnonzero(inverse == k) + rows.offsets[source_index] for k in range(len(names))]
        # without alpha a source's samples (its rows, or its --train_file_weights share) follow its languages' rows
        counts = shares(per_source[source_index], [len(m) for m in members], 1.0 if alpha is None else alpha)
        groups += [
            LanguageGroup(source_index, str(name), indices.astype(np.int64), count)
            for name, indices, count in zip(names, members, counts)
        ]
    return LanguagePlan(groups, [source.spec for source in rows.sources], alpha)


def _languages(source: Source, column: str, rows: int, cache_dir: str | None) -> np.ndarray:
    """The language of every row of `source` (NO_LANGUAGE where empty, or for a table without the column)."""
    try:
        table = open_table(source, [column], cache_dir)
    except DataFormatError as error:
        logger.warning("%s: no language column %r (%s); its rows count as one group", source.spec, column, error)
        return np.full(rows, NO_LANGUAGE, dtype=object)
    if len(table) != rows:  # both tables come from the same reader over the same lines: a bug if not
        raise RuntimeError(f"{source.spec}: {len(table)} language cells for {rows} rows.")
    values = table.data.column(column).to_pylist()
    if SKIPPED in table.column_names:  # a line without a usable language cell
        skipped = table.data.column(SKIPPED).to_pylist()
        values = [None if reason else value for value, reason in zip(values, skipped)]
    names = [str(value).strip() if value not in (None, "") else NO_LANGUAGE for value in values]
    return np.asarray(names, dtype=object)


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
