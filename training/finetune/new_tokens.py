"""Which word embeddings a LoRA run also trains: by default the tokens that occur in the fine-tuning texts.

LoRA adapts layers every text passes through; a new word (a product name, a language's script) is learned mostly in
its own token embeddings, which LoRA leaves frozen. peft trains chosen rows of an embedding beside the adapters
(``LoraConfig.trainable_token_indices``) and saves them in the adapter file, so only the rows used change and the
adapter stays small. Measured on the reproduction's model in ``reproduction/finetune_demonstration.py``.
"""

import datetime
import hashlib
import itertools
import json
import logging
import math
import time
from collections.abc import Iterable
from pathlib import Path

import torch

from altclip.common.errors import UsageError
from altclip.common.files import replace_atomically

from ..loop.feature_caches import fingerprint
from ..loop.teacher import tokenizer_digest

logger = logging.getLogger(__name__)

AUTO, NONE = "auto", "none"
# The text tower's word embeddings, named as peft's trainable_token_indices needs them (full module name).
WORD_EMBEDDINGS = "text_model.roberta.embeddings.word_embeddings"
TOKEN_CACHE = "token_cache"  # under --output_dir: the ids `auto` found, one file per tokenizer and tables
TOKEN_CACHE_VERSION = 1  # part of the cache key: raise it when the ids `auto` finds for the same texts change
BATCH_TEXTS = 16_384  # texts per tokenizer call: the fast tokenizer encodes a batch on every core (Rust threads)
# The other ranks wait for rank 0's tokenization in a barrier of their own, whose timeout assumes this rate (a
# fifth of the 14,759 texts/s measured with the XLM-R tokenizer on one core), never less than ddp_timeout.
WAIT_TEXTS_PER_SECOND = 3_000


def parse_token_choice(text: str) -> str | list[int]:
    """``auto``, ``none`` or comma-separated token ids (sorted, deduplicated); anything else refused in one line."""
    value = text.strip().lower()
    if value in (AUTO, NONE):
        return value
    try:
        ids = sorted({int(part) for part in value.split(",") if part.strip()})
    except ValueError:
        raise UsageError(
            f"altclip-train: --lora_trainable_tokens {text!r}: give auto (the tokens of the training texts), none, "
            "or comma-separated token ids."
        ) from None
    if not ids or ids[0] < 0:
        raise UsageError(f"altclip-train: --lora_trainable_tokens {text!r}: token ids are 0 or more.")
    return ids


def check_token_choice(text: str, lora_targets: str) -> None:
    """Before anything loads: the value parses, and token embeddings belong to the text tower."""
    choice = parse_token_choice(text)
    if isinstance(choice, list) and lora_targets == "vision":
        raise UsageError(
            "altclip-train: --lora_trainable_tokens trains text token embeddings; use --lora_targets text or both, "
            "or drop it."
        )


def tokens_of_texts(batches: Iterable[list], tokenizer) -> set[int]:
    """Every token id the tokenizer gives the texts (non-text values, e.g. skipped rows, are passed over), special
    tokens (<s>, </s>, padding) excluded: they are in every text and trained enough already. One tokenizer call per
    batch of texts."""
    found: set[int] = set()
    for batch in batches:
        texts = [text for text in batch if isinstance(text, str) and text]
        if texts:
            encoded = tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
            found.update(itertools.chain.from_iterable(encoded))
    return found - set(tokenizer.all_special_ids)


def corpus_tokens_key(rows, text_columns: Iterable[str], tokenizer) -> dict:
    """What the token ids of `rows`' `text_columns` depend on: the tokenizer, the tables (their `datasets`
    fingerprints, as the image feature cache keys them) and their sizes, the columns."""
    return {
        "what": "trainable token ids",
        "version": TOKEN_CACHE_VERSION,
        "tokenizer": tokenizer_digest(tokenizer),
        "tables": [table._fingerprint for table in rows.tables],
        "rows": [int(size) for size in rows.sizes],
        "columns": list(text_columns),
    }


def ids_digest(ids: Iterable[int]) -> str:
    """A short digest of a list of token ids, which every rank logs: equal digests, equal ids."""
    return hashlib.sha256(json.dumps(list(ids)).encode()).hexdigest()[:16]


