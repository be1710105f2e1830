"""Emoji as an offline image-text dataset: Noto Color Emoji glyphs (Debian's fonts-noto-color-emoji) rendered by
Pillow, named in 14 languages by the PyPI package `emoji`. Held-out emoji form the test set of every stage."""

import json
import random
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageFont

from altclip.common.records import write_jsonl

EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
FONT_SIZE = 109  # the one size of the font's bitmaps
LANGUAGES = ("en", "ar", "de", "es", "fa", "fr", "id", "it", "ja", "ko", "pt", "ru", "tr", "zh")


@dataclass(frozen=True)
class Emoji:
    char: str
    names: dict[str, str]  # language -> name, e.g. {"en": "baby bottle", "de": "babyflasche"}

    @property
    def slug(self) -> str:
        return "u" + "-".join(f"{ord(c):x}" for c in self.char)


def clean_name(name: str) -> str:
    """':baby_bottle:' -> 'baby bottle'."""
    return name.strip(":").replace("_", " ").strip()


def normalised(name: str) -> str:
    """A name compared for held-out-ness: case-folded, runs of white space as one space."""
    return " ".join(name.casefold().split())


def read_jsonl(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def names_of(items: list[Emoji]) -> set[str]:
    """Every normalised name of `items`, in every language."""
    return {normalised(name) for item in items for name in item.names.values()}


def collect_emoji(languages: tuple[str, ...] = LANGUAGES) -> list[Emoji]:
    """The single-character, fully qualified emoji that have a name in every language, in code-point order."""
    import emoji

    for language in languages:
        if language != "en":
            emoji.config.load_language(language)
    chosen = []
    for char, data in emoji.EMOJI_DATA.items():
        if len(char.replace("\ufe0f", "")) != 1 or data.get("status") != emoji.STATUS["fully_qualified"]:
            continue
        if all(language in data for language in languages):
            chosen.append(Emoji(char, {language: clean_name(data[language]) for language in languages}))
    return sorted(chosen, key=lambda item: item.char)


@cache
def _font() -> ImageFont.FreeTypeFont:
    if not EMOJI_FONT.is_file():
        raise FileNotFoundError(f"{EMOJI_FONT} is missing: apt-get install fonts-noto-color-emoji")
    return ImageFont.truetype(str(EMOJI_FONT), FONT_SIZE)


def render_glyph(char: str) -> Image.Image | None:
    """The emoji's colour glyph cropped to its bounding box (RGBA), or None if the font has no glyph for it."""
    canvas = Image.new("RGBA", (160, 160), (255, 255, 255, 0))
    ImageDraw.Draw(canvas).text((8, 8), char, font=_font(), embedded_color=True)
    box = canvas.getchannel("A").getbbox()
    if box is None:
        return None
    glyph = canvas.crop(box)
    if ImageChops.difference(glyph.convert("RGB"), Image.new("RGB", glyph.size, "white")).getbbox() is None:
        return None
    return glyph


def place(glyph: Image.Image, size: int, scale: float = 0.85, offset: tuple[float, float] = (0.5, 0.5)) -> Image.Image:
    """The glyph on a white square of `size` pixels, its longer side `scale` of it, centred at `offset`."""
    side = max(1, round(size * scale))
    factor = side / max(glyph.size)
    resized = glyph.resize(
        (max(1, round(glyph.width * factor)), max(1, round(glyph.height * factor))), Image.Resampling.LANCZOS
    )
    image = Image.new("RGB", (size, size), "white")
    x = round((size - resized.width) * offset[0])
    y = round((size - resized.height) * offset[1])
    image.paste(resized, (x, y), resized)
    return image


def augmented(glyph: Image.Image, size: int, rng: random.Random) -> Image.Image:
    """A random view of the glyph: scale 55-100%, anywhere on the square (used to train the teacher CLIP)."""
    return place(glyph, size, rng.uniform(0.55, 1.0), (rng.random(), rng.random()))


def write_emoji_dataset(
    folder: str | Path, image_size: int = 64, test_fraction: float = 0.15, limit: int | None = None, seed: int = 0
) -> dict[str, Path]:
    """Renders the emoji and writes the splits (train and test never share an emoji):

    - ``glyphs/<slug>.png``: full-resolution glyphs (the teacher's augmentation source), train split only;
    - ``images/<slug>.png``: one centred view per emoji, both splits;
    - ``teacher_train.jsonl`` {image, caption}: English names of the train emoji (the teacher CLIP's data);
    - ``parallel_emoji.jsonl`` {english, translation, language}: train emoji names (no stage reads it since stage 1
      learns from generic parallel text; kept for analyses such as the old regime's comparison);
    - ``train_captions.jsonl`` {image, caption, language}: train emoji in all languages (stage 2);
    - ``test/<slug>/<slug>.png`` + ``test/classnames.json`` {language: names}: zero-shot classification;
    - ``test_captions.jsonl`` {image, caption, language}: retrieval on the test emoji.

    No held-out name (normalised, any language) is in a training file: a training emoji sharing one is dropped.
    """
    folder = Path(folder)
    for sub in ("glyphs", "images", "test"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    glyphs = {}
    for item in collect_emoji():
        glyph = render_glyph(item.char)
        if glyph is not None:
            glyphs[item.char] = (item, glyph)
    items = [item for item, _ in glyphs.values()]
    random.Random(seed).shuffle(items)
    items = items[:limit] if limit else items
    test_count = max(2, round(len(items) * test_fraction))
    test, train = sorted(items[:test_count], key=lambda e: e.slug), sorted(items[test_count:], key=lambda e: e.slug)
    # A training emoji that shares a name (in any language) with a held-out one would put that name into training:
    # it is dropped from training (its image is not in the test set either).
    held_out = names_of(test)
    shared = [item for item in train if names_of([item]) & held_out]
    train = [item for item in train if item not in shared]
    for item in items:
        place(glyphs[item.char][1], image_size).save(folder / "images" / f"{item.slug}.png")
    for item in train:
        glyphs[item.char][1].save(folder / "glyphs" / f"{item.slug}.png")
    for item in test:
        (folder / "test" / item.slug).mkdir(exist_ok=True)
        place(glyphs[item.char][1], image_size).save(folder / "test" / item.slug / f"{item.slug}.png")
    (folder / "test" / "classnames.json").write_text(
        json.dumps({language: [item.names[language] for item in test] for language in LANGUAGES}, ensure_ascii=False),
        encoding="utf-8",
    )
    paths = {
        "teacher_train": write_jsonl(
            folder / "teacher_train.jsonl",
            [{"image": f"glyphs/{item.slug}.png", "caption": item.names["en"]} for item in train],
        ),
        "parallel_emoji": write_jsonl(
            folder / "parallel_emoji.jsonl",
            [
                {"english": item.names["en"], "translation": item.names[language], "language": language}
                for item in train
                for language in LANGUAGES
                if language != "en"
            ],
        ),
        "train_captions": write_jsonl(
            folder / "train_captions.jsonl",
            [
                {"image": f"images/{item.slug}.png", "caption": item.names[language], "language": language}
                for item in train
                for language in LANGUAGES
            ],
        ),
        "test_captions": write_jsonl(
            folder / "test_captions.jsonl",
            [
                {"image": f"images/{item.slug}.png", "caption": item.names[language], "language": language}
                for item in test
                for language in LANGUAGES
            ],
        ),
    }
    paths["test_folder"] = folder / "test"
    paths["counts"] = folder / "counts.json"
    counts = {"train_emoji": len(train), "test_emoji": len(test), "train_emoji_dropped_for_shared_names": len(shared)}
    paths["counts"].write_text(json.dumps(counts), encoding="utf-8")
    return paths
