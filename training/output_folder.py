"""Nothing a user wrote is lost: the output folder is checked before anything loads (not an input model, no
finished model in it, writable) and before the first step (room for a checkpoint); a full disk is named."""

import errno
import os
import shutil
from pathlib import Path

import torch

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
    "adapter_config.json",  # LoRA runs (training/lora.py)
    "adapter_model.safetensors",
    "before_after.png",
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
            raise SystemExit(
                f"altclip-train: --output_dir {output_dir} is inside the input model {name}; training would write "
                "over it. Choose another --output_dir."
            )
    present = [name for name in FINAL_FILES if (output / name).is_file()] + sorted(
        path.name for path in output.glob("model-*.safetensors")
    )
    if present and not overwrite:
        raise SystemExit(
            f"altclip-train: {output_dir} already holds a model ({', '.join(present[:3])}); the final save would "
            "replace it. Choose another --output_dir, or pass --overwrite_output_dir true."
        )
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / f".write-test-{os.getpid()}"
        probe.write_bytes(b"0")
        probe.unlink()
    except OSError as error:
        raise SystemExit(f"altclip-train: cannot write to --output_dir {output_dir}: {error.strerror or error}.")


def _whole_numel(parameter: torch.Tensor) -> int:
    """Elements of the whole parameter, also when DeepSpeed ZeRO-3 holds it partitioned (``numel()`` is then 0)."""
    return int(getattr(parameter, "ds_numel", parameter.numel()))


def checkpoint_bytes(trained: torch.nn.Module) -> int:
    """About what one checkpoint takes: the trained module's weights plus two fp32 AdamW moments per trainable
    parameter (the optimizer's state file)."""
    weights = sum(_whole_numel(parameter) * parameter.element_size() for parameter in trained.parameters())
    moments = sum(2 * 4 * _whole_numel(parameter) for parameter in trained.parameters() if parameter.requires_grad)
    return weights + moments


def check_room(output_dir: str, trained: torch.nn.Module) -> None:
    """Refuses to start when the output folder's disk cannot hold one checkpoint."""
    needed, free = checkpoint_bytes(trained), shutil.disk_usage(output_dir).free
    if free < needed:
        raise SystemExit(
            f"altclip-train: one checkpoint needs about {needed / 2**30:.2f} GiB, but the disk of {output_dir} has "
            f"{free / 2**30:.2f} GiB free. Free some space or choose another --output_dir."
        )


def is_disk_full(error: BaseException) -> bool:
    """An error of a write that ran out of space (PyTorch's zip writer says "unexpected pos" instead of ENOSPC)."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    return isinstance(error, RuntimeError) and "unexpected pos" in str(error)


def disk_full_message(output_dir: str) -> str:
    free = shutil.disk_usage(output_dir).free if Path(output_dir).exists() else 0
    return (
        f"altclip-train: the disk of {output_dir} is full ({free / 2**20:.0f} MiB free) and a save failed. Free some "
        "space, then continue with --resume_from_checkpoint true (it takes the newest complete checkpoint)."
    )


def move_into(staging: Path, folder: Path) -> None:
    """Moves every file of `staging` into `folder` by renames (each one atomic), then removes `staging`: a model is
    never left half-written under its final name."""
    for path in sorted(staging.iterdir()):
        os.replace(path, folder / path.name)
    shutil.rmtree(staging, ignore_errors=True)
