"""Benchmarks read from local copies, each in the layout its publishers distribute (documented in the README).

Classification sets give image sources and labels, retrieval sets give images and captions with the image each
caption describes. A missing file or folder is a `FileNotFoundError` that names it and the expected layout.
"""

import base64
import json
import logging
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from altclip.common.errors import InputDataError
from altclip.common.records import Skipped, iter_records
from altclip.common.zero_shot_scoring import (  # noqa: F401 (read_classnames and the layout: evaluation's names)
    IMAGE_FOLDER_LAYOUT,
    IMAGE_SUFFIXES,
    read_class_folder,
    read_classnames,
)

WORDNET_ID = re.compile(r"^n\d{8}$")


logger = logging.getLogger(__name__)


@dataclass
class ClassificationSet:
    """Images with integer labels; `classnames` when the data names its classes itself (folders, CIFAR meta)."""

    name: str
    images: list[Any]
    labels: list[int]
    classnames: list[str] | None = None
    classnames_by_language: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class RetrievalSet:
    """Images and captions; ``caption_image[j]`` is the index of the image caption j describes."""

    name: str
    images: list[Any]
    captions: list[str]
    caption_image: list[int]
    skipped_rows: int = 0  # table rows left out as unusable (counted in the results)

    def __post_init__(self) -> None:
        """A set with no caption or no image scores nothing (and ended in torch.cat's "expected a non-empty list")."""
        if not self.captions or not self.images:
            raise InputDataError(
                f"{self.name}: the set holds {len(self.images)} images and {len(self.captions)} captions; nothing to "
                "retrieve. Check --data_dir and --languages."
            )


