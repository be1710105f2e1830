"""A Gradio Space for the demo: ``app.py``, ``requirements.txt``, a README with the Space metadata, and the packages
the app runs (``altclip/demo/``, the shared ``altclip/common/``, ``altclip/__init__.py`` and the flat
``modeling_altclip/``), copied as source under their import names."""

import importlib.util
import re
import shutil
from pathlib import Path

from huggingface_hub import SpaceCardData

from .staging import relative_files, require_empty_folder

SPACE_APP = ("altclip.demo", "space_app.py")  # the Space's app.py: a file of the demo package, its MODEL line filled in
MODEL_LINE = re.compile(r"^MODEL = .*$", re.MULTILINE)
SPACE_PACKAGES = ("altclip.demo", "altclip.common", "modeling_altclip")
REQUIREMENTS = """torch>=2.4
transformers>=5.24,<6
safetensors>=0.4
gradio>=5
pillow>=10
scikit-image
"""
SPACE_README = """---
{metadata}
---

# AltCLIP multilingual demo

Zero-shot image classification, text-to-image search and image-to-text ranking in many languages with
[{model}](https://huggingface.co/{model}), made with the `altclip` package (`altclip-push-space`).
"""


def package_folder(package: str) -> Path:
    """The source folder of an installed package, located without importing it (no job imports another; finding
    ``altclip.demo`` imports only ``altclip``'s lazy ``__init__``)."""
    return Path(importlib.util.find_spec(package).origin).parent


def prepare_space_folder(target: str | Path, model: str, title: str = "AltCLIP multilingual demo") -> list[str]:
    """Writes the Space into the empty (or new) folder `target`; returns its relative file paths."""
    target = Path(target)
    require_empty_folder(target)
    target.mkdir(parents=True, exist_ok=True)
    for package in SPACE_PACKAGES:
        shutil.copytree(
            package_folder(package),
            target.joinpath(*package.split(".")),
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
    shutil.copy2(package_folder("altclip") / "__init__.py", target / "altclip" / "__init__.py")
    app, replaced = MODEL_LINE.subn(
        f"MODEL = {model!r}", (package_folder(SPACE_APP[0]) / SPACE_APP[1]).read_text(encoding="utf-8"), count=1
    )
    if not replaced:
        raise ValueError(f"{SPACE_APP[0]}: {SPACE_APP[1]} has no MODEL line to fill in.")
    (target / "app.py").write_text(app, encoding="utf-8")
    (target / "requirements.txt").write_text(REQUIREMENTS, encoding="utf-8")
    metadata = SpaceCardData(
        title=title,
        sdk="gradio",
        app_file="app.py",
        models=[model],
        license="apache-2.0",
        tags=["altclip", "multilingual", "zero-shot-image-classification"],
    )
    (target / "README.md").write_text(SPACE_README.format(metadata=metadata.to_yaml(), model=model), encoding="utf-8")
    return relative_files(target)
