"""Telling a local model folder from a Hub id before anything loads, so that a mistyped path is named at once
instead of after transformers' Hub retries (~25 s offline), and naming what a model folder lacks."""

from pathlib import Path


def looks_local(name: str) -> bool:
    """A path rather than a Hub id: absolute, relative with ./ ../ ~, more than one slash, or whose first part is an
    existing local folder (outputs/run)."""
    path = Path(name).expanduser()
    return (
        path.is_absolute()
        or name.startswith((".", "~"))
        or name.count("/") > 1
        or "\\" in name
        or (len(path.parts) > 1 and Path(path.parts[0]).is_dir())
    )


def missing_local_model(name: str | None) -> bool:
    """True when `name` looks like a local path (`looks_local`) that does not exist."""
    return bool(name) and looks_local(name) and not Path(name).expanduser().exists()


# What AltCLIPProcessor.from_pretrained reads from a folder: each entry is satisfied by any one of its files.
PROCESSOR_FILES = (
    ("tokenizer.json", "sentencepiece.bpe.model"),  # XLM-R's tokenizer (fast, or its SentencePiece model)
    ("tokenizer_config.json",),  # special tokens (without it the tokenizer has no padding token)
    ("processor_config.json", "preprocessor_config.json"),  # the image processor's settings
)


def missing_processor_files(folder: str | Path) -> list[str]:
    """The processor files a local model folder lacks (for each, its first name): empty when it is complete."""
    folder = Path(folder)
    return [names[0] for names in PROCESSOR_FILES if not any((folder / name).is_file() for name in names)]


def missing_processor_message(folder: str | Path, missing: list[str]) -> str:
    """One line naming the missing processor files and how to put them back."""
    alternatives = {names[0]: names[1:] for names in PROCESSOR_FILES}
    named = " and no ".join(name + "".join(f" (or {other})" for other in alternatives[name]) for name in missing)
    return (
        f"{folder} has no {named}: copy the tokenizer and image-processor files from the model it was trained from, "
        "or save them there with AltCLIPProcessor.save_pretrained."
    )
