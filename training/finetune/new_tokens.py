"""Which word embeddings a LoRA run also trains: by default the tokens that occur in the fine-tuning texts.

LoRA adapts layers every text passes through; a new word (a product name, a language's script) is learned mostly in
its own token embeddings, which LoRA leaves frozen. peft trains chosen rows of an embedding beside the adapters
(``LoraConfig.trainable_token_indices``) and saves them in the adapter file, so only the rows used change and the
adapter stays small. Measured on the reproduction's model in ``reproduction/finetune_demonstration.py``.
"""

import logging
from collections.abc import Iterable

from altclip.common.errors import UsageError

logger = logging.getLogger(__name__)

AUTO, NONE = "auto", "none"
# The text tower's word embeddings, named as peft's trainable_token_indices needs them (full module name).
WORD_EMBEDDINGS = "text_model.roberta.embeddings.word_embeddings"


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
    tokens (<s>, </s>, padding) excluded: they are in every text and trained enough already."""
    found: set[int] = set()
    for batch in batches:
        texts = [text for text in batch if isinstance(text, str) and text]
        if texts:
            for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
                found.update(ids)
    return found - set(tokenizer.all_special_ids)


def trainable_token_ids(
    choice_text: str, lora_targets: str, dataset, text_columns: Iterable[str], tokenizer, vocab_size: int
) -> list[int] | None:
    """The token ids whose embeddings train with the adapters, or None for none.

    ``auto``: where LoRA adapts the text tower, the tokens of the training table's `text_columns`; a streamed
    (webdataset) source is not read twice, so ``auto`` trains no tokens there (say them with explicit ids)."""
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
        found = set()
        for column in text_columns:
            found |= tokens_of_texts(rows.column_batches(column, 4096), tokenizer)
        ids = sorted(found)
        logger.info("Training the embeddings of the %d distinct tokens of the training texts", len(ids))
        return ids or None
    too_large = [token for token in choice if token >= vocab_size]
    if too_large:
        raise UsageError(
            f"altclip-train: --lora_trainable_tokens: id {too_large[0]} is beyond the text tower's {vocab_size} "
            "embeddings."
        )
    return choice
