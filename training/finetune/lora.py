"""LoRA fine-tuning with `peft`: adapters on chosen linear layers of the text and/or image tower, the rest frozen.

The adapter is put on the whole `AltCLIPModel` (so that its saved keys load with ``PeftModel.from_pretrained`` on
our model in either stage); stage 1 then trains the model's text tower, whose layers peft replaced in place.
"""

import logging
import os
import re
import shutil
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.tuners.trainable_tokens import TrainableTokensLayer

from altclip.common.errors import UsageError
from modeling_altclip import AltCLIPModel

from ..arguments import FineTuningArguments
from ..loop.output_folder import move_into, staging_folder
from .new_tokens import WORD_EMBEDDINGS, check_token_choice, trainable_token_ids

logger = logging.getLogger(__name__)

TOWERS = {"text": ("text",), "vision": ("vision",), "both": ("text", "vision")}
# The linear layers of each tower, per kind, as patterns of their full module names (XLM-R and CLIP-ViT naming).
LAYER_PATTERNS = {
    (
        "text",
        "attention",
    ): r"text_model\.roberta\.encoder\.layer\.\d+\.attention\.(self\.(query|key|value)|output\.dense)",
    ("text", "mlp"): r"text_model\.roberta\.encoder\.layer\.\d+\.(intermediate|output)\.dense",
    ("text", "projection"): r"text_model\.transformation|text_projection",
    ("vision", "attention"): r"vision_model\.encoder\.layers\.\d+\.self_attn\.(q|k|v|out)_proj",
    ("vision", "mlp"): r"vision_model\.encoder\.layers\.\d+\.mlp\.fc[12]",
    ("vision", "projection"): r"visual_projection",
}
LAYER_KINDS = ("attention", "mlp", "projection")
MERGED_FOLDER = "merged"
# The flags that only mean something with an adapter (--lora_r above 0).
LORA_ONLY_FLAGS = ("--lora_alpha", "--lora_dropout", "--lora_targets", "--lora_layers", "--lora_trainable_tokens")


def lora_enabled(args: FineTuningArguments) -> bool:
    return args.lora_r > 0


def layer_kinds(args: FineTuningArguments) -> list[str]:
    return [kind.strip() for kind in args.lora_layers.split(",") if kind.strip()]


def flags_given(argv: list[str]) -> set[str]:
    """The ``--flag`` names in an (expanded) argument list, ``--flag=value`` included."""
    return {item.split("=", 1)[0] for item in argv if item.startswith("--")}


def check_lora_arguments(
    args: FineTuningArguments, stage: str, stage_args, training_args, model_args, given: set[str] = frozenset()
) -> None:
    """One-line refusals before any model loads; `given` holds the flags the user wrote (`flags_given`)."""
    if args.lora_r < 0:
        raise UsageError(f"altclip-train: --lora_r must be 0 (no adapter) or positive, not {args.lora_r}.")
    if not lora_enabled(args):
        if args.merge_adapter:
            raise UsageError("altclip-train: --merge_adapter true needs an adapter: pass --lora_r (e.g. 16).")
        lora_only = [flag for flag in LORA_ONLY_FLAGS if flag in given]
        if lora_only:
            raise UsageError(
                f"altclip-train: {', '.join(lora_only)} set an adapter, but --lora_r is 0 (no adapter: full "
                "fine-tuning); pass --lora_r above 0 (e.g. 16) for LoRA, or drop them for full fine-tuning."
            )
        return
    if args.lora_alpha <= 0:
        raise UsageError(
            f"altclip-train: --lora_alpha {args.lora_alpha:g} scales the adapter's update to nothing or backwards "
            "(update x alpha/r); give a positive value, e.g. twice --lora_r."
        )
    check_token_choice(args.lora_trainable_tokens, args.lora_targets)
    unknown = [kind for kind in layer_kinds(args) if kind not in LAYER_KINDS]
    if unknown or not layer_kinds(args):
        raise UsageError(
            f"altclip-train: --lora_layers {args.lora_layers!r}: choose a comma-separated list of "
            f"{', '.join(LAYER_KINDS)}."
        )
    if not 0 <= args.lora_dropout < 1:
        raise UsageError(f"altclip-train: --lora_dropout must be in [0, 1), not {args.lora_dropout}.")
    if training_args.deepspeed or training_args.fsdp:
        raise UsageError(
            "altclip-train: LoRA trains with DDP (its adapters are small; optimizer state is not worth sharding); "
            "drop --deepspeed / --fsdp or --lora_r."
        )
    if stage == "teacher":
        if args.lora_targets != "text":
            raise UsageError("altclip-train teacher: stage 1 trains the text tower only; use --lora_targets text.")
        if not model_args.model_name_or_path:
            raise UsageError(
                "altclip-train teacher: LoRA adapts an existing AltCLIP (--model_name_or_path); a new one's "
                "transformation layer starts random and must be trained in full."
            )
        return
    if stage_args.unfreeze_vision:
        raise UsageError(
            "altclip-train: with LoRA the towers stay frozen and only adapters train; drop --unfreeze_vision and use "
            "--lora_targets both (or vision) to adapt the image tower."
        )
    if stage_args.cache_image_features and args.lora_targets != "text":
        raise UsageError(
            "altclip-train: --cache_image_features needs a frozen image tower; use --lora_targets text or drop it."
        )


