"""Image-text retrieval: image->text and text->image recall@1/5/10 and their mean (the paper's "MR")."""

import logging

import torch

from altclip.common.embedding import Embedder

from .loaders import RetrievalSet
from .metrics import load_metric

logger = logging.getLogger(__name__)
RECALL_AT = (1, 5, 10)


def top_k_indices(queries: torch.Tensor, items: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """[queries, k] indices of the most similar items, computed in chunks to bound memory."""
    k = min(k, items.shape[0])
    return torch.cat(
        [(queries[i : i + chunk] @ items.t()).topk(k, dim=1).indices for i in range(0, len(queries), chunk)]
    )


def retrieval_scores(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, caption_image: list[int]) -> dict:
    """Recall@k both ways; an image is found by text->image if it is the caption's image, and a caption list is
    right for image->text if any caption of that image is retrieved."""
    metric = load_metric("retrieval_recall")
    ks = list(RECALL_AT)  # with fewer than k candidates, recall@k counts every query as found
    captions_of = [[] for _ in range(len(image_embeddings))]
    for caption, image in enumerate(caption_image):
        captions_of[image].append(caption)
    image_to_text = metric.compute(
        predictions=top_k_indices(image_embeddings, text_embeddings, max(ks)).tolist(), references=captions_of, ks=ks
    )
    text_to_image = metric.compute(
        predictions=top_k_indices(text_embeddings, image_embeddings, max(ks)).tolist(),
        references=[[image] for image in caption_image],
        ks=ks,
    )
    scores = {f"image_to_text_{name}": value for name, value in image_to_text.items()}
    scores.update({f"text_to_image_{name}": value for name, value in text_to_image.items()})
    scores["mean_recall"] = sum(scores.values()) / len(scores)
    return {name: round(100 * value, 2) for name, value in scores.items()}


def evaluate_retrieval(
    embedder: Embedder, dataset: RetrievalSet, language: str, image_memo: dict | None = None
) -> dict:
    """Embeds the set's images and captions and scores retrieval; unreadable images drop out with their captions.

    `image_memo` keeps image embeddings between calls, so the languages of one image set (XTD10) embed it once.
    """
    key = tuple(str(image) for image in dataset.images)
    if image_memo is not None and key in image_memo:
        image_embeddings, kept, failures = image_memo[key]
    else:
        image_embeddings, kept, failures = embedder.images(dataset.images, f"{dataset.name} images")
        if image_memo is not None:
            image_memo[key] = image_embeddings, kept, failures
    position = {image: row for row, image in enumerate(kept)}
    captions = [
        (text, position[image]) for text, image in zip(dataset.captions, dataset.caption_image) if image in position
    ]
    text_embeddings = embedder.texts([text for text, _ in captions], f"{dataset.name} captions")
    result = {
        "task": "retrieval",
        "dataset": dataset.name,
        "language": language,
        "num_images": len(kept),
        "num_captions": len(captions),
        "skipped_images": len(failures),
        "skipped_rows": dataset.skipped_rows,
        "metrics": retrieval_scores(image_embeddings, text_embeddings, [image for _, image in captions]),
    }
    logger.info("%s %s: %s", dataset.name, language, result["metrics"])
    return result
