"""Telling a local model folder from a Hub id before anything loads, so that a mistyped path is named at once
instead of after transformers' Hub retries (~25 s offline), and naming what a model folder lacks."""

from pathlib import Path

from huggingface_hub import HfApi, constants, try_to_load_from_cache
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, HTTPError


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


CACHE_MARKERS = ("config.json", "tokenizer_config.json")  # one of them cached: the model (or tokenizer) was downloaded


def unavailable_model(name: str | None) -> str | None:
    """Why the model `name` cannot be loaded, found before loading it: no such local folder, and the Hub has no such
    repository, cannot be reached, or is switched off (HF_HUB_OFFLINE) with nothing cached. None when it can be
    (a folder, a cached or an existing Hub repository); transformers would otherwise end in "couldn't connect to
    huggingface.co" after its retries, whatever the cause. One small Hub request for an uncached Hub id."""
    if not name or Path(name).expanduser().exists():
        return None
    if missing_local_model(name):
        return f"{name}: no such folder (and not a Hub id like owner/name)."
    try:
        if any(
            isinstance(try_to_load_from_cache(name, file), str) for file in ("config.json", "tokenizer_config.json")
        ):
            return None
        if constants.HF_HUB_OFFLINE:
            return f"{name}: no such local folder, and not in the Hub cache (HF_HUB_OFFLINE is set). Check the name."
        if HfApi(endpoint=constants.ENDPOINT).repo_exists(name):
            return None
    except HFValidationError:
        return f"{name}: no such local folder, and not a valid Hub id (owner/name). Check the name."
    except HfHubHTTPError as error:  # an answer that is not "no such repository": a refused token, a server error
        status = error.response.status_code if error.response is not None else "an error"
        return (
            f"{name}: no such local folder, and the Hub ({constants.ENDPOINT}) answered {status} when asked for it. "
            "Check the name, and your token (HF_TOKEN) if it is private."
        )
    except HTTPError as error:  # no answer at all
        return (
            f"{name}: no such local folder, not in the Hub cache, and the Hub ({constants.ENDPOINT}) cannot be reached "
            f"({type(error).__name__}). Check the name, or the network."
        )
    return (
        f"{name}: no such local folder, and the Hub has no model repository {name} (or it is private). Check the name."
    )


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


def incomplete_model_folder(name: str | None) -> str | None:
    """For a local model folder that lacks processor files, the one-line message naming them; else None."""
    if not name or not Path(name).expanduser().is_dir() or not (Path(name).expanduser() / "config.json").is_file():
        return None
    missing = missing_processor_files(Path(name).expanduser())
    return missing_processor_message(name, missing) if missing else None
