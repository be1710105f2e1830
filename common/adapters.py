"""LoRA adapter folders (``altclip-train --lora_r``): told apart from full checkpoints and loaded onto their base
model, for every job that takes a model (evaluation, demo, Hub).

An adapter folder holds ``adapter_config.json`` + ``adapter_model.safetensors`` (peft's format, whose
``base_model_name_or_path`` names the AltCLIP it adapts) and, as training writes it, the processor files.
"""

import json
from pathlib import Path

from altclip.common.errors import InputDataError

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
PROCESSOR_FILES = ("tokenizer.json", "sentencepiece.bpe.model", "tokenizer_config.json")


class AdapterError(InputDataError):
    """An adapter folder that cannot be used; the message names the folder and what to do."""


def is_adapter_folder(path: str | Path | None) -> bool:
    """True for a local folder with an ``adapter_config.json`` (and no full model's config.json beside it)."""
    return bool(path) and (Path(path) / ADAPTER_CONFIG_FILE).is_file() and not (Path(path) / "config.json").is_file()


def adapter_base_model(adapter_dir: str | Path) -> str:
    """The base model an adapter was trained on: a Hub id, or a local folder (a relative path is read from the
    current folder, then from the adapter's own folder)."""
    adapter_dir = Path(adapter_dir)
    try:
        config = json.loads((adapter_dir / ADAPTER_CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise AdapterError(f"{adapter_dir / ADAPTER_CONFIG_FILE} cannot be read: {error}") from None
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not base:
        raise AdapterError(
            f"{adapter_dir / ADAPTER_CONFIG_FILE} names no base_model_name_or_path; set it to the AltCLIP the adapter "
            "was trained on."
        )
    if not Path(base).is_absolute() and not Path(base).exists() and (adapter_dir / base).exists():
        return str(adapter_dir / base)
    return base


def check_base_model(adapter_dir: str | Path) -> str:
    """`adapter_base_model`, refused in one line when it looks like a local folder that is gone."""
    from .model_paths import missing_local_model

    base = adapter_base_model(adapter_dir)
    if missing_local_model(base):
        raise AdapterError(
            f"{adapter_dir}: its base model {base} (adapter_config.json's base_model_name_or_path) does not exist; "
            "restore it or edit that path."
        )
    return base


def processor_source(model_dir: str | Path) -> str:
    """Where the processor of a model or adapter folder is read: the folder itself when it has the tokenizer,
    else (an adapter saved alone) its base model."""
    if is_adapter_folder(model_dir) and not any((Path(model_dir) / name).is_file() for name in PROCESSOR_FILES):
        return check_base_model(model_dir)
    return str(model_dir)


def load_altclip(model_dir: str | Path, merge: bool = True, **from_pretrained_kwargs):
    """An `AltCLIPModel` from a full checkpoint, or from an adapter folder: its base model with the adapter applied
    (merged into the weights by default, so that the result runs as fast as the base; ``merge=False`` keeps the
    `peft.PeftModel`)."""
    from modeling_altclip import AltCLIPModel

    if not is_adapter_folder(model_dir):
        return AltCLIPModel.from_pretrained(model_dir, **from_pretrained_kwargs)
    from peft import PeftModel

    check_adapter_weights(model_dir)  # before the base model loads
    base = AltCLIPModel.from_pretrained(check_base_model(model_dir), **from_pretrained_kwargs)
    adapted = PeftModel.from_pretrained(base, str(model_dir))
    return adapted.merge_and_unload() if merge else adapted


def check_adapter_weights(adapter_dir: str | Path) -> None:
    """Refuses an adapter whose ``adapter_model.safetensors`` is missing, cut short or not safetensors (a copy
    interrupted, a disk that filled), in one line naming the file, instead of safetensors' traceback."""
    from safetensors import SafetensorError, safe_open

    path = Path(adapter_dir) / ADAPTER_WEIGHTS_FILE
    if not path.is_file():
        raise AdapterError(f"{path} is missing; the adapter folder holds no weights. Train or download it again.")
    try:
        with safe_open(str(path), "pt") as weights:
            for name in weights.keys():
                weights.get_slice(name)  # the header's offsets checked against the file's size
    except (SafetensorError, OSError, ValueError) as error:
        raise AdapterError(
            f"{path} is unreadable (cut short or damaged: {str(error).splitlines()[0]}); train or download the "
            "adapter again."
        ) from None
