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

from altclip.common.errors import UsageError
from modeling_altclip import AltCLIPModel

from ..arguments import FineTuningArguments
from ..loop.output_folder import move_into, staging_folder

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


def lora_enabled(args: FineTuningArguments) -> bool:
    return args.lora_r > 0


def layer_kinds(args: FineTuningArguments) -> list[str]:
    return [kind.strip() for kind in args.lora_layers.split(",") if kind.strip()]


def check_lora_arguments(args: FineTuningArguments, stage: str, stage_args, training_args, model_args) -> None:
    """One-line refusals before any model loads."""
    if args.lora_r < 0:
        raise UsageError(f"altclip-train: --lora_r must be 0 (no adapter) or positive, not {args.lora_r}.")
    if not lora_enabled(args):
        if args.merge_adapter:
            raise UsageError("altclip-train: --merge_adapter true needs an adapter: pass --lora_r (e.g. 16).")
        return
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


def apply_lora(model: AltCLIPModel, args: FineTuningArguments, base_model_name_or_path: str | None) -> PeftModel:
    """Wraps `model` (in place) with LoRA adapters; every other parameter is frozen."""
    targets = target_module_names(model, args)
    if not targets:
        raise UsageError(
            f"altclip-train: no {args.lora_layers} linear layers found in the {args.lora_targets} tower(s)."
        )
    if base_model_name_or_path and Path(base_model_name_or_path).is_dir():
        base_model_name_or_path = str(Path(base_model_name_or_path).resolve())  # found from any folder
    model.config._name_or_path = base_model_name_or_path or model.config._name_or_path
    config = LoraConfig(
        r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, target_modules=targets, bias="none"
    )
    peft_model = get_peft_model(model, config)
    trainable, total = count_parameters(peft_model)
    logger.info(
        "LoRA r=%d on %d layers: %s of %s parameters trainable",
        args.lora_r,
        len(targets),
        f"{trainable:,}",
        f"{total:,}",
    )
    return peft_model


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
    """The plain model's weights with every LoRA layer's update added (peft's ``merge_and_unload`` without
    touching the model: merging and unmerging in place would leave the base weights rounded)."""
    state = {}
    lora_layers = {name: module for name, module in model.named_modules() if isinstance(module, LoraLayer)}
    for name, tensor in model.state_dict().items():
        if ".lora_" in name:
            continue
        state[name.replace(".base_layer.", ".")] = tensor
    for name, layer in lora_layers.items():
        weight = layer.get_base_layer().weight
        delta = sum(layer.get_delta_weight(adapter) for adapter in layer.active_adapters if adapter in layer.lora_A)
        state[f"{name}.weight"] = weight + delta if isinstance(delta, torch.Tensor) else weight
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
