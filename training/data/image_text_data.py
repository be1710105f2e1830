"""Image-caption pairs for contrastive learning: JSONL/CSV/TSV tables of image paths, `datasets` folders with an
image column, and webdataset-style ``.tar`` shards (``key.jpg`` + ``key.txt`` or ``key.json``).

Images are decoded where the rows are read, i.e. in DataLoader workers. A missing or corrupt image or an empty
caption becomes a `Skipped` row that the collator counts; it never stops training.
"""

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from altclip.common.constants import DEFAULT_MAX_TEXT_LENGTH
from altclip.common.images import open_rgb_image
from altclip.common.records import Skipped, split_skipped

from ..loop.feature_caches import ImageEmbeddingCache
from .sources import Source, is_remote, join_url, open_stream
from .tables import SKIPPED, TableRows, source_folder
from .text_data import usable_or_placeholder

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp", "bmp", "gif")


def read_image(source: Any, min_side: int | None = None) -> Image.Image:
    """`common.images.open_rgb_image`, with remote URLs (https://, s3://, hf://, ...) fetched first."""
    if isinstance(source, str) and is_remote(source):
        with open_stream(source) as handle:
            source = handle.read()
    return open_rgb_image(source, min_side)


class PairDecoder:
    """Turns a raw (image source, caption) row into model inputs, or `Skipped` with the reason. With
    `reduced_jpeg_decoding`, JPEGs are decoded at the smallest DCT scale that still covers the processor's size."""

    def __init__(self, image_processor, reduced_jpeg_decoding: bool = False):
        self.image_processor = image_processor
        self.min_side = max(image_shape_of(image_processor)[1:]) if reduced_jpeg_decoding else None

    def __call__(self, where: str, image_source: Any, caption: Any) -> dict:
        if not isinstance(caption, str) or not caption.strip():
            return {"skipped": Skipped(where, "empty caption")}
        try:
            image = read_image(image_source, self.min_side)
        except FileNotFoundError:
            return {"skipped": Skipped(where, f"image file not found ({image_source})")}
        except Exception as error:  # PIL raises many types for corrupt data; all mean the same here
            return {"skipped": Skipped(where, f"unreadable image ({type(error).__name__}: {error})")}
        pixel_values = self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]
        return {"pixel_values": pixel_values, "caption": caption.strip(), "key": where}


def caption_of(sample: dict) -> str | Skipped:
    """The caption of a webdataset sample: ``.txt`` (UTF-8) or ``.json`` with a ``caption`` field."""
    where = sample["where"]
    if "txt" in sample:
        try:
            return sample["txt"].decode("utf-8")
        except UnicodeDecodeError:
            return Skipped(where, "caption .txt is not UTF-8 text")
    if "json" in sample:
        try:
            caption = json.loads(sample["json"]).get("caption")
        except (ValueError, AttributeError):
            return Skipped(where, "caption .json is not an object with 'caption'")
        return caption if isinstance(caption, str) else Skipped(where, "caption .json has no text 'caption'")
    return Skipped(where, "no caption (.txt or .json)")


def decode_shard_sample(sample: dict, decode: PairDecoder) -> dict:
    """Model inputs of one raw webdataset sample (its members' bytes by suffix), or a `Skipped` marker."""
    where = sample["where"]
    image = next((sample[suffix] for suffix in IMAGE_SUFFIXES if suffix in sample), None)
    if image is None:
        members = sorted(key for key in sample if key != "where" and not key.startswith("__"))
        return {"skipped": Skipped(where, f"no image among {members}")}
    caption = caption_of(sample)
    if isinstance(caption, Skipped):
        return {"skipped": caption}
    return decode(where, image, caption)


class ImageTextTable(Dataset):
    """Map-style image-caption rows of memory-mapped tables; images (paths, or bytes of a datasets Image column)
    decoded on access, i.e. in DataLoader workers. Relative paths start at `image_root` or the table's folder."""

    def __init__(
        self,
        sources: Sequence[Source],
        image_processor,
        image_column: str = "image",
        caption_column: str = "caption",
        image_root: str | None = None,
        cache_dir: str | None = None,
        reduced_jpeg_decoding: bool = False,
        build_processes: int | None = None,
    ):
        self.rows = TableRows(sources, (image_column, caption_column), cache_dir, build_processes)
        self.columns, self.image_root = (image_column, caption_column), image_root
        self.decode = PairDecoder(image_processor, reduced_jpeg_decoding)
        self.image_cache: ImageEmbeddingCache | None = None  # set for --cache_image_features

    @property
    def sizes(self) -> list[int]:
        return self.rows.sizes

    def __len__(self) -> int:
        return len(self.rows)

    def image_source(self, where: str, image):
        if not isinstance(image, str):
            return image
        if is_remote(image) or Path(image).is_absolute():
            return image
        return join_url(self.image_root or source_folder(where), image)

    def __getitem__(self, index: int) -> dict:
        where, fields = self.rows.row(index)
        if fields.get(SKIPPED):
            return {"skipped": Skipped(where, fields[SKIPPED])}
        image, caption = (fields[column] for column in self.columns)
        cached = self.image_cache.get(index) if self.image_cache is not None else None
        if cached is not None:  # trained before: neither decoded nor run through the tower again
            return {"image_embeds": torch.from_numpy(cached), "caption": caption.strip(), "key": where, "row": index}
        return {**self.decode(where, self.image_source(where, image), caption), "row": index}


class ContrastiveCollator:
    """Stacks decoded images, tokenizes captions with dynamic padding, and passes the skipped rows on. A batch
    whose every row was skipped runs one placeholder (`usable_or_placeholder`; `image_shape` is its pixel shape)."""

    def __init__(
        self, tokenizer, max_length: int = DEFAULT_MAX_TEXT_LENGTH, image_shape: tuple[int, int, int] = (3, 224, 224)
    ):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.image_shape = tuple(image_shape)

    def __call__(self, rows: list[dict] | None) -> dict:
        if rows is None:  # a batch trained before a resumption: dropped unread by skip_first_batches
            return ALREADY_TRAINED
        rows, skipped = split_skipped(rows)
        rows, marker = usable_or_placeholder(rows, {"pixel_values": torch.zeros(self.image_shape), "caption": ""})
        text = self.tokenizer(
            [row["caption"] for row in rows],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        pixels = [row["pixel_values"] for row in rows if "pixel_values" in row]
        batch = {
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
            "pixel_values": torch.stack(pixels) if pixels else torch.zeros((0, *self.image_shape)),
            "skipped": skipped,
            "keys": [row["key"] for row in rows if row.get("key")],
            **marker,
        }
        cached = [row["image_embeds"] for row in rows if "image_embeds" in row]
        if cached:  # rows whose image embedding an earlier epoch stored (`ImageEmbeddingCache`)
            blank = torch.zeros_like(cached[0])
            batch["image_cached"] = torch.tensor(["image_embeds" in row for row in rows])
            batch["cached_image_embeds"] = torch.stack([row.get("image_embeds", blank) for row in rows]).float()
        if any("row" in row for row in rows):
            batch["table_rows"] = torch.tensor([row.get("row", -1) for row in rows], dtype=torch.long)
        return batch


ALREADY_TRAINED = {"already_trained": True}


def image_shape_of(image_processor) -> tuple[int, int, int]:
    """(channels, height, width) of the processor's output."""
    crop = getattr(image_processor, "crop_size", None) or image_processor.size
    return 3, int(crop.get("height", crop.get("shortest_edge"))), int(crop.get("width", crop.get("shortest_edge")))