def _require(path: Path, layout: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing. Expected layout: {layout}")
    return path


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_image_folder(root: str | Path) -> ClassificationSet:
    """``ROOT/<class>/*.jpg``; labels follow the sorted folder names. ``ROOT/classnames.json`` may give the
    class names in several languages, in the same order. Read by `common.zero_shot_scoring.read_class_folder`, the
    reader training's zero-shot monitor uses too."""
    folder = read_class_folder(root)
    return ClassificationSet(
        "image_folder", list(folder.images), list(folder.labels), list(folder.folder_names), folder.names_by_language
    )


IMAGENET_LAYOUT = "ROOT/val/n01440764/*.JPEG ... (1000 WordNet-id folders, as prepared by the usual valprep script)"


def load_imagenet_val(root: str | Path) -> ClassificationSet:
    """ImageNet-1k validation: 1000 WordNet-id folders; sorted ids give the standard label order."""
    root = _require(Path(root), IMAGENET_LAYOUT)
    folder = root / "val" if (root / "val").is_dir() else root
    wnids = sorted(p.name for p in folder.iterdir() if p.is_dir() and WORDNET_ID.match(p.name))
    if len(wnids) != 1000:
        raise FileNotFoundError(
            f"{folder} holds {len(wnids)} WordNet-id class folders, not 1000. Expected: {IMAGENET_LAYOUT}"
        )
    images, labels = [], []
    for label, wnid in enumerate(wnids):
        files = _image_files(folder / wnid)
        images += files
        labels += [label] * len(files)
    return ClassificationSet("imagenet1k", images, labels)


class _ArrayUnpickler(pickle.Unpickler):
    """Reads CIFAR's pickles, which hold only dicts, lists, bytes and numpy arrays; refuses any other object."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"CIFAR files hold no {module}.{name}: refusing to load it.")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    with path.open("rb") as handle:
        return _ArrayUnpickler(handle, encoding="bytes").load()


CIFAR_LAYOUTS = {
    "cifar10": ("cifar-10-batches-py", "test_batch", "batches.meta", b"labels", b"label_names"),
    "cifar100": ("cifar-100-python", "test", "meta", b"fine_labels", b"fine_label_names"),
}


def load_cifar(root: str | Path, name: str = "cifar10") -> ClassificationSet:
    """CIFAR-10/100 test sets from the official python tarballs, extracted under ROOT."""
    folder_name, test_file, meta_file, label_key, names_key = CIFAR_LAYOUTS[name]
    layout = f"ROOT/{folder_name}/{test_file} and ROOT/{folder_name}/{meta_file} (the official python version)"
    root = Path(root)
    folder = root if root.name == folder_name else root / folder_name
    test = _unpickle(_require(folder / test_file, layout))
    meta = _unpickle(_require(folder / meta_file, layout))
    pixels = np.asarray(test[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    images = [Image.fromarray(array) for array in pixels]
    names = [label.decode() for label in meta[names_key]]
    return ClassificationSet(name, images, list(test[label_key]), [n.replace("_", " ") for n in names])


KARPATHY_LAYOUT = "ROOT/dataset_flickr30k.json (Karpathy split) and ROOT/flickr30k-images/*.jpg"


def load_karpathy(root: str | Path, split: str = "test", name: str = "flickr30k") -> RetrievalSet:
    """Flickr30k (or COCO) in Karpathy's split file: ``images[*].filename``, ``split``, ``sentences[*].raw``."""
    root = Path(root)
    annotation = _require(root / f"dataset_{name}.json", KARPATHY_LAYOUT)
    image_dir = next((root / folder for folder in (f"{name}-images", "images") if (root / folder).is_dir()), None)
    if image_dir is None:
        raise FileNotFoundError(f"No image folder {root}/{name}-images or {root}/images. Expected: {KARPATHY_LAYOUT}")
    images, captions, caption_image = [], [], []
    for entry in json.loads(annotation.read_text(encoding="utf-8"))["images"]:
        if entry.get("split") != split:
            continue
        images.append(image_dir / entry.get("filepath", "") / entry["filename"])
        for sentence in entry["sentences"]:
            captions.append(sentence["raw"].strip())
            caption_image.append(len(images) - 1)
    if not images:
        raise ValueError(f"{annotation} has no image in split {split!r}.")
    return RetrievalSet(name, images, captions, caption_image)


CHINESE_CLIP_LAYOUT = (
    "ROOT/{split}_imgs.tsv (image_id<TAB>base64 image) and ROOT/{split}_texts.jsonl "
    '({{"text_id", "text", "image_ids"}}), as Chinese-CLIP distributes Flickr30k-CN and COCO-CN'
)


def load_chinese_clip_format(root: str | Path, split: str = "test", name: str = "flickr30k_cn") -> RetrievalSet:
    """Flickr30k-CN / COCO-CN as released by Chinese-CLIP: base64 images in a TSV, captions in JSONL."""
    root = Path(root)
    layout = CHINESE_CLIP_LAYOUT.format(split=split)
    images, index_of = [], {}
    with _require(root / f"{split}_imgs.tsv", layout).open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            image_id, _, encoded = line.rstrip("\n").partition("\t")
            if not encoded:
                raise ValueError(f"{root / f'{split}_imgs.tsv'}:{line_number}: expected image_id<TAB>base64.")
            index_of[image_id] = len(images)
            images.append(_Base64Image(encoded))
    captions, caption_image = [], []
    for row in iter_records(_require(root / f"{split}_texts.jsonl", layout), ("text", "image_ids")):
        if isinstance(row, Skipped):
            raise ValueError(f"{row.where}: {row.reason}")
        for image_id in row.fields["image_ids"]:
            if str(image_id) not in index_of:
                raise ValueError(f"{row.where}: image {image_id} is not in {split}_imgs.tsv.")
            captions.append(row.fields["text"])
            caption_image.append(index_of[str(image_id)])
    return RetrievalSet(name, images, captions, caption_image)


class _Base64Image:
    """An image kept encoded until a worker decodes it."""

    def __init__(self, encoded: str):
        self.encoded = encoded

    def read(self) -> bytes:
        return base64.urlsafe_b64decode(self.encoded + "=" * (-len(self.encoded) % 4))


XTD_LAYOUT = "ROOT/test_image_names.txt, ROOT/test_1kcaptions_{lang}.txt and the COCO 2014 images in ROOT/images/"
XTD_LANGUAGES = ("de", "en", "es", "fr", "it", "jp", "ko", "pl", "ru", "tr", "zh")


def load_xtd(root: str | Path, language: str, images_root: str | Path | None = None) -> RetrievalSet:
    """XTD10: 1000 COCO images with one caption each in 11 languages, line i describing image i."""
    root = Path(root)
    if language not in XTD_LANGUAGES:
        raise KeyError(f"XTD10 has no {language!r}; it has {', '.join(XTD_LANGUAGES)}.")
    names = _require(root / "test_image_names.txt", XTD_LAYOUT).read_text(encoding="utf-8").split()
    captions = _require(root / f"test_1kcaptions_{language}.txt", XTD_LAYOUT).read_text(encoding="utf-8").splitlines()
    captions = [caption.strip() for caption in captions if caption.strip()]
    if len(captions) != len(names):
        raise ValueError(f"XTD10 {language}: {len(captions)} captions for {len(names)} images.")
    image_dir = Path(images_root) if images_root else root / "images"
    _require(image_dir, XTD_LAYOUT)
    return RetrievalSet(f"xtd10_{language}", [image_dir / name for name in names], captions, list(range(len(names))))


CAPTIONS_LAYOUT = 'ROOT/captions.jsonl with {"image": path, "caption": text} rows (optional "language"), paths relative'


def load_caption_table(path: str | Path, language: str | None = None) -> RetrievalSet:
    """A table of (image, caption[, language]) rows; rows of one image are its several captions."""
    path = Path(path)
    table = path / "captions.jsonl" if path.is_dir() else path
    _require(table, CAPTIONS_LAYOUT)
    images, index_of, captions, caption_image, skipped = [], {}, [], [], []
    for row in iter_records(table, ("image", "caption")):
        if isinstance(row, Skipped):
            skipped.append(row)
            continue
        if language is not None and row.fields.get("language", language) != language:
            continue
        image = str(table.parent / row.fields["image"])
        if image not in index_of:
            index_of[image] = len(images)
            images.append(Path(image))
        captions.append(str(row.fields["caption"]))
        caption_image.append(index_of[image])
    if not captions:
        raise ValueError(f"{table} has no caption" + (f" in language {language!r}." if language else "."))
    for row in skipped[:3]:
        logger.warning("Leaving out %s: %s", row.where, row.reason)
    if skipped:
        logger.warning("%d unusable row(s) of %s left out", len(skipped), table)
    return RetrievalSet(table.stem, images, captions, caption_image, len(skipped))


CLASSIFICATION_LOADERS: dict[str, Callable[..., ClassificationSet]] = {
    "image_folder": load_image_folder,
    "imagenet1k": load_imagenet_val,
    "cifar10": lambda root: load_cifar(root, "cifar10"),
    "cifar100": lambda root: load_cifar(root, "cifar100"),
}
RETRIEVAL_LOADERS: dict[str, Callable[..., RetrievalSet]] = {  # (root, language, split=...)
    "flickr30k": lambda root, language=None, split="test": load_karpathy(root, split, "flickr30k"),
    "flickr30k_cn": lambda root, language=None, split="test": load_chinese_clip_format(root, split, "flickr30k_cn"),
    "coco_cn": lambda root, language=None, split="test": load_chinese_clip_format(root, split, "coco_cn"),
    "xtd10": lambda root, language="en", split="test": load_xtd(root, language),
    "captions": lambda root, language=None, split="test": load_caption_table(root, language),
}
