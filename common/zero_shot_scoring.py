"""Zero-shot classification scored with a model held in memory: class embeddings from prompt templates, images
ranked against them, top-k accuracy and mean per-class recall, as results entries of the shared results format
(`altclip.common.results_format`). Training's zero-shot monitor scores its live model with it, spread over ranks.

Only what needs no evaluation-job code lives here: a class folder (``ROOT/<class>/<image>``, optional
``ROOT/classnames.json`` with names per language), the rules of altclip-eval's ``image_folder`` dataset. The
arithmetic follows altclip-eval's ``zeroshot`` (a class embedding is the mean of its normalised template
embeddings, normalised again; metrics as its ``zeroshot_accuracy`` module), so the numbers agree.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}
TOP_K = 5


@dataclass(frozen=True)
class ClassFolder:
    """Images with labels from ``ROOT/<class>/``; labels follow the sorted folder names."""

    root: Path
    images: tuple[Path, ...]
    labels: tuple[int, ...]
    folder_names: tuple[str, ...]
    names_by_language: dict

    def class_names(self, language: str, several_languages: bool) -> list[str]:
        """The class names in `language`: from classnames.json, or the folder names when there is none and one
        language is asked for; a ValueError naming what the file has otherwise."""
        names = self.names_by_language.get(language)
        if names is None and not self.names_by_language and not several_languages:
            return list(self.folder_names)
        if names is None:
            known = ", ".join(self.names_by_language) or "none (no classnames.json)"
            raise ValueError(f"{self.root}/classnames.json has no {language!r} names; it has {known}.")
        return list(names)


def read_class_folder(root: str | Path) -> ClassFolder:
    """A `ClassFolder`, or FileNotFoundError / ValueError naming the folder or file and what is wrong."""
    root = Path(root)
    classes = sorted(path.name for path in root.iterdir() if path.is_dir()) if root.is_dir() else []
    if not classes:
        raise FileNotFoundError(f"{root} holds no class folders; expected ROOT/<class>/<image>.jpg.")
    images, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise FileNotFoundError(f"{root / name} holds no image ({', '.join(sorted(IMAGE_SUFFIXES))}).")
        images += files
        labels += [label] * len(files)
    names = {}
    if (root / "classnames.json").is_file():
        try:
            names = json.loads((root / "classnames.json").read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{root / 'classnames.json'} is not valid JSON ({error}).") from None
        for language, value in names.items():
            if not isinstance(value, list) or len(value) != len(classes):
                raise ValueError(f"{root / 'classnames.json'}: {language} needs a list of {len(classes)} names.")
    return ClassFolder(root, tuple(images), tuple(labels), tuple(classes), names)


def class_embeddings(text_embeddings: torch.Tensor, classes: int, templates: int) -> torch.Tensor:
    """[classes, dim] from the normalised embeddings of every (class, template) prompt, class-major."""
    per_class = F.normalize(text_embeddings.float(), dim=-1).view(classes, templates, -1).mean(dim=1)
    return F.normalize(per_class, dim=-1)


def prompts(names: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Every class's prompts, class-major; templates hold ``{c}``."""
    return [template.replace("{c}", name) for name in names for template in templates]


def accuracy(ranked: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """top1, top5 (with 5 or more classes) and mean per-class recall, in percent with two decimals."""
    scores = {"top1": (ranked[:, 0] == labels).float().mean().item()}
    if ranked.shape[1] >= TOP_K:
        scores[f"top{TOP_K}"] = (ranked[:, :TOP_K] == labels[:, None]).any(dim=1).float().mean().item()
    recalls = [(ranked[labels == label, 0] == label).float().mean().item() for label in labels.unique()]
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
) -> dict:
    """One results entry: the images (normalised embeddings, labels) ranked against the class embeddings."""
    scores = F.normalize(image_embeddings.float(), dim=-1) @ classes.t()
    ranked = scores.topk(min(TOP_K, scores.shape[1]), dim=1).indices
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
