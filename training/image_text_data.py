"""Image-caption pairs for contrastive learning: JSONL/CSV/TSV tables of image paths, `datasets` folders with an
image column, and webdataset-style ``.tar`` shards (``key.jpg`` + ``key.txt`` or ``key.json``).

Images are decoded where the rows are read, i.e. in DataLoader workers. A missing or corrupt image or an empty
caption becomes a `Skipped` row that the collator counts; it never stops training.
"""

import io
import json
import logging
import random
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset

from .mixing import interleave, shard_position, weighted_selection
from .records import DataFormatError, SkipCounter, Skipped, iter_records, record_format, split_skipped

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp", "bmp", "gif")
CAPTION_SUFFIXES = ("txt", "json")
MAX_IMAGE_PIXELS = 178_956_970  # Pillow's own decompression-bomb limit, applied explicitly


def open_rgb_image(source: Any, min_side: int | None = None) -> Image.Image:
    """A decoded RGB image from a path, raw bytes or a PIL image (palette, grey and alpha images converted).

    With `min_side`, a JPEG is decoded directly at the smallest DCT scale (1/2, 1/4, 1/8) that keeps both sides at
    least `min_side` pixels: much less decoding and resizing for a model that looks at 224 pixels.
    """
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, (bytes, bytearray)):
        image = Image.open(io.BytesIO(source))
    elif isinstance(source, dict) and ("bytes" in source or "path" in source):  # datasets' undecoded Image
        return open_rgb_image(source.get("bytes") or source["path"], min_side)
    else:
        image = Image.open(source)
    if image.width * image.height > MAX_IMAGE_PIXELS:
        raise ValueError(f"image of {image.width}x{image.height} pixels is larger than {MAX_IMAGE_PIXELS}")
    if min_side and image.format == "JPEG" and min(image.size) >= 2 * min_side:
        image.draft("RGB", (min_side, min_side))
    image.load()
    return image if image.mode == "RGB" else image.convert("RGB")


class PairDecoder:
    """Turns a raw (image source, caption) row into model inputs, or `Skipped` with the reason."""

    def __init__(self, image_processor):
        self.image_processor = image_processor

    def __call__(self, where: str, image_source: Any, caption: Any) -> dict:
        if not isinstance(caption, str) or not caption.strip():
            return {"skipped": Skipped(where, "empty caption")}
        try:
            image = open_rgb_image(image_source)
        except FileNotFoundError:
            return {"skipped": Skipped(where, f"image file not found ({image_source})")}
        except Exception as error:  # PIL raises many types for corrupt data; all mean the same here
            return {"skipped": Skipped(where, f"unreadable image ({type(error).__name__}: {error})")}
        pixel_values = self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]
        return {"pixel_values": pixel_values, "caption": caption.strip()}


def _table_rows(path: str, image_column: str, caption_column: str, image_root: str | None) -> Iterator[tuple]:
    """(where, image source, caption) of a table or saved dataset; relative paths resolve against `image_root`
    or the table's own folder."""
    root = Path(image_root) if image_root else Path(path).parent
    for row in iter_records(path, (image_column, caption_column)):
        if isinstance(row, Skipped):
            yield row.where, None, Skipped(row.where, row.reason)
            continue
        image = row.fields[image_column]
        if isinstance(image, str):
            image = root / image
        yield row.where, image, row.fields[caption_column]


def _tar_rows(path: str) -> Iterator[tuple]:
    """(where, image bytes, caption) of a webdataset shard: members grouped by the name before the first dot."""

    def finish(key: str, members: dict[str, bytes]) -> tuple:
        where = f"{path}:{key}"
        image = next((members[s] for s in IMAGE_SUFFIXES if s in members), None)
        if image is None:
            return where, None, Skipped(where, f"no image among {sorted(members)}")
        if "txt" in members:
            caption = members["txt"].decode("utf-8", errors="replace")
        elif "json" in members:
            try:
                caption = json.loads(members["json"]).get("caption", "")
            except (json.JSONDecodeError, AttributeError):
                return where, None, Skipped(where, "caption JSON is not an object with 'caption'")
        else:
            return where, None, Skipped(where, "no caption (.txt or .json)")
        return where, image, caption

    try:
        with tarfile.open(path, mode="r|*") as archive:
            key, members = None, {}
            for member in archive:
                if not member.isfile():
                    continue
                name = Path(member.name)
                stem, _, suffix = name.name.partition(".")
                member_key = str(name.parent / stem)
                if key is not None and member_key != key:
                    yield finish(key, members)
                    members = {}
                key = member_key
                members[suffix.lower()] = archive.extractfile(member).read()
            if key is not None:
                yield finish(key, members)
    except (tarfile.TarError, OSError, EOFError) as error:
        yield f"{path}", None, Skipped(path, f"unreadable tar shard ({error})")


