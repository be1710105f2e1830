"""Zero-shot classification and image-text retrieval for AltCLIP models, in many languages (``altclip-eval``)."""

from altclip.common.embedding import Embedder, resolve_device_and_dtype
from altclip.common.results_format import write_results

from .field_sets import FIELD_LOADERS, load_flickr30k_200, load_multi30k, load_xm3600, load_xtd200
from .loaders import CLASSIFICATION_LOADERS, RETRIEVAL_LOADERS, ClassificationSet, RetrievalSet
from .prompts import ClassPrompts, class_prompts, custom_prompts, prompts_dir
from .references import load_references
from .retrieval import PROTOCOLS, apply_protocol, evaluate_retrieval, language_average, retrieval_scores
from .zeroshot import ClassEmbeddingCache, class_embeddings, evaluate_zero_shot

__all__ = [
    "CLASSIFICATION_LOADERS",
    "FIELD_LOADERS",
    "PROTOCOLS",
    "RETRIEVAL_LOADERS",
    "ClassEmbeddingCache",
    "ClassPrompts",
    "ClassificationSet",
    "Embedder",
    "RetrievalSet",
    "apply_protocol",
    "class_embeddings",
    "class_prompts",
    "custom_prompts",
    "evaluate_retrieval",
    "evaluate_zero_shot",
    "language_average",
    "load_flickr30k_200",
    "load_multi30k",
    "load_references",
    "load_xm3600",
    "load_xtd200",
    "prompts_dir",
    "resolve_device_and_dtype",
    "retrieval_scores",
    "write_results",
]
