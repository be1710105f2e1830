"""Parallel text for teacher learning: (English, translation) pairs from several files mixed by weight.

Each pair gives the student two rows with the same target, the teacher's feature of the English side:
the translation (new language) and the English sentence itself (so English ability is kept).
"""

import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, IterableDataset

from .mixing import interleave, shard_position, weighted_selection
from .records import Record, SkipCounter, Skipped, iter_records, split_skipped

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillationExample:
    """One student row: the text the student reads and the English text whose teacher feature is its target."""

    student_text: str
    teacher_text: str


def _pair_from(record: Record, english_column: str, translation_column: str) -> tuple[str, str] | Skipped:
    english, translation = record.fields.get(english_column), record.fields.get(translation_column)
    for name, value in ((english_column, english), (translation_column, translation)):
        if not isinstance(value, str):
            return Skipped(record.where, f"{name} is {type(value).__name__}, not text")
        if not value.strip():
            return Skipped(record.where, f"empty {name}")
    return english.strip(), translation.strip()


def read_parallel_pairs(path: str, english_column: str, translation_column: str) -> Iterator[tuple[str, str] | Skipped]:
    """(english, translation) pairs of one file, or `Skipped` for unusable rows."""
    for row in iter_records(path, (english_column, translation_column)):
        yield row if isinstance(row, Skipped) else _pair_from(row, english_column, translation_column)


def _examples_of(english: str, translation: str, include_english: bool) -> list[DistillationExample]:
    examples = [DistillationExample(translation, english)]
    if include_english and translation != english:
        examples.append(DistillationExample(english, english))
    return examples


class ParallelTextDataset(Dataset):
    """All pairs in memory (map-style): shuffled by the Trainer, split across ranks by its sampler.

    English-English rows are kept once per distinct English sentence, however many languages translate it.
    """

    def __init__(
        self,
        files: Sequence[str],
        english_column: str = "english",
        translation_column: str = "translation",
        weights: Sequence[float] | None = None,
        include_english_pairs: bool = True,
        seed: int = 0,
    ):
        self.skipped = SkipCounter()
        per_file: list[list[DistillationExample]] = []
        english_seen: set[str] = set()
        english_rows: list[DistillationExample] = []
        for path in files:
            rows = []
            for item in read_parallel_pairs(path, english_column, translation_column):
                if isinstance(item, Skipped):
                    self.skipped.add(item)
                    continue
                english, translation = item
                rows.append(DistillationExample(translation, english))
                if include_english_pairs and english not in english_seen:
                    english_seen.add(english)
                    english_rows.append(DistillationExample(english, english))
            if not rows:
                raise ValueError(f"{path} holds no usable (english, translation) pair.")
            per_file.append(rows)
            logger.info("Read %d pairs from %s", len(rows), path)
        selection = weighted_selection([len(rows) for rows in per_file], weights, seed)
        self.examples = [per_file[source][index] for source, index in selection] + english_rows
        self.english_texts = sorted(english_seen | {example.teacher_text for example in self.examples})
        self._english_index = {text: index for index, text in enumerate(self.english_texts)}

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        example = self.examples[index]
        return {
            "student_text": example.student_text,
            "teacher_text": example.teacher_text,
            "teacher_index": self._english_index[example.teacher_text],
        }


class StreamingParallelText(IterableDataset):
    """Pairs read lazily from files too large for memory; each rank and worker reads every n-th row of each file.

    One pass ends when every file has been read through at least once (shorter files restart); the Trainer
    needs ``max_steps`` for such a dataset.
    """

    def __init__(
        self,
        files: Sequence[str],
        english_column: str = "english",
        translation_column: str = "translation",
        weights: Sequence[float] | None = None,
        include_english_pairs: bool = True,
        seed: int = 0,
    ):
        for path in files:  # fail on unreadable files and missing columns now, not inside a worker
            next(iter(read_parallel_pairs(path, english_column, translation_column)), None)
        self.files, self.weights, self.seed, self.epoch = list(files), weights, seed, 0
        self.columns = (english_column, translation_column)
        self.include_english_pairs = include_english_pairs

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rows_of(self, path: str) -> Iterator[dict]:
        shard, shards = shard_position()
        for position, item in enumerate(read_parallel_pairs(path, *self.columns)):
            if position % shards != shard:
                continue
            if isinstance(item, Skipped):
                yield {"skipped": item}
                continue
            for example in _examples_of(item[0], item[1], self.include_english_pairs):
                yield {"student_text": example.student_text, "teacher_text": example.teacher_text}

    def __iter__(self) -> Iterator[dict]:
        shard, _ = shard_position()
        rng = random.Random(self.seed * 1_000_003 + self.epoch * 7919 + shard)
        yield from interleave([lambda path=path: self._rows_of(path) for path in self.files], self.weights, rng)


class DistillationCollator:
    """Tokenizes a batch for both towers: the student's XLM-R tokenizer and the teacher's CLIP tokenizer.

    With ``teacher_features`` (a precomputed [N, D] array) the teacher's side is a lookup instead.
    """

    def __init__(self, student_tokenizer, teacher_tokenizer, max_length: int = 77, teacher_features=None):
        self.student_tokenizer = student_tokenizer
        self.teacher_tokenizer = teacher_tokenizer
        self.max_length = max_length
        self.teacher_features = teacher_features

    def __call__(self, rows: list[dict]) -> dict:
        rows, skipped = split_skipped(rows)
        student = self.student_tokenizer(
            [row["student_text"] for row in rows],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        batch = {
            "input_ids": student["input_ids"],
            "attention_mask": student["attention_mask"],
            "skipped": skipped,
        }
        if self.teacher_features is not None:
            indices = [row["teacher_index"] for row in rows]
            batch["teacher_features"] = torch.from_numpy(self.teacher_features[indices].astype("float32"))
        else:
            teacher = self.teacher_tokenizer(
                [row["teacher_text"] for row in rows],
                padding=True,
                truncation=True,
                max_length=self.teacher_max_length,
                return_tensors="pt",
            )
            batch["teacher_input_ids"] = teacher["input_ids"]
            batch["teacher_attention_mask"] = teacher["attention_mask"]
        return batch

    @property
    def teacher_max_length(self) -> int:
        return min(self.teacher_tokenizer.model_max_length, 77)
