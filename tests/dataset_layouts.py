"""Small copies of each benchmark layout, written the way the publishers distribute them, with random images."""

import base64
import io
import json
import pickle
from pathlib import Path

import numpy as np
from tiny_models import random_images

CLASSES = {"en": ["cat", "dog", "bird"], "de": ["Katze", "Hund", "Vogel"], "zh": ["猫", "狗", "鸟"]}


def write_image_folder(root: Path, per_class: int = 2, with_names: bool = True) -> Path:
    for label, name in enumerate(CLASSES["en"]):
        (root / name).mkdir(parents=True)
        for index, image in enumerate(random_images(per_class, seed=label)):
            image.save(root / name / f"{index}.png")
    if with_names:
        (root / "classnames.json").write_text(json.dumps(CLASSES, ensure_ascii=False), encoding="utf-8")
    return root


def write_imagenet_val(root: Path, images_in: tuple[int, ...] = (0, 1, 999)) -> Path:
    for index in range(1000):
        folder = root / "val" / f"n{index:08d}"
        folder.mkdir(parents=True)
        if index in images_in:
            random_images(1, seed=index)[0].save(folder / f"ILSVRC2012_val_{index:08d}.JPEG", format="JPEG")
    return root


def write_cifar(root: Path, name: str = "cifar10", count: int = 6) -> Path:
    rng = np.random.RandomState(0)
    if name == "cifar10":
        folder, test, meta = root / "cifar-10-batches-py", "test_batch", "batches.meta"
        label_key, names_key, names = (
            b"labels",
            b"label_names",
            [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"],
        )
    else:
        folder, test, meta = root / "cifar-100-python", "test", "meta"
        label_key, names_key, names = b"fine_labels", b"fine_label_names", [f"class_{i}".encode() for i in range(100)]
    folder.mkdir(parents=True)
    data = {b"data": rng.randint(0, 255, (count, 3072), dtype=np.uint8), label_key: list(range(count))}
    (folder / test).write_bytes(pickle.dumps(data))
    (folder / meta).write_bytes(pickle.dumps({names_key: names}))
    return root


def _captions(count: int, language: str = "en") -> list[list[str]]:
    words = {"en": ("a photo", "a picture"), "de": ("ein Foto", "ein Bild"), "zh": ("一张照片", "一幅图")}[language]
    return [[f"{word} {image}" for word in words] for image in range(count)]


def write_karpathy(root: Path, count: int = 4) -> Path:
    (root / "flickr30k-images").mkdir(parents=True)
    entries = []
    for index, image in enumerate(random_images(count + 1)):
        image.save(root / "flickr30k-images" / f"{index}.jpg")
        captions = _captions(count + 1)[index]
        split = "test" if index < count else "train"
        entries.append({"filename": f"{index}.jpg", "split": split, "sentences": [{"raw": c} for c in captions]})
    (root / "dataset_flickr30k.json").write_text(json.dumps({"images": entries}))
    return root


def write_chinese_clip_format(root: Path, count: int = 4, split: str = "test") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines, texts = [], []
    for index, image in enumerate(random_images(count)):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG")
        lines.append(f"{1000 + index}\t{base64.urlsafe_b64encode(buffer.getvalue()).decode()}\n")
        for caption in _captions(count, "zh")[index]:
            texts.append({"text_id": len(texts), "text": caption, "image_ids": [1000 + index]})
    (root / f"{split}_imgs.tsv").write_text("".join(lines))
    (root / f"{split}_texts.jsonl").write_text("".join(json.dumps(t, ensure_ascii=False) + "\n" for t in texts))
    return root


def write_xtd(root: Path, count: int = 4, languages: tuple[str, ...] = ("en", "de", "zh")) -> Path:
    (root / "images").mkdir(parents=True)
    names = [f"COCO_val2014_{index:012d}.jpg" for index in range(count)]
    for name, image in zip(names, random_images(count)):
        image.save(root / "images" / name)
    (root / "test_image_names.txt").write_text("\n".join(names) + "\n")
    for language in languages:
        captions = [pair[0] for pair in _captions(count, language)]
        (root / f"test_1kcaptions_{language}.txt").write_text("\n".join(captions) + "\n", encoding="utf-8")
    return root


def write_caption_table(root: Path, count: int = 4) -> Path:
    (root / "images").mkdir(parents=True)
    rows = []
    for index, image in enumerate(random_images(count)):
        image.save(root / "images" / f"{index}.png")
        for language in ("en", "de"):
            rows += [
                {"image": f"images/{index}.png", "caption": c, "language": language}
                for c in _captions(count, language)[index]
            ]
    (root / "captions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root
