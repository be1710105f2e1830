"""Model cards for AltCLIP checkpoints, built with `huggingface_hub`'s ModelCard/ModelCardData.

The metadata carries what the Hub indexes (languages, license, pipeline tag, library, base models, datasets) and
the `altclip-eval` results as model-index; the body says how to use the model and shows the results table.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from altclip.common.constants import ISO_CODES
from altclip.common.constants import TRAINING_SUMMARY_FILE as SUMMARY_FILE
from altclip.common.results_format import RESULTS_FILE, markdown_table, model_index

TEMPLATE = Path(__file__).with_name("model_card_template.md")
ADAPTER_TEMPLATE = Path(__file__).with_name("adapter_card_template.md")
PIPELINE_TAG = "zero-shot-image-classification"
LIBRARY_NAME = "transformers"
DEFAULT_TAGS = ("altclip", "clip", "multilingual", "zero-shot-image-classification", "image-text-retrieval")
EXAMPLE_LABELS = {
    "en": "a photo of a cat",
    "de": "ein Foto einer Katze",
    "fr": "une photo d'un chat",
    "es": "una foto de un gato",
    "zh": "一张猫的照片",
    "ja": "猫の写真",
    "it": "una foto di un gatto",
}


@dataclass
class CardOptions:
    """What the card says beyond what the checkpoint itself tells."""

    languages: list[str] = field(default_factory=list)
    license: str = "apache-2.0"
    base_models: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    results_files: list[str] = field(default_factory=list)  # altclip-eval results.json files or their folders


def read_results(paths: list[str]) -> list[dict]:
    """The result rows of `altclip-eval` output folders or results.json files, in order."""
    rows = []
    for given in paths:
        path = Path(given) / RESULTS_FILE if Path(given).is_dir() else Path(given)
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: pass an altclip-eval --output_dir or its {RESULTS_FILE}.")
        try:
            rows += json.loads(path.read_text(encoding="utf-8"))["results"]
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path} is not an altclip-eval results file: {error}") from error
    return rows


def training_note(model_dir: Path) -> str:
    """One paragraph from the training summary that `altclip-train` leaves in the model folder, if any."""
    path = model_dir / SUMMARY_FILE
    if not path.is_file():
        return ""
    summary = json.loads(path.read_text(encoding="utf-8"))
    note = f"Last trained with `altclip-train {summary.get('stage', '?')}` for {summary.get('global_step', '?')} steps"
    if summary.get("first_loss") is not None and summary.get("last_loss") is not None:
        note += f" (loss {summary['first_loss']:.3f} → {summary['last_loss']:.3f})"
    return note + "."


def card_languages(options: CardOptions, results: list[dict]) -> list[str]:
    given = options.languages or [row["language"] for row in results if row.get("language") not in (None, "all", "avg")]
    return list(dict.fromkeys(ISO_CODES.get(code, code) for code in given))


def build_model_card(model, model_dir: str | Path, repo_id: str, options: CardOptions) -> ModelCard:
    """The README.md of a pushed checkpoint; `model` is the loaded AltCLIPModel (for its sizes)."""
    model_dir = Path(model_dir)
    results = read_results(options.results_files)
    languages = card_languages(options, results)
    data = ModelCardData(
        language=languages or None,
        license=options.license,
        library_name=LIBRARY_NAME,
        pipeline_tag=PIPELINE_TAG,
        tags=list(dict.fromkeys([*DEFAULT_TAGS, *options.tags])),
        base_model=options.base_models or None,
        datasets=options.datasets or None,
        model_name=repo_id.split("/")[-1],
        eval_results=[EvalResult(**entry) for entry in model_index(results)] or None,
    )
    config = model.config
    labels = [EXAMPLE_LABELS[code] for code in languages if code in EXAMPLE_LABELS][:4] or [EXAMPLE_LABELS["en"]]
    return ModelCard.from_template(
        data,
        template_path=str(TEMPLATE),
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        languages=languages,
        vision=config.vision_config,
        text=config.text_config,
        projection_dim=config.projection_dim,
        parameters=f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M",
        base_models=options.base_models,
        example_labels=json.dumps(labels, ensure_ascii=False),
        results_table=markdown_table(results) if results else "",
        training=training_note(model_dir),
    )


def build_adapter_card(
    adapter, model_dir: str | Path, repo_id: str, base_model: str, options: CardOptions
) -> ModelCard:
    """The README.md of a pushed LoRA adapter (`adapter`: the loaded `peft.PeftModel`), naming its base model."""
    results = read_results(options.results_files)
    languages = card_languages(options, results)
    config = adapter.peft_config[adapter.active_adapter]
    data = ModelCardData(
        language=languages or None,
        license=options.license,
        library_name="peft",
        pipeline_tag=PIPELINE_TAG,
        tags=list(dict.fromkeys([*DEFAULT_TAGS, "lora", "peft", *options.tags])),
        base_model=base_model,
        datasets=options.datasets or None,
        model_name=repo_id.split("/")[-1],
        eval_results=[EvalResult(**entry) for entry in model_index(results)] or None,
    )
    adapted = {name.split(".lora_A.")[0] for name, _ in adapter.named_parameters() if ".lora_A." in name}
    towers = sorted({"text" if ".text_" in name else "vision" for name in adapted})
    labels = [EXAMPLE_LABELS[code] for code in languages if code in EXAMPLE_LABELS][:4] or [EXAMPLE_LABELS["en"]]
    return ModelCard.from_template(
        data,
        template_path=str(ADAPTER_TEMPLATE),
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        base_model=base_model,
        rank=config.r,
        trainable=f"{sum(p.numel() for n, p in adapter.named_parameters() if '.lora_' in n):,}",
        targets=f"{len(adapted)} linear layers of the {' and '.join(towers)} tower" + ("s" if len(towers) > 1 else ""),
        example_labels=json.dumps(labels, ensure_ascii=False),
        results_table=markdown_table(results) if results else "",
        training=training_note(Path(model_dir)),
    )
