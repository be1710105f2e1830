"""Nothing a user wrote is lost: the output folder is checked before anything loads (not an input model, no
finished model in it, writable) and before the first step (room for a checkpoint); a full disk is named."""

import errno
import logging
import math
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError

from altclip.common.errors import PathError
from altclip.common.files import PARTIAL_SUFFIX, partial_path, probe_writable

logger = logging.getLogger(__name__)

# What the final save writes at the top of the output folder (beside the Trainer's checkpoint-N folders).
FINAL_FILES = (
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "processor_config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "sentencepiece.bpe.model",
    "configuration_altclip.py",
    "modeling_altclip.py",
    "processing_altclip.py",
    "training_summary.json",
    "loss_curve.png",
    "adapter_config.json",  # LoRA runs (training/finetune/lora.py)
    "adapter_model.safetensors",
    "before_after.png",
)


STAGING_NAME = "saving"  # the final save's staging folder: partial_path(OUTPUT_DIR / STAGING_NAME)


def staging_folder(folder: Path) -> Path:
    """Where a final save is written before its files are renamed into `folder` (unique across hosts)."""
    return partial_path(folder / STAGING_NAME)


def remove_abandoned_saves(output: Path) -> None:
    """Removes staging folders of final saves that were killed (SIGTERM at a time limit, SIGKILL, a lost node):
    each holds a whole model that nothing else would ever delete. Called before any writer of this run starts, by
    the global rank 0 only (the other ranks may still be probing the folder)."""
    if os.environ.get("RANK", "0") != "0":
        return
    for abandoned in output.glob(f".{STAGING_NAME}.*{PARTIAL_SUFFIX}"):
        if abandoned.is_dir():
            size = sum(path.stat().st_size for path in abandoned.rglob("*") if path.is_file())
            shutil.rmtree(abandoned, ignore_errors=True)
            logger.warning(
                "Removed %s (%.1f MiB), the staging folder of an earlier save that was killed", abandoned, size / 2**20
            )


def local_folder(name: str | None) -> Path | None:
    """`name` as an existing local folder, or None (unset, or a Hub id)."""
    return Path(name).resolve() if name and Path(name).is_dir() else None


def check_output_folder(output_dir: str, inputs: list[str | None], overwrite: bool) -> None:
    """Refuses (one line) an output folder that is, or lies inside, an input model, or that holds files the final
    save would replace (unless `overwrite`); then makes sure the folder can be written."""
    output = Path(output_dir).resolve()
    for name in inputs:
        folder = local_folder(name)
        if folder is not None and (output == folder or folder in output.parents):
            raise PathError(
                f"altclip-train: --output_dir {output_dir} is inside the input model {name}; training would write "
                "over it. Choose another --output_dir."
            )
    present = [name for name in FINAL_FILES if (output / name).is_file()] + sorted(
        path.name for path in output.glob("model-*.safetensors")
    )
    if present and not overwrite:
        raise PathError(
            f"altclip-train: {output_dir} already holds a model ({', '.join(present[:3])}); the final save would "
            "replace it. Choose another --output_dir, or pass --overwrite_output_dir true."
        )
    try:
        probe_writable(output)
    except OSError as error:
        raise PathError(f"altclip-train: cannot write to --output_dir {output_dir}: {error.strerror or error}.")
    remove_abandoned_saves(output)


def _whole_numel(parameter: torch.Tensor) -> int:
    """Elements of the whole parameter, also when DeepSpeed ZeRO-3 holds it partitioned (``numel()`` is then 0)."""
    return int(getattr(parameter, "ds_numel", parameter.numel()))


def checkpoint_bytes(trained: torch.nn.Module) -> int:
    """About what one checkpoint takes: the trained module's weights plus two fp32 AdamW moments per trainable
    parameter (the optimizer's state file)."""
    weights = sum(_whole_numel(parameter) * parameter.element_size() for parameter in trained.parameters())
    moments = sum(2 * 4 * _whole_numel(parameter) for parameter in trained.parameters() if parameter.requires_grad)
    return weights + moments


