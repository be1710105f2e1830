"""Start a new AltCLIP from any CLIP checkpoint plus any XLM-R-family encoder: the starting point of training.

Copied from the CLIP: the vision tower, ``visual_projection``, ``text_projection`` and ``logit_scale``.
Copied from the encoder: the text tower. Fresh: ``pre_LN`` and ``transformation`` (width = the CLIP's text width,
so that teacher learning can regress the CLIP text features that ``text_projection`` already maps).
"""

import logging
import os

import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoTokenizer,
    CLIPModel,
    PretrainedConfig,
    XLMRobertaModel,
)

from .configuration_altclip import AltCLIPConfig, AltCLIPTextConfig, AltCLIPVisionConfig
from .modeling_altclip import AltCLIPModel, CheckpointMismatchError
from .processing_altclip import AltCLIPProcessor

logger = logging.getLogger(__name__)

# Encoders with XLM-R's architecture (post-LN BERT blocks, RoBERTa position offset) fit the text tower.
SUPPORTED_TEXT_ENCODER_TYPES = ("xlm-roberta", "roberta", "camembert")
MAX_TEXT_LENGTH = 512


def altclip_config_from(clip_config: PretrainedConfig, text_encoder_config: PretrainedConfig) -> AltCLIPConfig:
    """The AltCLIP config that joins `clip_config`'s vision side with `text_encoder_config`'s encoder."""
    if text_encoder_config.model_type not in SUPPORTED_TEXT_ENCODER_TYPES:
        raise ValueError(
            f"The text encoder is a {text_encoder_config.model_type!r} model; AltCLIP's text tower takes an "
            f"XLM-R-family encoder ({', '.join(SUPPORTED_TEXT_ENCODER_TYPES)})."
        )
    if clip_config.model_type != "clip":
        raise ValueError(f"Expected a CLIP checkpoint (model_type 'clip'), got {clip_config.model_type!r}.")
    text_fields = {k: v for k, v in text_encoder_config.to_dict().items() if k not in ("model_type", "architectures")}
    vision_fields = {k: v for k, v in clip_config.vision_config.to_dict().items() if k not in ("model_type",)}
    return AltCLIPConfig(
        text_config=AltCLIPTextConfig(**text_fields, project_dim=clip_config.text_config.hidden_size),
        vision_config=AltCLIPVisionConfig(**vision_fields),
        projection_dim=clip_config.projection_dim,
        logit_scale_init_value=clip_config.logit_scale_init_value,
    )


def _copy_weights(target: torch.nn.Module, source_state: dict[str, torch.Tensor], what: str) -> None:
    result = target.load_state_dict(source_state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointMismatchError(
            f"{what} does not fit: missing {sorted(result.missing_keys)}, unexpected {sorted(result.unexpected_keys)}."
        )


@torch.no_grad()
def altclip_from_models(
    clip: CLIPModel, text_encoder: XLMRobertaModel, attn_implementation: str | None = None
) -> AltCLIPModel:
    """A new `AltCLIPModel` holding `clip`'s vision side and `text_encoder`'s weights (both left untouched)."""
    config = altclip_config_from(clip.config, text_encoder.config)
    model = AltCLIPModel._from_config(config, attn_implementation=attn_implementation)
    encoder_state = {k: v for k, v in text_encoder.state_dict().items() if not k.startswith("pooler.")}
    _copy_weights(model.text_model.roberta, encoder_state, "The text encoder")
    _copy_weights(model.vision_model, clip.vision_model.state_dict(), "The CLIP vision tower")
    model.visual_projection.weight.copy_(clip.visual_projection.weight)
    model.text_projection.weight.copy_(clip.text_projection.weight)
    model.logit_scale.copy_(clip.logit_scale)
    return model


def build_altclip(
    clip_name_or_path: str | os.PathLike,
    text_encoder_name_or_path: str | os.PathLike,
    tokenizer_name_or_path: str | os.PathLike | None = None,
    **from_pretrained_kwargs,
) -> tuple[AltCLIPModel, AltCLIPProcessor]:
    """Load a CLIP and an XLM-R-family encoder (Hub ids or local folders) and join them into a new AltCLIP.

    The processor pairs the CLIP's image processor with the encoder's tokenizer (or `tokenizer_name_or_path`).
    """
    clip_config = AutoConfig.from_pretrained(clip_name_or_path, **from_pretrained_kwargs)
    text_config = AutoConfig.from_pretrained(text_encoder_name_or_path, **from_pretrained_kwargs)
    altclip_config_from(clip_config, text_config)  # fail on the configs before loading any weights
    clip = CLIPModel.from_pretrained(clip_name_or_path, **from_pretrained_kwargs)
    encoder = XLMRobertaModel.from_pretrained(
        text_encoder_name_or_path, add_pooling_layer=False, **from_pretrained_kwargs
    )
    model = altclip_from_models(clip, encoder, from_pretrained_kwargs.get("attn_implementation"))
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_name_or_path or text_encoder_name_or_path)
    tokenizer.model_max_length = min(tokenizer.model_max_length, MAX_TEXT_LENGTH)
    image_processor = AutoImageProcessor.from_pretrained(clip_name_or_path)
    logger.info("Built AltCLIP from %s (vision) and %s (text)", clip_name_or_path, text_encoder_name_or_path)
    return model, AltCLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


__all__ = ["altclip_config_from", "altclip_from_models", "build_altclip"]