def target_module_names(model: torch.nn.Module, args: FineTuningArguments) -> list[str]:
    """Full names of the linear layers that get adapters (exact names: no pattern can match elsewhere)."""
    patterns = [LAYER_PATTERNS[(tower, kind)] for tower in TOWERS[args.lora_targets] for kind in layer_kinds(args)]
    chosen = re.compile("|".join(f"(?:{pattern})" for pattern in patterns))
    return [
        name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear) and chosen.fullmatch(name)
    ]


def apply_lora(
    model: AltCLIPModel,
    args: FineTuningArguments,
    base_model_name_or_path: str | None,
    token_ids: list[int] | None = None,
) -> PeftModel:
    """Wraps `model` (in place) with LoRA adapters, and with `token_ids` trainable rows of the text tower's word
    embeddings (peft's trainable tokens, saved in the adapter); every other parameter is frozen."""
    targets = target_module_names(model, args)
    if not targets:
        raise UsageError(
            f"altclip-train: no {args.lora_layers} linear layers found in the {args.lora_targets} tower(s)."
        )
    base = base_model_name_or_path or model.name_or_path
    if base and Path(base).expanduser().is_dir():
        base = str(Path(base).expanduser().resolve())  # the adapter then finds its base from any folder
    # peft stores the instance attribute `name_or_path` as base_model_name_or_path (not config._name_or_path)
    model.name_or_path = model.config._name_or_path = base
    config = LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=targets,
        bias="none",
        trainable_token_indices={WORD_EMBEDDINGS: list(token_ids)} if token_ids else None,
    )
    peft_model = get_peft_model(model, config)
    trainable, total = count_parameters(peft_model)
    logger.info(
        "LoRA r=%d on %d layers%s: %s of %s parameters trainable",
        args.lora_r,
        len(targets),
        f" + {len(token_ids)} token embeddings" if token_ids else "",
        f"{trainable:,}",
        f"{total:,}",
    )
    return peft_model


def apply_lora_for_data(
    model: AltCLIPModel,
    args: FineTuningArguments,
    base_model_name_or_path: str | None,
    dataset,
    text_columns,
    tokenizer,
    training_args=None,
) -> PeftModel:
    """`apply_lora`, with the token embeddings that --lora_trainable_tokens chooses (by default those of the
    training texts in `dataset`'s `text_columns`, found once per run: see `new_tokens.shared_token_ids`)."""
    vocab_size = model.config.text_config.vocab_size
    token_ids = trainable_token_ids(
        args.lora_trainable_tokens, args.lora_targets, dataset, text_columns, tokenizer, vocab_size, training_args
    )
    return apply_lora(model, args, base_model_name_or_path, token_ids)


def trained_token_count(adapter: PeftModel) -> int:
    """How many token embeddings the adapter trains (0 without trainable tokens)."""
    indices = adapter.peft_config["default"].trainable_token_indices or {}
    return len(indices.get(WORD_EMBEDDINGS, [])) if isinstance(indices, dict) else len(indices)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, all) parameter counts."""
    return (
        sum(p.numel() for p in model.parameters() if p.requires_grad),
        sum(p.numel() for p in model.parameters()),
    )


def has_lora_layers(model: torch.nn.Module) -> bool:
    return any(isinstance(module, LoraLayer) for module in model.modules())


@torch.no_grad()
def merged_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The plain model's weights with every LoRA layer's update added and every trained token's embedding row
    written (peft's ``merge_and_unload`` without touching the model: merging and unmerging in place would leave the
    base weights rounded)."""
    state = {}
    lora_layers = {name: module for name, module in model.named_modules() if isinstance(module, LoraLayer)}
    token_layers = {name: module for name, module in model.named_modules() if isinstance(module, TrainableTokensLayer)}
    for name, tensor in model.state_dict().items():
        if ".lora_" in name or ".trainable_tokens_" in name:
            continue
        state[name.replace(".token_adapter.", ".").replace(".base_layer.", ".")] = tensor
    for name, layer in lora_layers.items():
        weight = layer.get_base_layer().weight
        delta = sum(layer.get_delta_weight(adapter) for adapter in layer.active_adapters if adapter in layer.lora_A)
        state[f"{name}.weight"] = weight + delta if isinstance(delta, torch.Tensor) else weight
    for name, layer in token_layers.items():  # ...word_embeddings.token_adapter -> ...word_embeddings.weight
        active = [adapter for adapter in layer.active_adapters if adapter in layer.trainable_tokens_delta]
        state[f"{name.removesuffix('.token_adapter')}.weight"] = layer.get_merged_weights(active)
    prefix = "base_model.model."
    return {name.removeprefix(prefix): tensor for name, tensor in state.items()}


def save_adapter(trainer, peft_model: PeftModel, processor, folder: str | os.PathLike, merge: bool) -> bool:
    """Rank 0 writes the adapter (adapter_model.safetensors + adapter_config.json) and the processor into
    `folder`, and with `merge` the merged full checkpoint into `folder`/merged; True on the rank that wrote."""
    if not trainer.is_world_process_zero():
        return False
    folder = Path(folder)
    staging = staging_folder(folder)
    try:
        peft_model.save_pretrained(staging, save_embedding_layers=False)
        processor.save_pretrained(staging)
        if merge:
            base = peft_model.get_base_model()
            base.save_pretrained(staging / MERGED_FOLDER, state_dict=merged_state_dict(peft_model))
            processor.save_pretrained(staging / MERGED_FOLDER)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    move_into(staging, folder)
    return True
