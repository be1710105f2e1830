"""Parallel text for teacher learning: (English, translation) pairs from memory-mapped tables.

Each pair gives the student a row whose target is the teacher's feature of the English side; with
``include_english_pairs`` every distinct English sentence also gives one English-English row (so English ability
is kept). Index i < pairs is pair i; index pairs + g is distinct English sentence g.
"""

import hashlib
import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from altclip.common.constants import DEFAULT_MAX_TEXT_LENGTH
from altclip.common.records import DataFormatError, Skipped, split_skipped

from ..loop.teacher import teacher_max_length
from .sources import Source
from .tables import SKIPPED, TableRows

logger = logging.getLogger(__name__)

NO_GROUP = -1


def _text_hashes(texts: list) -> np.ndarray:
    """Stable 8-byte hashes of stripped texts (the same in every process; empty or missing text hashes to 0)."""
    digests = b"".join(
        hashlib.blake2b(text.strip().encode("utf-8"), digest_size=8).digest()
        if isinstance(text, str) and text.strip()
        else bytes(8)
        for text in texts
    )
    return np.frombuffer(digests, dtype=np.uint64)


def _has_text(texts: list) -> np.ndarray:
    return np.fromiter((isinstance(text, str) and bool(text.strip()) for text in texts), dtype=bool, count=len(texts))


def english_groups(rows: TableRows, english_column: str, translation_column: str) -> tuple[np.ndarray, np.ndarray, str]:
    """(group of every row, first row of every group, digest of the distinct English sentences): usable pairs with
    the same stripped English sentence share a group; skipped rows and pairs with an empty side get `NO_GROUP`.
    Hashes, not strings: ~16 bytes a row."""
    hashes = np.concatenate([_text_hashes(batch) for batch in rows.column_batches(english_column)])
    translated = np.concatenate([_has_text(batch) for batch in rows.column_batches(translation_column)])
    usable = ~rows.skipped_mask() & (hashes != 0) & translated
    groups = np.full(len(hashes), NO_GROUP, dtype=np.int64)
    usable_rows = np.flatnonzero(usable)
    distinct, first, inverse = np.unique(hashes[usable_rows], return_index=True, return_inverse=True)
    groups[usable_rows] = inverse
    dtype = np.int32 if len(first) < 2**31 else np.int64
    return groups.astype(dtype), usable_rows[first], hashlib.sha256(distinct.tobytes()).hexdigest()


class ParallelText(Dataset):
    """Map-style stage-1 rows over memory-mapped tables (see the module docstring for the index layout)."""

    def __init__(
        self,
        sources: Sequence[Source],
        english_column: str = "english",
        translation_column: str = "translation",
        include_english_pairs: bool = True,
        cache_dir: str | None = None,
        build_processes: int | None = None,
    ):
        self.columns = (english_column, translation_column)
        self.rows = TableRows(sources, self.columns, cache_dir, build_processes)
        self.groups, self.first_row_of_group, self.corpus_digest = english_groups(
            self.rows, english_column, translation_column
        )
        self.pairs = len(self.rows)
        self.english_rows = len(self.first_row_of_group) if include_english_pairs else 0
        self.english_texts = EnglishSentences(self)
        if not len(self.first_row_of_group):
            raise DataFormatError(
                f"{', '.join(source.spec for source in sources)} holds no usable (english, translation) pair."
            )
        logger.info(
            "Parallel text: %d pairs in %d source(s), %d distinct English sentences",
            self.pairs,
            len(sources),
            len(self.first_row_of_group),
        )

    @property
    def sizes(self) -> list[int]:
        """Rows of each source (the pairs that weights mix); English rows come after them."""
        return self.rows.sizes

    def __len__(self) -> int:
        return self.pairs + self.english_rows

    def english_of_group(self, group: int) -> str:
        return self.rows.row(int(self.first_row_of_group[group]))[1][self.columns[0]].strip()

    def __getitem__(self, index: int) -> dict:
        if index >= self.pairs:
            group = index - self.pairs
            where, fields = self.rows.row(int(self.first_row_of_group[group]))
            english = fields[self.columns[0]].strip()
            return {"student_text": english, "teacher_text": english, "teacher_index": group, "key": f"{where}#en"}
        where, fields = self.rows.row(index)
        if fields.get(SKIPPED):
            return {"skipped": Skipped(where, fields[SKIPPED])}
        english, translation = (fields[column].strip() for column in self.columns)
        for name, value in zip(self.columns, (english, translation)):
            if not value:
                return {"skipped": Skipped(where, f"empty {name}")}
        return {
            "student_text": translation,
            "teacher_text": english,
            "teacher_index": int(self.groups[index]),
            "key": where,
        }


class EnglishSentences(Sequence):
    """The distinct English sentences in group order, read lazily from the tables (teacher precompute input)."""

    def __init__(self, dataset: ParallelText):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset.first_row_of_group)

    def __getitem__(self, item):
        if isinstance(item, slice):
            return [self.dataset.english_of_group(group) for group in range(*item.indices(len(self)))]
        return self.dataset.english_of_group(item)


def usable_or_placeholder(rows: list[dict], placeholder: dict) -> tuple[list[dict], dict]:
    """A batch whose every row was skipped still runs one `placeholder` row, marked ``usable_rows=0``: the trainer
    cuts its outputs to zero rows before the loss, so every rank still takes part in the step and its collectives
    (a zero-row forward is not possible through CLIP's attention) while the placeholder adds nothing."""
    return (rows, {}) if rows else ([placeholder], {"usable_rows": 0})


class DistillationCollator:
    """Tokenizes a batch for both towers: the student's XLM-R tokenizer and the teacher's (CLIP's, or the
    student's own for ``--teacher self``), the teacher's up to `teacher_length` tokens (default CLIP's 77).

    With ``teacher_features`` (a precomputed [groups, D] array) the teacher's side is a lookup instead.
    """

    def __init__(
        self,
        student_tokenizer,
        teacher_tokenizer,
        max_length: int = DEFAULT_MAX_TEXT_LENGTH,
        teacher_features=None,
        teacher_length: int | None = None,
    ):
        self.student_tokenizer = student_tokenizer
        self.teacher_tokenizer = teacher_tokenizer
        self.max_length = max_length
        self.teacher_features = teacher_features
        if teacher_length is None and teacher_tokenizer is not None:
            teacher_length = teacher_max_length(teacher_tokenizer)
        self.teacher_length = teacher_length

    def _tokens(self, tokenizer, texts: list[str], max_length: int) -> dict:
        return tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")

    def __call__(self, rows: list[dict]) -> dict:
        rows, skipped = split_skipped(rows)
        rows, marker = usable_or_placeholder(rows, {"student_text": "", "teacher_text": "", "teacher_index": 0})
        student = self._tokens(self.student_tokenizer, [row["student_text"] for row in rows], self.max_length)
        batch = {
            "input_ids": student["input_ids"],
            "attention_mask": student["attention_mask"],
            "skipped": skipped,
            "keys": [row["key"] for row in rows if row.get("key")],
            **marker,
        }
        if self.teacher_features is not None:
            indices = [row["teacher_index"] for row in rows]
            batch["teacher_features"] = torch.from_numpy(np.asarray(self.teacher_features[indices], dtype=np.float32))
        else:
            teacher_texts = [row["teacher_text"] for row in rows]
            teacher = self._tokens(self.teacher_tokenizer, teacher_texts, self.teacher_length)
            batch["teacher_input_ids"] = teacher["input_ids"]
            batch["teacher_attention_mask"] = teacher["attention_mask"]
        return batch
