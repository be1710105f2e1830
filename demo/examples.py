"""The demo's examples: the model's own (a ``demo_examples/`` folder beside its weights, e.g. held-out emoji for the
emoji-trained default model) first, then scikit-image's photos (shipped inside its wheel), labels in several
languages."""

import json
import os
import tempfile
from pathlib import Path

from PIL import Image

from altclip.common.constants import MODEL_EXAMPLES_FILE, MODEL_EXAMPLES_FOLDER
from modeling_altclip.assets import cache_dir

PHOTOS = {  # file name -> scikit-image loader
    "astronaut.png": lambda data: data.astronaut(),
    "chelsea.png": lambda data: data.chelsea(),
    "coffee.png": lambda data: data.coffee(),
    "rocket.png": lambda data: data.rocket(),
    "motorcycle.png": lambda data: data.stereo_motorcycle()[0],
}
LABELS = {
    "English": "cat, astronaut, rocket, cup of coffee, motorcycle",
    "Deutsch": "Katze, Astronautin, Rakete, Tasse Kaffee, Motorrad",
    "Français": "chat, astronaute, fusée, tasse de café, moto",
    "Español": "gato, astronauta, cohete, taza de café, motocicleta",
    "中文": "猫, 宇航员, 火箭, 一杯咖啡, 摩托车",
    "日本語": "猫, 宇宙飛行士, ロケット, コーヒー, バイク",
}
TEMPLATES = {
    "English": "a photo of a {}",
    "Deutsch": "ein Foto von {}",
    "Français": "une photo de {}",
    "Español": "una foto de {}",
    "中文": "一张{}的照片",
    "日本語": "{}の写真",
}
SEARCHES = ["a cat", "eine Rakete", "une tasse de café", "宇航员", "una motocicleta"]
CAPTIONS = "a cat lying on a rug\nein Astronaut im Raumanzug\nune fusée sur le pas de tir\n一杯咖啡"


def example_folder() -> Path:
    """The photos as PNG files (Gradio examples are files), written once into the cache folder."""
    folder = cache_dir() / "demo_examples"
    missing = [name for name in PHOTOS if not (folder / name).is_file()]
    if missing:
        from skimage import data

        folder.mkdir(parents=True, exist_ok=True)
        for name in missing:
            with tempfile.NamedTemporaryFile(dir=folder, suffix=".png", delete=False) as partial:
                Image.fromarray(PHOTOS[name](data)).save(partial, format="PNG")
            os.replace(partial.name, folder / name)
    return folder


def example_photos() -> list[str]:
    folder = example_folder()
    return [str(folder / name) for name in PHOTOS]


def classification_examples(model_name_or_path: str | Path) -> list[list[str]]:
    """[image, labels, template] rows: the model's own examples (one language per image) first, then the photos
    with LABELS in each language."""
    rows = []
    folder = Path(model_name_or_path) / MODEL_EXAMPLES_FOLDER
    if (folder / MODEL_EXAMPLES_FILE).is_file():
        own = json.loads((folder / MODEL_EXAMPLES_FILE).read_text(encoding="utf-8"))
        for image, language in zip(own["images"], own["labels"]):
            rows.append([str(folder / image), own["labels"][language], own.get("template", "{}")])
    photos = example_photos()
    rows += [[photo, LABELS[language], TEMPLATES[language]] for photo, language in zip(photos, LABELS)]
    return rows
