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


# --- The field's multilingual retrieval sets, each in its publisher's layout (see evaluation/field_sets.py) ---

FIELD_WORDS = {
    "en": "a photo",
    "de": "ein Foto",
    "zh": "一张照片",
    "fr": "une photo",
    "cs": "fotka",
    "deu_Latn": "ein Foto",
    "zho_Hans": "一张照片",
    "eng_Latn": "a photo",
}


def write_xm3600(
    root: Path, count: int = 4, languages: tuple[str, ...] = ("en", "de", "zh"), nested: bool = False
) -> Path:
    """Google's release: captions.jsonl (a row per image: "image/key", then per language {"caption": [...],
    "caption/tokenized": [...]}) and images/<key>.jpg; `nested` puts both in ROOT/xm3600/ as CLIP_benchmark does.
    Image i has 1 + (i % 2) captions per language, so first-caption and all-captions scoring differ."""
    folder = root / "xm3600" if nested else root
    (folder / "images").mkdir(parents=True)
    rows = []
    for index, image in enumerate(random_images(count, seed=7)):
        key = f"{index:016x}"
        image.save(folder / "images" / f"{key}.jpg")
        row = {"image/key": key, "image/locale": "en", "image/subset": "test"}
        for language in languages:
            captions = [f"{FIELD_WORDS[language]} {index} #{n}" for n in range(1 + index % 2)]
            row[language] = {"caption": captions, "caption/tokenized": [c.lower() for c in captions]}
        rows.append(row)
    (folder / "captions.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return root


def _write_parallel(folder: Path, index_name: str, names: list[str], languages: tuple[str, ...]) -> None:
    (folder / "images").mkdir(parents=True)
    for name, image in zip(names, random_images(len(names), seed=3)):
        image.save(folder / "images" / name)
    (folder / index_name).write_text("\n".join(names) + "\n")
    for language in languages:
        lines = [f"{FIELD_WORDS[language]} {index}" for index in range(len(names))]
        (folder / f"{language}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_xtd200(root: Path, count: int = 4, languages=("deu_Latn", "eng_Latn", "zho_Hans"), nested=False) -> Path:
    """NLLB-CLIP's data/xtd200/: test_image_names.txt and <flores>.txt, with the COCO images in images/."""
    folder = root / "xtd200" if nested else root
    _write_parallel(folder, "test_image_names.txt", [f"COCO_val2014_{i:012d}.jpg" for i in range(count)], languages)
    return root


def write_flickr30k_200(root: Path, count: int = 4, languages=("deu_Latn", "eng_Latn", "zho_Hans")) -> Path:
    """NLLB-CLIP's data/flickr30k-200/: filenames.txt and <flores>.txt, with the Flickr30k images in images/."""
    _write_parallel(root, "filenames.txt", [f"{1000092795 + i}.jpg" for i in range(count)], languages)
    return root


def write_multi30k(root: Path, count: int = 4, languages=("en", "de", "fr", "cs")) -> Path:
    """A multi30k/dataset clone: data/task1/image_splits/test_2016_flickr.txt, data/task1/raw/test_2016_flickr.<lang>.gz
    (gzip, as the repository stores them), and the Flickr30k images in flickr30k-images/."""
    import gzip

    names = [f"{1007129816 + i}.jpg" for i in range(count)]
    (root / "flickr30k-images").mkdir(parents=True)
    for name, image in zip(names, random_images(count, seed=5)):
        image.save(root / "flickr30k-images" / name)
    (root / "data" / "task1" / "image_splits").mkdir(parents=True)
    (root / "data" / "task1" / "raw").mkdir(parents=True)
    (root / "data" / "task1" / "image_splits" / "test_2016_flickr.txt").write_text("\n".join(names) + "\n")
    for language in languages:
        text = "\n".join(f"{FIELD_WORDS[language]} {index}" for index in range(count)) + "\n"
        raw = root / "data" / "task1" / "raw" / f"test_2016_flickr.{language}.gz"
        with gzip.open(raw, "wt", encoding="utf-8") as handle:
            handle.write(text)
    return root
