"""The multilingual retrieval sets the field reports first: XM3600, XTD200, Flickr30k-200 and Multi30k.

Each loader reads the files exactly as their publishers (or CLIP_benchmark, which most published numbers come
from) lay them out; where each layout comes from is cited beside its loader. A loader returns every caption of
every image: the scoring protocol (first caption per image, or all of them) is applied later, in `retrieval`.
A missing file is a `FileNotFoundError` whose first line names it and the expected layout.
"""

import gzip
import json
from pathlib import Path, PurePath

from altclip.common.errors import InputDataError, PathError

from .loaders import RetrievalSet, _require

# The 36 languages of Crossmodal-3600, the keys of each captions.jsonl row (CLIP_benchmark
# clip_benchmark/datasets/crossmodal3600.py SUPPORTED_LANGUAGES; the same list in NLLB-CLIP test/xm3600.py).
XM3600_LANGUAGES = (
    "ar bn cs da de el en es fa fi fil fr he hi hr hu id it ja ko mi nl no pl pt quz ro ru sv sw te th tr uk vi zh"
).split()
# Multi30k Task 1 languages of the test_2016_flickr split (github.com/multi30k/dataset data/task1/raw/).
MULTI30K_LANGUAGES = ("en", "de", "fr", "cs")

XM3600_LAYOUT = (
    "ROOT/captions.jsonl (one row per image: 'image/key' and, per language, {'caption': [...]}) and "
    "ROOT/images/<image/key>.jpg, as google.github.io/crossmodal-3600 distributes them (captions.zip, images.tgz); "
    "CLIP_benchmark's ROOT/xm3600/ holding the same two is read too"
)


def _nested(root: Path, folder: str, marker: str) -> Path:
    """`root`, or ``root/folder`` when the files sit there (CLIP_benchmark downloads into a sub-folder)."""
    return root / folder if not (root / marker).exists() and (root / folder / marker).exists() else root