def raw_rows(path: str, image_column: str, caption_column: str, image_root: str | None) -> Iterator[tuple]:
    if record_format(path) == "tar":
        return _tar_rows(path)
    return _table_rows(path, image_column, caption_column, image_root)


class ImageTextDataset(Dataset):
    """Rows of tables or saved datasets, held as (image source, caption) in memory; images decoded on access."""

    def __init__(
        self,
        files: Sequence[str],
        image_processor,
        image_column: str = "image",
        caption_column: str = "caption",
        image_root: str | None = None,
        weights: Sequence[float] | None = None,
        seed: int = 0,
    ):
        self.decode = PairDecoder(image_processor)
        self.skipped = SkipCounter()
        per_file: list[list[tuple]] = []
        for path in files:
            if record_format(path) == "tar":
                raise DataFormatError(f"{path}: tar shards are read as a stream; pass --streaming true.")
            rows = []
            for where, image, caption in _table_rows(path, image_column, caption_column, image_root):
                if isinstance(caption, Skipped):
                    self.skipped.add(caption)
                else:
                    rows.append((where, image, caption))
            per_file.append(rows)
        selection = weighted_selection([len(rows) for rows in per_file], weights, seed)
        self.rows = [per_file[source][index] for source, index in selection]
        if not self.rows:
            raise ValueError(f"No usable image-caption row in {', '.join(files)}.")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.decode(*self.rows[index])


class StreamingImageTextDataset(IterableDataset):
    """Rows streamed from tar shards or large tables. Shards are split across ranks and workers file by file when
    there are enough of them, row by row otherwise. Needs ``max_steps``."""

    def __init__(
        self,
        files: Sequence[str],
        image_processor,
        image_column: str = "image",
        caption_column: str = "caption",
        image_root: str | None = None,
        weights: Sequence[float] | None = None,
        seed: int = 0,
    ):
        for path in files:
            if record_format(path) != "tar":  # unknown formats and missing files fail now
                next(iter(_table_rows(path, image_column, caption_column, image_root)), None)
        self.files, self.weights, self.seed, self.epoch = list(files), weights, seed, 0
        self.columns = (image_column, caption_column, image_root)
        self.decode = PairDecoder(image_processor)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rows(self, paths: Sequence[str], shard: int, shards: int) -> Iterator[dict]:
        for path in paths:
            for position, (where, image, caption) in enumerate(raw_rows(path, *self.columns)):
                if shards > 1 and position % shards != shard:
                    continue
                yield {"skipped": caption} if isinstance(caption, Skipped) else self.decode(where, image, caption)

    def __iter__(self) -> Iterator[dict]:
        shard, shards = shard_position()
        rng = random.Random(self.seed * 1_000_003 + self.epoch * 7919 + shard)
        if self.weights is None and len(self.files) >= shards:
            mine = self.files[shard::shards]
            rng.shuffle(mine)
            yield from self._rows(mine, 0, 1)
            return
        sources = [lambda path=path: self._rows([path], shard, shards) for path in self.files]
        yield from interleave(sources, self.weights, rng)


class ContrastiveCollator:
    """Stacks decoded images, tokenizes captions with dynamic padding, and passes the skipped rows on."""

    def __init__(self, tokenizer, max_length: int = 77):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, rows: list[dict]) -> dict:
        rows, skipped = split_skipped(rows)
        text = self.tokenizer(
            [row["caption"] for row in rows],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
            "pixel_values": torch.stack([row["pixel_values"] for row in rows]),
            "skipped": skipped,
        }
