"""The folder that a push uploads: the checkpoint re-saved from a model that was just loaded and run once.

Re-saving (instead of copying the user's folder) guarantees safetensors weights, a config with `auto_map`, the
modeling code for `trust_remote_code` and the processor files, and nothing else: no pickles, optimizer states or
stray files from the training folder.
"""

import shutil
from pathlib import Path

import torch
from PIL import Image

from altclip.common.adapters import AdapterError, adapter_base_model, is_adapter_folder, load_altclip, processor_source
from altclip.common.model_paths import looks_local, missing_processor_files, missing_processor_message
from modeling_altclip import AltCLIPModel, AltCLIPProcessor, NonFiniteWeightsError, check_finite_weights

from .model_card import CardOptions, build_adapter_card, build_model_card

ALLOWED_SUFFIXES = {".safetensors", ".json", ".py", ".md", ".png", ".txt", ".model"}
COPIED_FROM_MODEL_DIR = ("training_summary.json", "loss_curve.png")


class PushRefused(RuntimeError):
    """The checkpoint or the folder to push is not fit to be published; the message says why."""


def load_checked(model_dir: str | Path) -> tuple[AltCLIPModel, AltCLIPProcessor]:
    """Loads model and processor and runs one forward pass on a blank image and two captions."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise PushRefused(f"{model_dir} is not a model folder: it has no config.json.")
    missing = missing_processor_files(model_dir)
    if missing:
        raise PushRefused(missing_processor_message(model_dir, missing))
    try:
        model = AltCLIPModel.from_pretrained(model_dir, dtype="auto").eval()
        processor = AltCLIPProcessor.from_pretrained(model_dir)
    except Exception as error:  # whatever stops loading stops the push, with the loader's own message
        raise PushRefused(f"{model_dir} does not load: {type(error).__name__}: {error}") from error
    try:
        check_finite_weights(model, model_dir)  # the smoke test below touches only a few embedding rows
    except NonFiniteWeightsError as error:
        raise PushRefused(str(error)) from error
    smoke_test(model, processor, model_dir)
    return model, processor


@torch.no_grad()
def smoke_test(model: AltCLIPModel, processor: AltCLIPProcessor, where: Path) -> None:
    """One forward pass: finite logits of the expected shape, or `PushRefused`."""
    try:
        inputs = processor(
            text=["a photo of a cat", "一张猫的照片"],
            images=Image.new("RGB", (64, 48), (120, 90, 60)),
            return_tensors="pt",
            padding=True,
        )
        logits = model(**inputs).logits_per_image
    except Exception as error:
        raise PushRefused(f"{where}: the forward pass fails: {type(error).__name__}: {error}") from error
    if logits.shape != (1, 2) or not torch.isfinite(logits).all():
        raise PushRefused(
            f"{where}: the forward pass gives {logits.tolist()} (shape {tuple(logits.shape)}), not two finite logits."
        )


def require_empty_folder(target: Path) -> None:
    """Upload folders are written only into a new or empty folder, so nothing of the user's is replaced."""
    if target.exists() and any(target.iterdir()):
        raise PushRefused(f"{target} is not empty; the upload folder must start empty (nothing of yours is replaced).")


def relative_files(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def prepare_upload_folder(model_dir: str | Path, target: str | Path, repo_id: str, options: CardOptions) -> list[str]:
    """Writes into the empty (or new) folder `target` exactly what would be uploaded; returns its relative paths."""
    model_dir, target = Path(model_dir), Path(target)
    require_empty_folder(target)
    if is_adapter_folder(model_dir):
        return prepare_adapter_upload_folder(model_dir, target, repo_id, options)
    model, processor = load_checked(model_dir)
    card = build_model_card(model, model_dir, repo_id, options)  # checks the results files before writing
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    processor.save_pretrained(target)
    card.save(target / "README.md")
    for name in COPIED_FROM_MODEL_DIR:
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, target / name)
    files = relative_files(target)
    unexpected = [name for name in files if Path(name).suffix not in ALLOWED_SUFFIXES]
    if unexpected:
        raise PushRefused(f"Refusing to upload {unexpected}: only {sorted(ALLOWED_SUFFIXES)} files are published.")
    return files


def published_base_model(adapter_dir: Path, options: CardOptions) -> str:
    """The Hub id of an adapter's base model: --base-model, else its adapter_config.json's (a local folder cannot
    be named on the Hub: then --base-model is required)."""
    try:
        base = adapter_base_model(adapter_dir)
    except AdapterError as error:
        raise PushRefused(str(error)) from error
    if options.base_models:
        return options.base_models[0]
    if looks_local(base) or Path(base).exists():
        raise PushRefused(
            f"{adapter_dir} adapts the local model {base}; pass --base-model ORG/NAME, the Hub id that model is "
            "published as (the pushed adapter_config.json will name it)."
        )
    return base


def prepare_adapter_upload_folder(adapter_dir: Path, target: Path, repo_id: str, options: CardOptions) -> list[str]:
    """A LoRA adapter's upload folder: adapter_config.json (naming the base model's Hub id), the adapter weights,
    the processor and a card; loaded onto its base model and run once first."""
    base_id = published_base_model(adapter_dir, options)
    try:
        adapter = load_altclip(adapter_dir, merge=False).eval()
        processor = AltCLIPProcessor.from_pretrained(processor_source(adapter_dir))
    except Exception as error:  # whatever stops loading stops the push, with the loader's own message
        raise PushRefused(
            f"{adapter_dir} does not load onto its base model: {type(error).__name__}: {error}"
        ) from error
    try:
        check_finite_weights(adapter, adapter_dir)
    except NonFiniteWeightsError as error:
        raise PushRefused(str(error)) from error
    smoke_test(adapter, processor, adapter_dir)
    card = build_adapter_card(adapter, adapter_dir, repo_id, base_id, options)
    target.mkdir(parents=True, exist_ok=True)
    adapter.peft_config[adapter.active_adapter].base_model_name_or_path = base_id
    adapter.save_pretrained(target, save_embedding_layers=False)  # no embedding trained; no Hub lookup
    processor.save_pretrained(target)
    card.save(target / "README.md")  # replaces peft's generic card
    for name in COPIED_FROM_MODEL_DIR:
        if (adapter_dir / name).is_file():
            shutil.copy2(adapter_dir / name, target / name)
    return relative_files(target)