def load_xm3600(root: str | Path, language: str) -> RetrievalSet:
    """Crossmodal-3600: 3600 images, each with 1-3+ captions per language.

    Layout: Google's release (captions.jsonl + images/), read the way CLIP_benchmark's
    crossmodal3600.create_annotation_file and NLLB-CLIP's test/xm3600.py read it: row["image/key"] + ".jpg" in
    images/, row[language]["caption"] the list of captions."""
    if language not in XM3600_LANGUAGES:
        raise KeyError(f"XM3600 has no language {language!r}; it has {', '.join(XM3600_LANGUAGES)}.")
    root = _nested(Path(root), "xm3600", "captions.jsonl")
    table = _require(root / "captions.jsonl", XM3600_LAYOUT)
    image_dir = _require(root / "images", XM3600_LAYOUT)
    images, captions, caption_image = [], [], []
    with table.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                texts = row[language]["caption"]
                key = row["image/key"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ValueError(
                    f"{table}:{line_number}: not an XM3600 row with 'image/key' and {language}.caption ({error!r})."
                ) from None
            images.append(image_dir / f"{key}.jpg")
            for text in texts:
                captions.append(str(text).strip())
                caption_image.append(len(images) - 1)
    if not images:
        raise ValueError(f"{table} holds no row.")
    if not captions:
        raise InputDataError(
            f"{table}: none of its {len(images)} rows has a {language!r} caption; drop {language} from --languages "
            "(or use a captions.jsonl that has them)."
        )
    return RetrievalSet(f"xm3600_{language}", images, captions, caption_image)


def _parallel_lines(
    name: str, root: Path, index_file: str, captions_file: Path, layout: str, images: Path
) -> RetrievalSet:
    """Line i of `captions_file` describes the image named on line i of `index_file`: one caption per image."""
    names = _require(root / index_file, layout).read_text(encoding="utf-8").split()
    opener = gzip.open if captions_file.suffix == ".gz" else open
    with opener(_require(captions_file, layout), "rt", encoding="utf-8") as handle:
        lines = [line.strip() for line in handle.read().splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if len(lines) != len(names):
        raise ValueError(f"{captions_file}: {len(lines)} captions for the {len(names)} images of {index_file}.")
    _require(images, layout)
    return RetrievalSet(name, [images / image for image in names], lines, list(range(len(names))))


XTD200_LAYOUT = (
    "ROOT/test_image_names.txt, ROOT/<flores code>.txt (e.g. deu_Latn.txt: line i describes image i) as NLLB-CLIP "
    "publishes them in data/xtd200/, and the COCO images in ROOT/images/; or CLIP_benchmark's prepared root: "
    "ROOT/xtd200-<flores code>.json and ROOT/xtd200/images/"
)
# What CLIP_benchmark itself leaves in its dataset root (clip_benchmark/datasets/xtd200.py and flickr30k_200.py,
# create_annotation_file): no index or caption file (it downloads them per run), but one ROOT/<set>-<code>.json per
# language ({"image_paths", "annotations", "indicies"}: image i, its one caption, its line in the index) and the
# images in ROOT/<folder>/images/. Per set: (its annotation file name, its image folder).
CLIP_BENCHMARK_ANNOTATIONS = {
    "xtd200": ("xtd200-{}.json", "xtd200"),
    "flickr30k_200": ("flickr30k_200-{}.json", "flickr30k-200"),
}


def _prepared_image(root: Path, folder: str, stored: str) -> Path:
    """An image path as CLIP_benchmark stored it (join(its root, folder, "images", name)), re-rooted at `root` so a
    prepared folder still reads after it was moved or prepared with a relative root."""
    parts = PurePath(stored).parts
    for index in range(len(parts) - 2, -1, -1):
        if parts[index] == folder and parts[index + 1] == "images":
            return root.joinpath(folder, "images", *parts[index + 2 :])
    return Path(stored) if PurePath(stored).is_absolute() else root / stored


def _clip_benchmark_prepared(dataset: str, root: Path, language: str, index: str) -> RetrievalSet | None:
    """The set as CLIP_benchmark prepared it in `root`, or None when `root` holds the publisher's layout instead."""
    template, folder = CLIP_BENCHMARK_ANNOTATIONS[dataset]
    annotations = root / template.format(language)
    if not annotations.is_file():
        if (root / index).exists() or (root / folder / index).exists() or not any(root.glob(template.format("*"))):
            return None
        have = ", ".join(_clip_benchmark_languages(dataset, root))
        raise PathError(
            f"{annotations} is missing: CLIP_benchmark prepares one file per language, and {root} has {have}."
        )
    try:
        data = json.loads(annotations.read_text(encoding="utf-8"))
        paths, captions = data["image_paths"], data["annotations"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise InputDataError(
            f"{annotations}: not a CLIP_benchmark annotation file with image_paths and annotations ({error!r})."
        ) from None
    if len(paths) != len(captions) or not paths:
        raise InputDataError(f"{annotations}: {len(captions)} annotations for {len(paths)} image_paths.")
    images = [_prepared_image(root, folder, str(path)) for path in paths]
    return RetrievalSet(
        f"{dataset}_{language}", images, [str(text).strip() for text in captions], list(range(len(paths)))
    )


def _clip_benchmark_languages(dataset: str, root: Path) -> list[str]:
    template, _ = CLIP_BENCHMARK_ANNOTATIONS[dataset]
    prefix, suffix = template.split("{}")
    return sorted(path.name[len(prefix) : -len(suffix)] for path in root.glob(template.format("*")))


def load_xtd200(root: str | Path, language: str) -> RetrievalSet:
    """XTD200: XTD10's 1000 COCO images with their captions machine-translated to the 200 FLORES languages.

    Layout: NLLB-CLIP's data/xtd200/{test_image_names.txt, <lang>.txt} (github.com/visheratin/nllb-clip, read by its
    test/xtd200.py) with the images in images/; or the root CLIP_benchmark prepared (ROOT/xtd200-<lang>.json, read
    as its XTD200 dataset reads it, with the images in ROOT/xtd200/images/)."""
    prepared = _clip_benchmark_prepared("xtd200", Path(root), language, "test_image_names.txt")
    if prepared is not None:
        return prepared
    root = _nested(Path(root), "xtd200", "test_image_names.txt")
    return _parallel_lines(
        f"xtd200_{language}", root, "test_image_names.txt", root / f"{language}.txt", XTD200_LAYOUT, root / "images"
    )


FLICKR30K_200_LAYOUT = (
    "ROOT/filenames.txt, ROOT/<flores code>.txt (e.g. deu_Latn.txt: line i describes image i) as NLLB-CLIP publishes "
    "them in data/flickr30k-200/, and the Flickr30k test images in ROOT/images/; or CLIP_benchmark's prepared root: "
    "ROOT/flickr30k_200-<flores code>.json and ROOT/flickr30k-200/images/"
)


def load_flickr30k_200(root: str | Path, language: str) -> RetrievalSet:
    """Flickr30k-200: 1000 Flickr30k test images, one English caption each, translated to the FLORES languages.

    Layout: NLLB-CLIP's data/flickr30k-200/<lang>.txt with the index file filenames.txt and the images in images/;
    or the root CLIP_benchmark prepared (ROOT/flickr30k_200-<lang>.json, ROOT/flickr30k-200/images/)."""
    prepared = _clip_benchmark_prepared("flickr30k_200", Path(root), language, "filenames.txt")
    if prepared is not None:
        return prepared
    root = _nested(Path(root), "flickr30k-200", "filenames.txt")
    captions = root / f"{language}.txt"
    name = f"flickr30k_200_{language}"
    return _parallel_lines(name, root, "filenames.txt", captions, FLICKR30K_200_LAYOUT, root / "images")


MULTI30K_SPLITS = {"test": "test_2016_flickr"}
MULTI30K_LAYOUT = (
    "a clone of github.com/multi30k/dataset: ROOT/data/task1/image_splits/{split}.txt and "
    "ROOT/data/task1/raw/{split}.<en|de|fr|cs>.gz (line i describes image i), with the Flickr30k images in "
    "ROOT/flickr30k-images/ (or ROOT/images/)"
)


def load_multi30k(root: str | Path, language: str, split: str = "test") -> RetrievalSet:
    """Multi30k Task 1: 1000 Flickr30k test images (test_2016_flickr), one caption each in en, de, fr and cs.

    Layout: the multi30k/dataset repository (data/task1/image_splits/test_2016_flickr.txt,
    data/task1/raw/test_2016_flickr.{en,de,fr,cs}.gz); it ships no images, which are Flickr30k's own."""
    if language not in MULTI30K_LANGUAGES:
        raise KeyError(f"Multi30k has no {language!r}; it has {', '.join(MULTI30K_LANGUAGES)}.")
    root = Path(root)
    split = MULTI30K_SPLITS.get(split, split)
    layout = MULTI30K_LAYOUT.format(split=split)
    raw = root / "data" / "task1" / "raw" / f"{split}.{language}"
    captions = raw.with_name(raw.name + ".gz") if not raw.exists() else raw
    images = next((root / folder for folder in ("flickr30k-images", "images") if (root / folder).is_dir()), None)
    if images is None:
        raise FileNotFoundError(f"{root}/flickr30k-images is missing (nor is there {root}/images). Expected: {layout}")
    return _parallel_lines(
        f"multi30k_{language}", root / "data" / "task1" / "image_splits", f"{split}.txt", captions, layout, images
    )


FIELD_LOADERS = {  # (root, language, split=...) like loaders.RETRIEVAL_LOADERS
    "xm3600": lambda root, language="en", split="test": load_xm3600(root, language),
    "xtd200": lambda root, language="eng_Latn", split="test": load_xtd200(root, language),
    "flickr30k_200": lambda root, language="eng_Latn", split="test": load_flickr30k_200(root, language),
    "multi30k": lambda root, language="en", split="test": load_multi30k(root, language, split),
}


def translated_languages(dataset: str, root: str | Path) -> list[str]:
    """Every FLORES code with a translation file in an XTD200 / Flickr30k-200 folder (e.g. deu_Latn, zho_Hans), or
    with an annotation file in a root CLIP_benchmark prepared."""
    layout, index = {
        "xtd200": (XTD200_LAYOUT, "test_image_names.txt"),
        "flickr30k_200": (FLICKR30K_200_LAYOUT, "filenames.txt"),
    }[dataset]
    folder = _nested(Path(root), CLIP_BENCHMARK_ANNOTATIONS[dataset][1], index)
    if not (folder / index).exists() and _clip_benchmark_languages(dataset, Path(root)):
        return _clip_benchmark_languages(dataset, Path(root))
    _require(folder / index, layout)
    codes = sorted(path.stem for path in folder.glob("*_*.txt") if path.name != index and "_captions" not in path.name)
    if not codes:
        raise FileNotFoundError(f"{folder} holds no <flores code>.txt caption file. Expected layout: {layout}")
    return codes
