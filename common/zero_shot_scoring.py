"""Zero-shot classification, the one implementation that altclip-eval's ``zeroshot`` and training's zero-shot monitor
share: the class-folder reader (``ROOT/<class>/<image>``, optional ``ROOT/classnames.json`` with names per language),
class embeddings from prompt templates (the mean of the normalised template embeddings, normalised again), images
ranked against them, top-k accuracy and mean per-class recall, as entries of the shared results format
(`altclip.common.results_format`). A classnames.json is read alike everywhere: a byte-order mark is accepted, and
anything but a mapping of languages to lists of names is one line naming the file.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from altclip.common.errors import InputDataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}
TOP_K = 5
CLASSNAMES_FILE = "classnames.json"
IMAGE_FOLDER_LAYOUT = "ROOT/<class>/<image>.jpg, one folder per class (optional ROOT/classnames.json: {lang: [names]})"


def read_classnames(path: str | Path) -> dict[str, list[str]]:
    """``{language: [names]}`` from a classnames.json (a byte-order mark is accepted), or an `InputDataError`
    naming the file and what is wrong."""
    path = Path(path)
    try:
        names = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputDataError(
            f"{path} is not valid JSON ({error}); it should map languages to lists of names."
        ) from None
    if not isinstance(names, dict) or not all(
        isinstance(value, list) and all(isinstance(name, str) for name in value) for value in names.values()
    ):
        raise InputDataError(f'{path} should map languages to lists of names, e.g. {{"en": ["cat", "dog"]}}.')
    return names


def names_in_language(
    root: str | Path, names_by_language: dict, folder_names: Sequence[str], language: str, several_languages: bool
) -> list[str]:
    """The class names in `language`: from classnames.json, or the folder names when there is none and one language
    is asked for; an `InputDataError` naming what the file has otherwise."""
    names = names_by_language.get(language)
    if names is None and not names_by_language and not several_languages:
        return list(folder_names)
    if names is None:
        known = ", ".join(names_by_language) or "none (no classnames.json)"
        raise InputDataError(f"{root}/{CLASSNAMES_FILE} has no {language!r} names; it has {known}.")
    return list(names)


@dataclass(frozen=True)
class ClassFolder:
    """Images with labels from ``ROOT/<class>/``; labels follow the sorted folder names."""

    root: Path
    images: tuple[Path, ...]
    labels: tuple[int, ...]
    folder_names: tuple[str, ...]
    names_by_language: dict

    def class_names(self, language: str, several_languages: bool) -> list[str]:
        """See `names_in_language`."""
        return names_in_language(self.root, self.names_by_language, self.folder_names, language, several_languages)


def read_class_folder(root: str | Path) -> ClassFolder:
    """A `ClassFolder`, or FileNotFoundError / `InputDataError` naming the folder or file and what is wrong."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root} is missing. Expected layout: {IMAGE_FOLDER_LAYOUT}")
    classes = sorted(path.name for path in root.iterdir() if path.is_dir()) if root.is_dir() else []
    if not classes:
        raise FileNotFoundError(f"{root} holds no class folders. Expected layout: {IMAGE_FOLDER_LAYOUT}")
    images, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise FileNotFoundError(f"{root / name} holds no image ({', '.join(sorted(IMAGE_SUFFIXES))}).")
        images += files
        labels += [label] * len(files)
    names = {}
    if (root / CLASSNAMES_FILE).is_file():
        names = read_classnames(root / CLASSNAMES_FILE)
        for language, value in names.items():
            if len(value) != len(classes):
                raise InputDataError(
                    f"{root / CLASSNAMES_FILE}: {language} has {len(value)} names for {len(classes)} class folders."
                )
    return ClassFolder(root, tuple(images), tuple(labels), tuple(classes), names)


def class_embeddings(text_embeddings: torch.Tensor, classes: int, templates: int) -> torch.Tensor:
    """[classes, dim] from the normalised embeddings of every (class, template) prompt, class-major."""
    per_class = F.normalize(text_embeddings.float(), dim=-1).view(classes, templates, -1).mean(dim=1)
    return F.normalize(per_class, dim=-1)


def prompts(names: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Every class's prompts, class-major; templates hold ``{c}``."""
    return [template.replace("{c}", name) for name in names for template in templates]


def rank_classes(image_embeddings: torch.Tensor, classes: torch.Tensor, k: int = TOP_K) -> torch.Tensor:
    """[images, k] row indices of `classes`, best first."""
    scores = image_embeddings @ classes.t()
    return scores.topk(min(k, scores.shape[1]), dim=1).indices


def accuracy(ranked: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """top1, top5 (with 5 or more classes) and mean per-class recall, in percent with two decimals."""
    scores = {"top1": (ranked[:, 0] == labels).double().mean().item()}
    if ranked.shape[1] >= TOP_K:
        scores[f"top{TOP_K}"] = (ranked[:, :TOP_K] == labels[:, None]).any(dim=1).double().mean().item()
    recalls = [(ranked[labels == label, 0] == label).double().mean().item() for label in labels.unique()]
    scores["mean_per_class_recall"] = sum(recalls) / len(recalls)
    return {name: round(100 * value, 2) for name, value in scores.items()}


def zero_shot_result(
    dataset: str,
    language: str,
    image_embeddings: torch.Tensor,
    labels: torch.Tensor,
    classes: torch.Tensor,
    templates: int,
    skipped_images: int = 0,
    class_labels: torch.Tensor | None = None,
) -> dict:
    """One results entry: the images (normalised embeddings, labels) ranked against the class embeddings; with
    `class_labels` (a list naming only some classes, as Babel-ImageNet's), row i of `classes` is label
    ``class_labels[i]``."""
    ranked = rank_classes(F.normalize(image_embeddings.float(), dim=-1), classes)
    if class_labels is not None:
        ranked = class_labels[ranked]
    return {
        "task": "zero-shot classification",
        "dataset": dataset,
        "language": language,
        "num_classes": int(classes.shape[0]),
        "num_templates": templates,
        "num_images": int(len(labels)),
        "skipped_images": skipped_images,
        "metrics": accuracy(ranked, labels),
    }
