"""Parallel text for teacher learning from clip-benchmark's published lists: Babel-ImageNet class names paired
with their English names, and NLLB-translated prompt sentences ("ein Foto von einer Schleie.") paired with the
English ones."""

import random
from pathlib import Path

from altclip.common.records import write_jsonl
from altclip.evaluation.prompts import BABEL_FILE, NLLB_FILE, babel_code, prompts_dir, read_published_json

from .emoji_data import normalised


def emoji_name_coincidences(rows: list[dict], emoji_names: dict[str, set[str]]) -> dict:
    """How often generic parallel text names a training emoji by coincidence (ImageNet's "scorpion"): rows whose
    English side, or whose translation, equals (normalised) a training emoji's name in that language.
    `emoji_names` maps a language to its normalised training emoji names."""
    english = emoji_names.get("en", set())
    hits = [
        row
        for row in rows
        if normalised(row["english"]) in english
        or normalised(row["translation"]) in emoji_names.get(row["language"], set())
    ]
    classes = sorted({row["english"] for row in hits if normalised(row["english"]) in english})
    return {
        "parallel_rows": len(rows),
        "rows_naming_a_training_emoji": len(hits),
        "english_names_equal_to_a_training_emoji": len(classes),
        "examples": classes[:12],
    }


def imagenet_parallel_rows(
    languages: list[str],
    sentences_per_class: int = 1,
    seed: int = 0,
    folder: Path | None = None,
    held_out: set[str] = frozenset(),
) -> list[dict]:
    """{english, translation, language} rows: each Babel class name with its English name, plus
    `sentences_per_class` prompt sentences per class built from the same template in both languages. A class whose
    English or translated name is in `held_out` (normalised names) gives no row at all, nor do its sentences."""
    folder = prompts_dir(folder)
    english_names = read_published_json(folder / "en_classnames.json")["imagenet1k"]
    babel = read_published_json(folder / BABEL_FILE)
    templates = read_published_json(folder / NLLB_FILE)
    rng, rows = random.Random(seed), []
    for language in languages:
        code = babel_code(language)
        if code not in babel:
            continue
        labels, names = babel[code]
        english_templates, translated_templates = templates.get("EN", []), templates.get(code, [])
        for label, name in zip(labels, names):
            if {normalised(english_names[label]), normalised(name)} & held_out:
                continue
            rows.append({"english": english_names[label], "translation": name, "language": language})
            for _ in range(sentences_per_class if translated_templates else 0):
                index = rng.randrange(min(len(english_templates), len(translated_templates)))
                rows.append(
                    {
                        "english": " ".join(english_templates[index].replace("{}", english_names[label]).split()),
                        "translation": " ".join(translated_templates[index].replace("{}", name).split()),
                        "language": language,
                    }
                )
    return rows


def write_imagenet_parallel(
    path: str | Path,
    languages: list[str],
    sentences_per_class: int = 1,
    seed: int = 0,
    held_out: set[str] = frozenset(),
) -> Path:
    return write_jsonl(path, imagenet_parallel_rows(languages, sentences_per_class, seed, held_out=held_out))
