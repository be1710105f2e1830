"""AltCLIP configuration: an XLM-R text tower and a CLIP vision tower joined by two projections.

transformers already owns the model_type ``"altclip"``, so this package registers its own types
(``altclip_xlmr`` and its two sub-types) and converts released ``"altclip"`` config.json files on load.
"""

from __future__ import annotations

import dataclasses
import logging
import os
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


class _ReleasedConfigMixin:
    """Makes ``from_pretrained`` accept released ``"altclip"`` config files (see `convert_released_config_dict`)."""

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        return convert_released_config_dict(config_dict), kwargs


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
    """

    model_type = MODEL_TYPE
    sub_configs_defaults = {"text_config": AltCLIPTextConfig, "vision_config": AltCLIPVisionConfig}

    text_config: dict | AltCLIPTextConfig | None = None
    vision_config: dict | AltCLIPVisionConfig | None = None
    projection_dim: int = 768
    logit_scale_init_value: float | int = 2.6592
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
