"""Zero-shot classification and image-text retrieval for AltCLIP models, in many languages (``altclip-eval``)."""

from altclip.common.embedding import Embedder, resolve_device_and_dtype
from altclip.common.results_format import write_results

from .loaders import CLASSIFICATION_LOADERS, RETRIEVAL_LOADERS, ClassificationSet, RetrievalSet
from .prompts import ClassPrompts, class_prompts, custom_prompts, prompts_dir
from .retrieval import evaluate_retrieval, retrieval_scores
from .zeroshot import ClassEmbeddingCache, class_embeddings, evaluate_zero_shot

__all__ = [
    "CLASSIFICATION_LOADERS",
    "RETRIEVAL_LOADERS",
    "ClassEmbeddingCache",
    "ClassPrompts",
    "ClassificationSet",
    "Embedder",
    "RetrievalSet",
    "class_embeddings",
    "class_prompts",
    "custom_prompts",
    "evaluate_retrieval",
    "evaluate_zero_shot",
    "prompts_dir",
    "resolve_device_and_dtype",
    "retrieval_scores",
    "write_results",
]
