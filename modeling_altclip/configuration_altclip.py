"""AltCLIP configuration: an XLM-R text tower and a CLIP vision tower joined by two projections.

transformers already owns the model_type ``"altclip"``, so this package registers its own types
(``altclip_xlmr`` and its two sub-types) and converts released ``"altclip"`` config.json files on load.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import CLIPVisionConfig, PreTrainedConfig, XLMRobertaConfig

logger = logging.getLogger(__name__)

MODEL_TYPE = "altclip_xlmr"
TEXT_MODEL_TYPE = "altclip_xlmr_text_model"
VISION_MODEL_TYPE = "altclip_xlmr_vision_model"
# model_type of the checkpoints released by BAAI (BAAI/AltCLIP, -m9, -m18) and of transformers' own AltCLIP.
RELEASED_MODEL_TYPE = "altclip"

# Top-level keys that every transformers config may carry and that are not dataclass fields.
_COMMON_CONFIG_KEYS = frozenset({"architectures", "dtype", "torch_dtype", "transformers_version", "_name_or_path"})


def check_local_path(name: str | os.PathLike | None) -> None:
    """Raises `OSError` naming `name` when it is written as a local path (absolute, ./ ../ ~, several slashes)
    that does not exist: transformers would report it as an invalid Hub repository id instead."""
    if name is None or isinstance(name, dict):
        return
    text = os.fspath(name)
    path = Path(text).expanduser()
    local = path.is_absolute() or text.startswith((".", "~")) or text.count("/") > 1 or "\\" in text
    if local and not path.exists():
        raise OSError(f"{text}: no such folder (a local path; a Hub id looks like owner/name).")


_SCALARS = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true or false",
    list: "a list",
    tuple: "a list",
    dict: "a mapping",
    type(None): "null",
}


def _accepts(value: Any, hint: Any) -> bool | None:
    """Whether `value` fits the type `hint` (None: a hint this check does not judge)."""
    options = (
        typing.get_args(hint)
        if typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType"))
        else (hint,)
    )
    verdicts = []
    for option in options:
        option = typing.get_origin(option) or option
        if option is type(None):
            verdicts.append(value is None)
        elif option in (int, float):  # a bool is not a number here; an int is a float (JSON writes 1.0 as 1)
            verdicts.append(isinstance(value, int if option is int else (int, float)) and not isinstance(value, bool))
        elif option in (str, bool, list, tuple, dict):
            verdicts.append(isinstance(value, (list, tuple) if option in (list, tuple) else option))
        else:
            return None
    return any(verdicts)


def _field_hints(config_class: type) -> dict[str, Any]:
    """The resolvable type hints of a config class and its bases (one at a time: a base's hint that names a
    type its module imports only for type checkers is left out instead of failing them all)."""
    hints: dict[str, Any] = {}
    for klass in reversed(config_class.__mro__):
        namespace = vars(sys.modules[klass.__module__]) if klass.__module__ in sys.modules else {}
        for name, annotation in vars(klass).get("__annotations__", {}).items():
            try:
                hints[name] = eval(annotation, dict(namespace)) if isinstance(annotation, str) else annotation
            except Exception:
                hints.pop(name, None)
    return hints


class _ReleasedConfigMixin:
    """Makes ``from_pretrained`` accept released ``"altclip"`` config files (see `convert_released_config_dict`),
    names a missing local folder, and checks that every field holds a value of its type."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
        """Like `PreTrainedConfig.from_pretrained`; a field of the wrong type is a `ValueError` naming the file."""
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except Exception as error:
            if not type(error).__name__.startswith("StrictDataclass"):  # huggingface_hub's validation errors
                raise
            reason = (
                str(error).strip().splitlines()[-1].strip().removeprefix("ValueError: ").removeprefix("TypeError: ")
            )
            raise ValueError(f"{Path(pretrained_model_name_or_path) / 'config.json'}: {reason}") from error

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
        check_local_path(pretrained_model_name_or_path)
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        return convert_released_config_dict(config_dict), kwargs

    def validate_field_types(self):
        """Part of `@strict` validation: a field typed as a number holding a string (a hand-edited config.json,
        ``"num_hidden_layers": "12"``) is named here instead of failing deep inside the model's constructor."""
        hints = _field_hints(type(self))
        prefix = f"{self.base_config_key}." if getattr(self, "base_config_key", "") else ""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name, None)
            hint = hints.get(field.name)
            if hint is None or _accepts(value, hint) is not False:
                continue
            options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
            names = dict.fromkeys(_SCALARS.get(typing.get_origin(o) or o, str(o)) for o in options)
            if "a number" in names:
                names.pop("an integer", None)
            wanted = " or ".join(names)
            raise ValueError(f"{prefix}{field.name} must be {wanted}, not {type(value).__name__} {value!r}.")


@strict
class AltCLIPTextConfig(_ReleasedConfigMixin, XLMRobertaConfig):
    r"""Configuration of the text tower: an XLM-R encoder plus ``pre_LN`` and ``transformation``.

    project_dim (`int`, defaults to 768):
        Width of the ``transformation`` output; equals the text width of the CLIP teacher (768 for ViT-L/14).

    Defaults describe BAAI/AltCLIP's XLM-R large tower.
    """

    model_type = TEXT_MODEL_TYPE
    base_config_key = "text_config"

    vocab_size: int = 250002
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.1
    attention_probs_dropout_prob: float | int = 0.0
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-5
    initializer_factor: float = 0.02
    project_dim: int = 768