def planned_steps(training_args, train_dataset) -> int | None:
    """The optimizer steps the run will take: --max_steps, else epochs x batches of a dataset with a length; None
    for a stream of unknown length."""
    if training_args.max_steps > 0:
        return training_args.max_steps
    try:
        rows = len(train_dataset)
    except TypeError:
        return None
    batch = training_args.per_device_train_batch_size * max(1, training_args.world_size)
    per_epoch = max(1, math.ceil(rows / batch) // training_args.gradient_accumulation_steps)
    return math.ceil(per_epoch * training_args.num_train_epochs)


def checkpoints_held_at_once(training_args, steps: int | None) -> int:
    """The most checkpoints the disk holds at one time: every save of the run, or --save_total_limit + 1 (the Trainer
    writes the new checkpoint before it deletes the oldest)."""
    strategy = str(getattr(training_args.save_strategy, "value", training_args.save_strategy))
    if strategy == "no":
        return 0
    saves = None
    if strategy == "epoch":
        saves = max(1, math.ceil(training_args.num_train_epochs))
    elif strategy == "steps" and steps is not None:
        every = training_args.save_steps
        every = max(1, math.ceil(every * steps)) if every < 1 else int(every)
        saves = max(1, steps // every)
    if training_args.save_total_limit:
        saves = min(saves or training_args.save_total_limit + 1, training_args.save_total_limit + 1)
    return saves or 1


def model_bytes(model: torch.nn.Module) -> int:
    """What the final save writes: every weight of the complete model in its own dtype."""
    return sum(tensor.numel() * tensor.element_size() for tensor in model.state_dict().values())


def check_room(output_dir: str, trained: torch.nn.Module, model: torch.nn.Module, training_args, train_dataset) -> None:
    """Refuses to start when the output folder's disk cannot hold what the run writes at its peak: the checkpoints
    kept at once (weights, AdamW moments, trainer state) and the final model."""
    held = checkpoints_held_at_once(training_args, planned_steps(training_args, train_dataset))
    checkpoint = int(checkpoint_bytes(trained) * 1.01) + 2**20  # + trainer state, scheduler, RNG states
    final = model_bytes(model)
    needed, free = held * checkpoint + final, shutil.disk_usage(output_dir).free
    if free < needed:
        limit = training_args.save_total_limit
        kept = f"{held} checkpoint(s) of about {checkpoint / 2**30:.2f} GiB" + (
            f" (--save_total_limit {limit}, +1 while the next is written)" if limit else ""
        )
        raise PathError(
            f"altclip-train: {kept} and the final model ({final / 2**30:.2f} GiB) need about {needed / 2**30:.2f} "
            f"GiB, but the disk of {output_dir} has {free / 2**30:.2f} GiB free. Free some space, keep fewer "
            "checkpoints (--save_total_limit, --save_steps), or choose another --output_dir."
        )


def is_disk_full(error: BaseException) -> bool:
    """An error of a write that ran out of space: ENOSPC, PyTorch's zip writer ("unexpected pos"), or safetensors'
    Rust writer (a SafetensorError carrying "os error 28", ENOSPC's number)."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    if isinstance(error, SafetensorError):
        return f"os error {errno.ENOSPC})" in str(error) or "No space left on device" in str(error)
    return isinstance(error, RuntimeError) and "unexpected pos" in str(error)


def disk_full_message(output_dir: str) -> str:
    free = shutil.disk_usage(output_dir).free if Path(output_dir).exists() else 0
    return (
        f"altclip-train: the disk of {output_dir} is full ({free / 2**20:.0f} MiB free) and a save failed. Free some "
        "space, then continue with --resume_from_checkpoint true (it takes the newest complete checkpoint)."
    )


def move_into(staging: Path, folder: Path) -> None:
    """Moves every entry of `staging` into `folder` by renames (each one atomic), then removes `staging`: a model is
    never left half-written under its final name. Weights and sub-folders go first and `config.json` last, so that
    a kill in between leaves the new weights beside the old config, never a config announcing weights not there; a
    sub-folder already in `folder` (an earlier run's `merged/`, under --overwrite_output_dir) is replaced whole."""
    last = {"config.json": 2, "adapter_config.json": 1}
    for path in sorted(staging.iterdir(), key=lambda entry: (last.get(entry.name, 0), entry.name)):
        target = folder / path.name
        if path.is_dir() and target.is_dir():
            old = partial_path(target)
            os.replace(target, old)
            os.replace(path, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(path, target)
    shutil.rmtree(staging, ignore_errors=True)