def counted_token_ids(rows, text_columns: Iterable[str], tokenizer, cache_folder: Path | None = None) -> list[int]:
    """The sorted distinct token ids of `rows`' `text_columns`, read from ``cache_folder/tokens-<key>.json`` when
    an earlier start (a requeue) wrote it for the same tokenizer and tables, else tokenized and written there."""
    text_columns = list(text_columns)
    key = corpus_tokens_key(rows, text_columns, tokenizer)
    path = None if cache_folder is None else Path(cache_folder) / f"tokens-{fingerprint(key)}.json"
    if path is not None and path.is_file():
        ids = _cached_ids(path, key)
        if ids is not None:
            logger.info("Reusing the %d token ids of the training texts from %s", len(ids), path)
            return ids
    started, texts = time.perf_counter(), len(rows) * len(text_columns)
    found: set[int] = set()
    for column in text_columns:
        found |= tokens_of_texts(rows.column_batches(column, BATCH_TEXTS), tokenizer)
    ids = sorted(found)
    seconds = time.perf_counter() - started
    logger.info(
        "Tokenized the %d training texts (%s) once, in %.1f s (%.0f texts/s): %d distinct tokens",
        texts,
        ", ".join(text_columns),
        seconds,
        texts / max(seconds, 1e-9),
        len(ids),
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({"key": key, "ids": ids})
        replace_atomically(path, lambda partial: partial.write_text(payload))
    return ids


def _cached_ids(path: Path, key: dict) -> list[int] | None:
    """The ids of a cache file written for `key`, or None (unreadable, cut short, another key: recomputed)."""
    try:
        payload = json.loads(path.read_text())
        ids = payload["ids"]
        if payload["key"] == key and isinstance(ids, list) and all(type(token) is int for token in ids):
            return ids
    except (OSError, ValueError, KeyError, TypeError):
        pass
    logger.warning("%s is not a token-id cache of these texts; tokenizing them again", path)
    return None


def shared_token_ids(rows, text_columns: Iterable[str], tokenizer, training_args=None) -> list[int]:
    """`counted_token_ids`, once per run rather than once per rank: in a distributed run the global rank 0 counts
    them (or reads its cache under ``--output_dir``) and broadcasts them to every other rank, which waits in a gloo
    group of its own whose timeout covers the tokenization (`WAIT_TEXTS_PER_SECOND`), not ``ddp_timeout``. The
    broadcast needs no shared folder, so a node-local ``--output_dir`` works too."""
    text_columns = list(text_columns)
    folder = Path(training_args.output_dir) / TOKEN_CACHE if training_args is not None else None
    world_size = training_args.world_size if training_args is not None else 1
    if world_size <= 1 or not torch.distributed.is_initialized():
        return counted_token_ids(rows, text_columns, tokenizer, folder)
    texts = len(rows) * len(text_columns)
    seconds = max(int(training_args.ddp_timeout), math.ceil(texts / WAIT_TEXTS_PER_SECOND))
    group = torch.distributed.new_group(backend="gloo", timeout=datetime.timedelta(seconds=seconds))
    payload = [None]
    if training_args.process_index == 0:
        payload = [counted_token_ids(rows, text_columns, tokenizer, folder)]
    else:
        logger.info("Waiting up to %.0f min for rank 0 to find the token ids of the training texts", seconds / 60)
    torch.distributed.broadcast_object_list(payload, src=0, group=group)
    torch.distributed.destroy_process_group(group)
    return payload[0]


def trainable_token_ids(
    choice_text: str,
    lora_targets: str,
    dataset,
    text_columns: Iterable[str],
    tokenizer,
    vocab_size: int,
    training_args=None,
) -> list[int] | None:
    """The token ids whose embeddings train with the adapters, or None for none.

    ``auto``: where LoRA adapts the text tower, the tokens of the training table's `text_columns`, found once per run
    (`shared_token_ids`: rank 0 tokenizes, or reads the cache an earlier start wrote under `training_args`'
    output folder, and broadcasts); a streamed (webdataset) source is not read twice, so ``auto`` trains no tokens
    there (say them with explicit ids)."""
    choice = parse_token_choice(choice_text)
    if choice == NONE or lora_targets == "vision":
        return None
    if choice == AUTO:
        rows = getattr(dataset, "rows", None)
        if rows is None:
            logger.warning(
                "--lora_trainable_tokens auto reads table data; this run streams shards, so no token embeddings "
                "train (pass explicit ids to train some)."
            )
            return None
        ids = shared_token_ids(rows, text_columns, tokenizer, training_args)
        rank = training_args.process_index if training_args is not None else 0
        logger.info(
            "Rank %d trains the embeddings of the %d distinct tokens of the training texts (ids digest %s)",
            rank,
            len(ids),
            ids_digest(ids),
        )
        return ids or None
    too_large = [token for token in choice if token >= vocab_size]
    if too_large:
        raise UsageError(
            f"altclip-train: --lora_trainable_tokens: id {too_large[0]} is beyond the text tower's {vocab_size} "
            "embeddings."
        )
    return choice