@strict
class AltCLIPVisionConfig(_ReleasedConfigMixin, CLIPVisionConfig):
    """Configuration of the vision tower, a CLIP ViT. Defaults describe BAAI/AltCLIP's ViT-L/14."""

    model_type = VISION_MODEL_TYPE
    base_config_key = "vision_config"

    hidden_size: int = 1024
    intermediate_size: int = 4096
    projection_dim: int = 768
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    patch_size: int | list[int] | tuple[int, int] | None = 14


@strict
class AltCLIPConfig(_ReleasedConfigMixin, PreTrainedConfig):
    r"""Configuration of a full AltCLIP model.

    text_config (`dict` or `AltCLIPTextConfig`): the text tower.
    vision_config (`dict` or `AltCLIPVisionConfig`): the vision tower.
    projection_dim (`int`, defaults to 768): width of the shared image-text embedding space.
    logit_scale_init_value (`float`, defaults to 2.6592): initial log temperature, ln(1/0.07) as in CLIP.
    logit_bias_init_value (`float`, *optional*): a learnable logit bias with this initial value (SigLIP's -10), added
        to the logits; set by training with the sigmoid loss. None: no bias (CLIP's softmax ignores one).
    matryoshka_dims (`list[int]`, *optional*): the nested embedding widths the model was trained on (Matryoshka
        Representation Learning), smallest first and the full width last; a record, the forward is unchanged.
    """

    model_type = MODEL_TYPE
    sub_configs_defaults = {"text_config": AltCLIPTextConfig, "vision_config": AltCLIPVisionConfig}

    text_config: dict | AltCLIPTextConfig | None = None
    vision_config: dict | AltCLIPVisionConfig | None = None
    projection_dim: int = 768
    logit_scale_init_value: float | int = 2.6592
    logit_bias_init_value: float | int | None = None
    matryoshka_dims: list[int] | None = None
    initializer_factor: float = 1.0

    def validate_architecture(self):
        """Dimensions the two towers must agree on."""
        if self.text_config.hidden_size % self.text_config.num_attention_heads != 0:
            raise ValueError(
                f"text_config.hidden_size ({self.text_config.hidden_size}) is not a multiple of "
                f"text_config.num_attention_heads ({self.text_config.num_attention_heads})."
            )
        if self.vision_config.hidden_size % self.vision_config.num_attention_heads != 0:
            raise ValueError(
                f"vision_config.hidden_size ({self.vision_config.hidden_size}) is not a multiple of "
                f"vision_config.num_attention_heads ({self.vision_config.num_attention_heads})."
            )


def _config_field_names(config_class: type[PreTrainedConfig]) -> set[str]:
    return {field.name for field in dataclasses.fields(config_class)} | _COMMON_CONFIG_KEYS


def _keep_known_keys(config_dict: dict[str, Any], config_class: type[PreTrainedConfig], where: str) -> dict[str, Any]:
    known = _config_field_names(config_class)
    kept = {key: value for key, value in config_dict.items() if key in known}
    dropped = sorted(set(config_dict) - set(kept))
    if dropped:
        logger.info("Dropping stale keys of the released AltCLIP config (%s): %s", where, ", ".join(dropped))
    return kept


def convert_released_config_dict(config_dict: dict[str, Any]) -> dict[str, Any]:
    """Turn a released ``model_type: "altclip"`` config.json (BAAI/AltCLIP, -m9, -m18) into this package's form.

    ``text_config_dict``/``vision_config_dict`` override ``text_config``/``vision_config`` (as transformers 4 did);
    stale keys that no config field reads (``direct_kd``, ``pooler_fn``, old generation defaults...) are dropped.
    Any other dict is returned unchanged.
    """
    model_type = config_dict.get("model_type")
    if model_type == RELEASED_MODEL_TYPE:
        converted = dict(config_dict)
        for key, config_class, sub_type in (
            ("text_config", AltCLIPTextConfig, TEXT_MODEL_TYPE),
            ("vision_config", AltCLIPVisionConfig, VISION_MODEL_TYPE),
        ):
            sub_dict = dict(converted.get(key) or {})
            sub_dict.update(converted.pop(f"{key}_dict", None) or {})
            sub_dict = _keep_known_keys(sub_dict, config_class, key)
            sub_dict["model_type"] = sub_type
            converted[key] = sub_dict
        converted = _keep_known_keys(converted, AltCLIPConfig, "top level")
        converted["model_type"] = MODEL_TYPE
        return converted
    if model_type in ("altclip_text_model", "altclip_vision_model"):
        # A released sub-config on its own (e.g. AltCLIPTextConfig.from_pretrained on a saved text tower).
        target = AltCLIPTextConfig if model_type == "altclip_text_model" else AltCLIPVisionConfig
        converted = _keep_known_keys(dict(config_dict), target, model_type)
        converted["model_type"] = target.model_type
        return converted
    return config_dict


__all__ = ["AltCLIPConfig", "AltCLIPTextConfig", "AltCLIPVisionConfig", "convert_released_config_dict"]
