"""altclip: multilingual CLIP (AltCLIP) for Hugging Face transformers.

The names a user starts from, imported on first use so that ``import altclip`` stays cheap (no torch, no
transformers until one is touched):

- the model: ``AltCLIPModel``, ``AltCLIPProcessor``, ``AltCLIPConfig`` (from the flat ``modeling_altclip`` package,
  which is what ``trust_remote_code`` copies to the Hub);
- the jobs' entry points, each the ``main(argv)`` of a console script: ``train`` (altclip-train), ``evaluate``
  (altclip-eval), ``push`` (altclip-push), ``push_space`` (altclip-push-space), ``demo`` (altclip-demo),
  ``reproduce`` (altclip-reproduce), ``export_onnx`` (altclip-export-onnx).

The jobs live in subpackages: ``altclip.training``, ``altclip.evaluation``, ``altclip.hub``, ``altclip.demo``,
``altclip.reproduction``, and the layer they share, ``altclip.common``. In the source repository these are the
top-level folders of the same names (``setup.py`` maps them with ``package_dir``).
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # what IDEs and type checkers read (transformers' pattern); at run time __getattr__ imports lazily
    from altclip.demo.app import main as demo
    from altclip.evaluation.cli import main as evaluate
    from altclip.evaluation.onnx_export import main as export_onnx
    from altclip.hub.cli import main as push
    from altclip.hub.cli import space_main as push_space
    from altclip.reproduction.run import main as reproduce
    from altclip.training.cli import main as train
    from modeling_altclip import AltCLIPConfig, AltCLIPModel, AltCLIPProcessor

# name -> (module, attribute); resolved by __getattr__ on first access (PEP 562)
_LAZY = {
    "AltCLIPConfig": ("modeling_altclip", "AltCLIPConfig"),
    "AltCLIPModel": ("modeling_altclip", "AltCLIPModel"),
    "AltCLIPProcessor": ("modeling_altclip", "AltCLIPProcessor"),
    "train": ("altclip.training.cli", "main"),
    "evaluate": ("altclip.evaluation.cli", "main"),
    "export_onnx": ("altclip.evaluation.onnx_export", "main"),
    "push": ("altclip.hub.cli", "main"),
    "push_space": ("altclip.hub.cli", "space_main"),
    "demo": ("altclip.demo.app", "main"),
    "reproduce": ("altclip.reproduction.run", "main"),
}

__all__ = [  # the lazy table's names, written out so that linters and type checkers see them
    "AltCLIPConfig",
    "AltCLIPModel",
    "AltCLIPProcessor",
    "demo",
    "evaluate",
    "export_onnx",
    "push",
    "push_space",
    "reproduce",
    "train",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'altclip' has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = getattr(import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
