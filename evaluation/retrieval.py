"""Image-text retrieval: image->text and text->image recall@1/5/10 and their mean (the paper's "MR")."""

import logging
import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import gather_object

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


PROTOCOLS = ("first_caption", "all_captions")


def apply_protocol(dataset: RetrievalSet, protocol: str) -> RetrievalSet:
    """The captions a protocol scores. ``all_captions``: every caption is a text->image query and any caption of an
    image is a hit for image->text (big_vision's image_text_retrieval.py, Meta CLIP / mSigLIP on XM3600).
    ``first_caption``: only each image's first caption (CLIP_benchmark's crossmodal3600.py keeps ``captions[0]``;
    the open_clip multilingual results table was scored so)."""
    if protocol == "all_captions":
        return dataset
    if protocol != "first_caption":
        raise ValueError(f"Unknown --protocol {protocol!r}; choose {' or '.join(PROTOCOLS)}.")
    seen, captions, caption_image = set(), [], []
    for text, image in zip(dataset.captions, dataset.caption_image):
        if image not in seen:
            seen.add(image)
            captions.append(text)
            caption_image.append(image)
    return replace(dataset, captions=captions, caption_image=caption_image)


def process_state(device: str = "auto") -> PartialState | None:
    """accelerate's view of the processes when launched by torchrun (several processes), else None; on CPUs (no
    accelerator, or ``--device cpu``) the processes talk over gloo."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    return PartialState(cpu=device == "cpu" or not torch.cuda.is_available())


def _any_process_failed(failed: bool) -> bool:
    """Whether any process failed, agreed on by all of them (a one-number all-reduce)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return failed
    flag = torch.tensor([float(failed)], device=PartialState().device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())


def _gathered(work: Callable[[], Any]) -> list[Any]:
    """Runs `work` in every process and gathers the results in rank order. Any error in any process (not only bad
    data: out of memory, a bug) is first agreed on with an all-reduce of a failure flag, so no process is left
    waiting at the gather; then every process raises the same one-line error naming the first process that failed
    (ValueError for bad data or files, so the command ends in one line; RuntimeError for anything else)."""
    try:
        part, problem = work(), None
    except Exception as caught:  # every kind: a process that raises alone leaves the others in the gather
        first_line = str(caught).splitlines()[0] if str(caught) else ""
        data_error = isinstance(caught, (OSError, KeyError, ValueError))
        part, problem = None, (type(caught).__name__, first_line, data_error)
    if not _any_process_failed(problem is not None):
        return gather_object([part])
    problems = gather_object([problem])  # small: every process's (type, message) or None, in rank order
    rank, (name, message, data_error) = next((r, p) for r, p in enumerate(problems) if p is not None)
    error_type = ValueError if data_error else RuntimeError
    raise error_type(f"process {rank} of {len(problems)} failed: {name}: {message}")


def _embed_images_sharded(embedder: Embedder, sources: list, description: str, state: PartialState | None):
    """(embeddings, kept indices, failures, images each process embedded): each process embeds its contiguous share
    (accelerate's split_between_processes) and the shares are gathered in rank order, so the result is the
    one-process result."""
    if state is None:
        embeddings, kept, failures = embedder.images(sources, description)
        return embeddings, kept, failures, [len(sources)]
    with state.split_between_processes(list(range(len(sources)))) as share:

        def embed_share():
            embeddings, kept, failures = embedder.images([sources[i] for i in share], description, allow_none=True)
            return embeddings, [share[row] for row in kept], failures, len(share)

        parts = _gathered(embed_share)
    kept = [index for part in parts for index in part[1]]
    failures = [failure for part in parts for failure in part[2]]
    if not kept:
        example = f"{failures[0].where}: {failures[0].reason}" if failures else "none"
        raise ValueError(f"None of the {len(sources)} {description} could be read, e.g. {example}.")
    return torch.cat([part[0] for part in parts]), kept, failures, [part[3] for part in parts]


def _embed_texts_sharded(embedder: Embedder, texts: list[str], description: str, state: PartialState | None):
    if state is None:
        return embedder.texts(texts, description)
    with state.split_between_processes(list(texts)) as share:
        return torch.cat(_gathered(lambda: embedder.texts(share, description)))


def evaluate_retrieval(
    embedder: Embedder,
    dataset: RetrievalSet,
    language: str,
    image_memo: dict | None = None,
    protocol: str = "all_captions",
    state: PartialState | None = None,
) -> dict:
    """Embeds the set's images and captions and scores retrieval; unreadable images drop out with their captions.

    `image_memo` keeps image embeddings between calls, so the languages of one image set (XTD, XM3600) embed it
    once. Under torchrun (`state`) each process embeds its share of images and captions; all get the whole."""
    dataset = apply_protocol(dataset, protocol)
    key = tuple(str(image) for image in dataset.images)
    if image_memo is not None and key in image_memo:
        image_embeddings, kept, failures, shares = image_memo[key]
    else:
        image_embeddings, kept, failures, shares = _embed_images_sharded(
            embedder, dataset.images, f"{dataset.name} images", state
        )
        if image_memo is not None:
            image_memo[key] = image_embeddings, kept, failures, shares
    position = {image: row for row, image in enumerate(kept)}
    captions = [
        (text, position[image]) for text, image in zip(dataset.captions, dataset.caption_image) if image in position
    ]
    text_embeddings = _embed_texts_sharded(embedder, [text for text, _ in captions], f"{dataset.name} captions", state)
    result = {
        "task": "retrieval",
        "dataset": dataset.name,
        "language": language,
        "protocol": protocol,
        "num_images": len(kept),
        "num_captions": len(captions),
        "skipped_images": len(failures),
        "skipped_rows": dataset.skipped_rows,
        "processes": len(shares),
        "images_embedded_per_process": shares,
        "metrics": retrieval_scores(image_embeddings, text_embeddings, [image for _, image in captions]),
    }
    logger.info("%s %s (%s): %s", dataset.name, language, protocol, result["metrics"])
    return result


def language_average(benchmark: str, results: list[dict]) -> dict:
    """One row averaging each metric over the languages, unweighted, as the papers and CLIP_benchmark's results
    tables ("avg" columns of open_clip's openclip_multilingual_retrieval_results.csv) average them."""
    names = list(results[0]["metrics"])
    return {
        "task": "retrieval",
        "dataset": benchmark,
        "language": "avg",
        "protocol": results[0]["protocol"],
        "averaged_over": [result["language"] for result in results],
        "metrics": {name: round(sum(r["metrics"][name] for r in results) / len(results), 2) for name in names},
    }
