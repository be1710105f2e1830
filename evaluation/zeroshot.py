"""Zero-shot classification: one text embedding per class (its templates averaged), images ranked against them."""

import hashlib
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from altclip.common.embedding import Embedder
from altclip.common.files import replace_atomically
from altclip.common.zero_shot_scoring import class_embeddings as mean_of_templates
from altclip.common.zero_shot_scoring import rank_classes, zero_shot_result  # noqa: F401 (rank_classes: evaluation's name)

from .loaders import ClassificationSet
from .prompts import ClassPrompts

logger = logging.getLogger(__name__)
TOP_K = 5


class ClassEmbeddingCache:
    """Class embeddings by (model fingerprint, class names, templates): in memory, and on disk if given a folder."""

    def __init__(self, folder: str | Path | None = None):
        self.folder = Path(folder) if folder else None
        self.memory: dict[str, torch.Tensor] = {}

    def get(self, embedder: Embedder, prompts: ClassPrompts) -> torch.Tensor:
        key = hashlib.sha256(
            "\0".join([embedder.fingerprint(), *prompts.classnames, "\1", *prompts.templates]).encode()
        ).hexdigest()[:24]
        if key in self.memory:
            return self.memory[key]
        path = self.folder / f"classes-{key}.safetensors" if self.folder else None
        embeddings = self._read(path, len(prompts.classnames)) if path is not None and path.is_file() else None
        if embeddings is None:
            embeddings = class_embeddings(embedder, prompts)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                replace_atomically(
                    path, lambda partial: save_file({"class_embeddings": embeddings.contiguous()}, partial)
                )
        self.memory[key] = embeddings
        return embeddings

    @staticmethod
    def _read(path: Path, classes: int) -> torch.Tensor | None:
        """The cached [classes, dim] embeddings, or None (with a warning) for a file that is corrupt, truncated or
        of another shape: it is then recomputed and replaced."""
        try:
            embeddings = load_file(path)["class_embeddings"]
            if embeddings.ndim != 2 or embeddings.shape[0] != classes or not torch.isfinite(embeddings).all():
                raise ValueError(f"holds {tuple(embeddings.shape)} values, not {classes} finite class embeddings")
            return embeddings
        except Exception as error:  # safetensors raises several types for a damaged file; all mean "recompute"
            logger.warning("Class-embedding cache %s is unusable (%s); recomputing it.", path, error)
            return None


def class_embeddings(embedder: Embedder, prompts: ClassPrompts) -> torch.Tensor:
    """[classes, dim]: the mean of each class's normalised template embeddings, normalised again."""
    texts = [text for index in range(len(prompts.classnames)) for text in prompts.prompts(index)]
    embeddings = embedder.texts(texts, f"{len(prompts.classnames)} classes x {len(prompts.templates)} templates")
    return mean_of_templates(embeddings, len(prompts.classnames), len(prompts.templates))


def evaluate_zero_shot(
    embedder: Embedder,
    dataset: ClassificationSet,
    prompts_by_language: dict[str, ClassPrompts],
    cache: ClassEmbeddingCache | None = None,
) -> list[dict]:
    """One result per language: top-1, top-5, mean per-class recall over the images of that language's classes.

    The images are embedded once. A language whose list names only some classes (Babel-ImageNet) is scored on the
    images of those classes, with those classes as the candidates.
    """
    cache = cache or ClassEmbeddingCache()
    image_embeddings, kept, failures = embedder.images(dataset.images, f"{dataset.name} images")
    labels = torch.tensor([dataset.labels[i] for i in kept])
    results = []
    for language, prompts in prompts_by_language.items():
        class_labels = torch.tensor(prompts.labels)
        members = torch.isin(labels, class_labels)
        if not members.any():
            raise ValueError(f"No image of {dataset.name} belongs to a class named in {language}.")
        result = zero_shot_result(
            dataset.name,
            language,
            image_embeddings[members],
            labels[members],
            cache.get(embedder, prompts),
            len(prompts.templates),
            len(failures),
            class_labels,
        )
        results.append(result)
        logger.info("%s %s: %s", dataset.name, language, result["metrics"])
    return results
