"""The fine-tuning demonstration's data: the reproduction's held-out emoji as a "new domain", split once by a seed
into a fine-tuning half and a test half, and a sample of the emoji the model was trained on (what it may forget).

Nothing is written into the reproduction folder: the images used are copied to ``OUTPUT_DIR/data/images`` and the
image folders and the fine-tuning captions are built beside them.
"""

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from altclip.common.records import write_jsonl

from .emoji_data import augmented, normalised, read_jsonl
from .stage2_validation import image_folder

# What a finished `altclip-reproduce` output folder holds that the demonstration reads.
REPRODUCTION_FILES = (
    "data/test/classnames.json",
    "data/images",
    "data/train_captions.jsonl",
    "stage2_contrastive/config.json",
    "stage2_contrastive/model.safetensors",
)

Names = dict[str, dict[str, str]]  # emoji slug -> {language: name}


@dataclass
class DomainSplit:
    """The emoji slugs of each part; `finetune` excludes `dropped` (fine-tuning emoji sharing a test-half name)."""

    finetune: list[str]
    test: list[str]
    dropped: list[str]
    original: list[str]
    folders: dict[str, Path]
    finetune_captions: Path

    def counts(self) -> dict[str, int]:
        return {
            "finetune_emoji": len(self.finetune),
            "test_half_emoji": len(self.test),
            "finetune_emoji_dropped_for_shared_names": len(self.dropped),
            "original_emoji_sample": len(self.original),
        }


def missing_reproduction_files(reproduction_dir: Path) -> list[str]:
    """The files of a finished reproduction that `reproduction_dir` lacks (empty when it is one)."""
    return [name for name in REPRODUCTION_FILES if not (reproduction_dir / name).exists()]


def held_out_names(test_folder: Path) -> Names:
    """slug -> names of the held-out emoji (classnames.json lists them in the sorted order of the class folders)."""
    by_language = json.loads((test_folder / "classnames.json").read_text(encoding="utf-8"))
    slugs = sorted(path.name for path in test_folder.iterdir() if path.is_dir())
    return {slug: {language: names[i] for language, names in by_language.items()} for i, slug in enumerate(slugs)}


def training_names(train_captions: Path) -> Names:
    """slug -> names of the emoji the model was trained on, from the reproduction's stage-2 captions."""
    names: Names = {}
    for row in read_jsonl(train_captions):
        names.setdefault(Path(row["image"]).stem, {})[row["language"]] = row["caption"]
    return names


def normalised_names(names: Names, slugs: list[str]) -> set[str]:
    """Every name of `slugs`, in every language, as compared for held-out-ness."""
    return {normalised(name) for slug in slugs for name in names[slug].values()}


def split_domain(reproduction_dir: Path, data_dir: Path, languages: list[str], seed: int) -> DomainSplit:
    """Splits the held-out emoji by `seed` (the test half: half of them, rounded down), drops fine-tuning emoji
    sharing a name (any language) with a test-half emoji, samples as many training emoji as the test half, and
    writes the image folders (``finetune_new_views``, ``test_half``, ``original_emoji``) and
    ``finetune_captions.jsonl`` (one row per kept
    fine-tuning emoji and language, the table ``altclip-train contrastive --train_files`` reads) into `data_dir`,
    replacing it (a folder left by another seed would keep stale classes)."""
    shutil.rmtree(data_dir, ignore_errors=True)
    source = reproduction_dir / "data"
    held_out = held_out_names(source / "test")
    slugs = sorted(held_out)
    random.Random(seed).shuffle(slugs)
    test, finetune = sorted(slugs[: len(slugs) // 2]), sorted(slugs[len(slugs) // 2 :])
    test_names = normalised_names(held_out, test)
    dropped = [slug for slug in finetune if normalised_names(held_out, [slug]) & test_names]
    finetune = [slug for slug in finetune if slug not in dropped]
    trained = training_names(source / "train_captions.jsonl")
    original = sorted(random.Random(seed).sample(sorted(trained), min(len(test), len(trained))))

    (data_dir / "images").mkdir(parents=True, exist_ok=True)
    for slug in finetune + test + original:
        shutil.copy2(source / "images" / f"{slug}.png", data_dir / "images" / f"{slug}.png")
    captions = write_jsonl(
        data_dir / "finetune_captions.jsonl",
        [
            {"image": f"images/{slug}.png", "caption": held_out[slug][language], "language": language}
            for slug in finetune
            for language in languages
        ],
    )
    folders = {
        "finetune_new_views": new_views(
            data_dir, "finetune_new_views", {slug: held_out[slug] for slug in finetune}, seed
        ),
        "test_half": image_folder(data_dir, "test_half", {slug: held_out[slug] for slug in test}),
        "original_emoji": image_folder(data_dir, "original_emoji", {slug: trained[slug] for slug in original}),
    }
    return DomainSplit(finetune, test, dropped, original, folders, captions)


def new_views(data_dir: Path, name: str, rows_by_slug: Names, seed: int) -> Path:
    """An image folder of `rows_by_slug` where each emoji is a fresh random view (scaled 55-100%, moved) of the image
    it was fine-tuned on: the fine-tuned classes in images the training did not see, as a user's own domain is
    scored (same labels, new photos)."""
    root = image_folder(data_dir, name, rows_by_slug)
    rng = random.Random(seed)
    for slug in sorted(rows_by_slug):
        path = root / slug / f"{slug}.png"
        with Image.open(path) as image:
            view = augmented(image.convert("RGBA"), image.width, rng)
        view.save(path)
    return root
