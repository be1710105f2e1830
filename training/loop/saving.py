"""The complete AltCLIP model out of a running Trainer, whatever the backend (DDP, DeepSpeed ZeRO-2/3, FSDP)."""

import os
import shutil
from pathlib import Path

import torch

from ..finetune.lora import has_lora_layers, merged_state_dict
from .output_folder import move_into, staging_folder


def full_state_dict(trainer, model) -> dict[str, torch.Tensor]:
    """The complete model's weights, gathered through accelerate on every rank (ZeRO-3 and FSDP hold only shards;
    the call is collective), with stage 1's trained student put back inside its AltCLIP."""
    if has_lora_layers(model):  # LoRA (DDP: every rank holds all weights): the adapters' updates added
        return merged_state_dict(model)
    trained = trainer.accelerator.get_state_dict(trainer.deepspeed if trainer.is_deepspeed_enabled else trainer.model)
    if not trained:  # ZeRO-3 consolidates on rank 0 only
        return {}
    student = trainer.accelerator.unwrap_model(trainer.model)
    if student is model:
        state = dict(trained)
    else:
        prefix = next(name for name, module in model.named_modules() if module is student) + "."
        state = {name: tensor for name, tensor in model.state_dict().items() if not name.startswith(prefix)}
        state.update({prefix + name: tensor for name, tensor in trained.items()})
    if hasattr(trainer, "max_log_logit_scale"):  # the saved temperature within its bound, whatever the backend
        state["logit_scale"] = state["logit_scale"].clamp(0, trainer.max_log_logit_scale)
    return state


def save_complete_model(trainer, model, processor, folder: str | os.PathLike) -> bool:
    """Gathers the weights on every rank (a collective: call it on all of them), then rank 0 writes the model and
    its processor to `folder` (through a staging folder: no half-written model under the final names); True on the
    rank that wrote."""
    state = full_state_dict(trainer, model)
    if not trainer.is_world_process_zero():
        return False
    folder = Path(folder)
    staging = staging_folder(folder)  # written in full first, then renamed into place
    try:
        model.save_pretrained(staging, state_dict=state)
        processor.save_pretrained(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    move_into(staging, folder)
    return True
