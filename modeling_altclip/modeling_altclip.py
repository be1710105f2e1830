"""AltCLIP model: transformers' XLM-R encoder as the text tower, transformers' CLIP ViT as the vision tower.

The towers are composed, not copied: `AltCLIPTextModel` wraps `XLMRobertaModel` and adds the released
``pre_LN`` + ``transformation`` head, `AltCLIPVisionModel` is `CLIPVisionModel` with input checks.
Weight names match the released BAAI checkpoints, so those load directly (see `from_pretrained`).
"""

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionModel, PreTrainedModel, XLMRobertaModel
from transformers import initialization as init
from transformers.core_model_loading import ConversionOps, WeightConverter
from transformers.modeling_outputs import BaseModelOutputWithPooling, BaseModelOutputWithPoolingAndProjection
from transformers.models.clip.modeling_clip import CLIPOutput
from transformers.utils import can_return_tuple

from .configuration_altclip import AltCLIPConfig, AltCLIPTextConfig, AltCLIPVisionConfig, check_local_path

# Checkpoints name encoder blocks `encoder.layer.N` (BAAI on the Hub, transformers 5 when it saves AltCLIP) or
# `encoder.layers.N` (transformers 5 module names, original CLIP). The text tower's XLM-R uses `layer`, the
# vision tower's CLIP uses `layers`; both spellings load into either.
# (transformers joins all renamings into one regex, so these use lookarounds rather than capture groups.)
TEXT_LAYER_RENAMING = {r"(?<=roberta\.encoder\.)layers\.(?=\d)": "layer."}
VISION_LAYER_RENAMING = {
    r"(?<=^vision_model\.encoder\.)layer\.(?=\d)": "layers.",  # inside AltCLIPModel
    r"(?<=^encoder\.)layer\.(?=\d)": "layers.",  # a vision tower saved on its own
}

# Weights that released checkpoints carry but that the released architecture never uses.
# FlagAI's text tower keeps XLM-R's pooler; old transformers versions stored `position_ids` buffers.
IGNORED_CHECKPOINT_KEYS = [r"(^|\.)roberta\.pooler\.", r"(^|\.)position_ids$"]


# Released checkpoints (BAAI's, transformers' AltCLIPModel, this package's) store ``logit_scale`` as a 0-dim tensor.
# The model holds it as a 1-element vector: FSDP2's fully_shard refuses scalar parameters and DeepSpeed broadcasts
# every parameter through a byte view, which a 0-dim tensor cannot give. Loading reshapes the stored scalar (or a
# 1-element vector), saving writes the scalar again, so files keep their released names and shapes.
LOGIT_SCALE_KEY = "logit_scale"


class LogitScaleAsVector(ConversionOps):
    """transformers weight conversion: the stored ``logit_scale`` (0-dim or 1 element) as the model's (1,) vector."""

    def convert(self, input_dict: dict, source_patterns: list[str], target_patterns: list[str], **kwargs) -> dict:
        tensors = next(iter(input_dict.values()))
        tensor = tensors[0] if isinstance(tensors, list) else tensors
        return {target_patterns[0]: tensor.reshape(1)}

    @property
    def reverse_op(self) -> ConversionOps:
        return LogitScaleAsScalar()


class LogitScaleAsScalar(ConversionOps):
    """The reverse of `LogitScaleAsVector`: the released 0-dim ``logit_scale``."""

    def convert(self, input_dict: dict, source_patterns: list[str], target_patterns: list[str], **kwargs) -> dict:
        tensors = next(iter(input_dict.values()))
        tensor = tensors[0] if isinstance(tensors, list) else tensors
        return {target_patterns[0]: tensor.reshape(())}

    @property
    def reverse_op(self) -> ConversionOps:
        return LogitScaleAsVector()


def _logit_scale_as_vector_on_load(module, state_dict, prefix, *args) -> None:
    """`load_state_dict` pre-hook (a Trainer resuming a checkpoint, user code): a stored 0-dim ``logit_scale`` fits."""
    key = prefix + LOGIT_SCALE_KEY
    if key in state_dict and state_dict[key].dim() == 0:
        state_dict[key] = state_dict[key].reshape(1)


# Saved checkpoints spell the text tower's blocks as transformers' own AltCLIPModel names them
# (`text_model.roberta.encoder.layers.N`), so that `transformers.AltCLIPModel.from_pretrained` on a folder this
# package wrote loads every weight without this package (its renaming of `layer.N` applies to model_type
# "altclip" only, and a folder of ours is "altclip_xlmr": it would otherwise start those blocks at random).
SAVED_TEXT_LAYER = re.compile(r"^(text_model\.roberta\.encoder\.)layer\.(?=\d)")
LOADED_TEXT_LAYER = re.compile(r"^(text_model\.roberta\.encoder\.)layers\.(?=\d)")


def _text_layers_on_load(module, state_dict, prefix, *args) -> None:
    """`load_state_dict` pre-hook (a Trainer resuming a checkpoint it saved): saved ``layers.N`` text blocks fit the
    XLM-R tower's ``layer.N``."""
    for key in [key for key in state_dict if key.startswith(prefix)]:
        renamed = prefix + LOADED_TEXT_LAYER.sub(r"\1layer.", key[len(prefix) :])
        if renamed != key:
            state_dict[renamed] = state_dict.pop(key)


class CheckpointMismatchError(ValueError):
    """A checkpoint whose weights do not fit the model: missing, unexpected or wrongly shaped tensors."""


@dataclass
class AltCLIPOutput(CLIPOutput):
    """Output of `AltCLIPModel.forward`: CLIP's fields (`logits_per_image`, `text_embeds`, ...), and
    ``logit_scale_exp`` (shape (1,)) and ``logit_bias`` (SigLIP's, None in a model without one) when the forward
    is asked for them."""

    logit_scale_exp: torch.FloatTensor | None = None
    logit_bias: torch.FloatTensor | None = None


def contrastive_loss(logits_per_text: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a square similarity matrix whose diagonal holds the matching pairs."""
    labels = torch.arange(logits_per_text.shape[0], device=logits_per_text.device)
    return (F.cross_entropy(logits_per_text, labels) + F.cross_entropy(logits_per_text.t(), labels)) / 2


def _tracing() -> bool:
    """Inside torch.compile or torch.export (ONNX export): checks that read tensor values are left out there."""
    is_exporting = getattr(torch.compiler, "is_exporting", lambda: False)
    return torch.compiler.is_compiling() or is_exporting()


def _check_input_ids(input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None, vocab_size: int) -> None:
    if input_ids is None:
        return
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape (batch, sequence); got shape {tuple(input_ids.shape)}.")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids has {tuple(input_ids.shape)}."
        )
    if input_ids.numel() and not _tracing() and (int(input_ids.max()) >= vocab_size or int(input_ids.min()) < 0):
        raise ValueError(
            f"input_ids hold token ids outside [0, {vocab_size}) (min {int(input_ids.min())}, max "
            f"{int(input_ids.max())}): the tokenizer does not belong to this model's vocabulary."
        )


class NonFiniteInputError(ValueError):
    """A float input (``pixel_values``, ``image_embeds``, ``inputs_embeds``) holds NaN or infinite values, which
    would silently give NaN embeddings and logits."""


def check_finite_input(name: str, values: torch.Tensor | None) -> None:
    """Raises `NonFiniteInputError` naming the input and its bad rows when `values` hold NaN or infinity (one
    reduction over the input, skipped while tracing for export)."""
    if values is None or not values.is_floating_point() or _tracing():
        return
    finite = torch.isfinite(values)
    if bool(finite.all()):
        return
    bad_rows = (~finite).reshape(len(values), -1).any(dim=1).nonzero().flatten().tolist()
    shown = ", ".join(str(row) for row in bad_rows[:5]) + (", ..." if len(bad_rows) > 5 else "")
    raise NonFiniteInputError(
        f"{name} hold NaN or infinite values in {len(bad_rows)} of {len(values)} rows (row {shown}); the inputs were "
        "not decoded or normalised properly (the model's processor gives finite values)."
    )


def _check_pixel_values(pixel_values: torch.Tensor | None, config: AltCLIPVisionConfig, interpolate: bool) -> None:
    if pixel_values is None:
        raise ValueError("pixel_values are required by the vision tower.")
    if pixel_values.dim() != 4:
        raise ValueError(
            f"pixel_values must have shape (batch, channels, height, width); got shape {tuple(pixel_values.shape)}."
        )
    check_finite_input("pixel_values", pixel_values)
    channels, height, width = pixel_values.shape[1:]
    if channels != config.num_channels:
        raise ValueError(
            f"pixel_values have {channels} channels but the vision tower expects {config.num_channels} "
            "(convert images to RGB before processing)."
        )
    size = config.image_size
    expected = (size, size) if isinstance(size, int) else tuple(size)
    if not interpolate and (height, width) != expected:
        raise ValueError(
            f"pixel_values are {height}x{width} but the vision tower expects {expected[0]}x{expected[1]}; "
            "resize with the model's processor or pass interpolate_pos_encoding=True."
        )


class NonFiniteWeightsError(ValueError):
    """A model holds NaN or infinite weights (a diverged run, a broken conversion) and would give meaningless
    embeddings."""


def check_finite_weights(model: nn.Module, source: str | os.PathLike) -> None:
    """Raises `NonFiniteWeightsError` naming the tensors that hold NaN or Inf values; one pass over the weights,
    meant to run once at load time by whatever scores, serves or publishes a model."""
    bad = []
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point():
            count = int((~torch.isfinite(tensor)).sum())
            if count:
                bad.append(f"{name} ({count:,} of {tensor.numel():,} values)")
    if bad:
        more = f" and {len(bad) - 5} more tensors" if len(bad) > 5 else ""
        raise NonFiniteWeightsError(
            f"{source} holds NaN or infinite weights in {', '.join(bad[:5])}{more}; its embeddings would be "
            "meaningless. Use an earlier checkpoint of the run."
        )


class StrictReleasedLoadingMixin:
    """`from_pretrained` that reads released weight names and refuses partial loads.

    Missing, unexpected (other than `IGNORED_CHECKPOINT_KEYS`) or mis-shaped weights raise
    `CheckpointMismatchError` naming the keys, instead of leaving random weights in the model — unless the caller
    asks to inspect the load with ``output_loading_info=True``, which returns ``(model, info)`` as transformers does.
    """

    checkpoint_key_renaming: dict[str, str] = {}
    _keys_to_ignore_on_load_unexpected = IGNORED_CHECKPOINT_KEYS

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None, *model_args: Any, **kwargs: Any):
        """Load like `PreTrainedModel.from_pretrained`; raises `CheckpointMismatchError` on any weight mismatch."""
        # before transformers looks for a peft adapter config (when peft is installed), which reports a missing
        # local folder as an invalid Hub id
        check_local_path(pretrained_model_name_or_path)
        key_mapping = {**cls.checkpoint_key_renaming, **(kwargs.pop("key_mapping", None) or {})}
        return_info = kwargs.pop("output_loading_info", False)
        allow_mismatched_sizes = kwargs.pop("ignore_mismatched_sizes", False)
        # Let transformers finish loading so that every problem is collected, then raise one error naming them all.
        try:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path,
                *model_args,
                key_mapping=key_mapping,
                output_loading_info=True,
                ignore_mismatched_sizes=True,
                **kwargs,
            )
        except Exception as error:
            if type(error).__name__ != "SafetensorError":  # safetensors' own error does not name the file
                raise
            files = (
                sorted(Path(pretrained_model_name_or_path).glob("*.safetensors"))
                if pretrained_model_name_or_path
                else []
            )
            where = ", ".join(str(path) for path in files) or str(pretrained_model_name_or_path)
            raise OSError(
                f"{where}: the weights cannot be read ({error}); the file is truncated or corrupt, download or save "
                "it again."
            ) from error
        problems = {
            "missing_keys": sorted(info.get("missing_keys") or ()),
            "unexpected_keys": sorted(info.get("unexpected_keys") or ()),
            "mismatched_keys": []
            if allow_mismatched_sizes
            else [
                f"{key} (checkpoint {tuple(saved)} vs model {tuple(expected)})"
                for key, saved, expected in sorted(info.get("mismatched_keys") or ())
            ],
        }
        problems = {name: keys for name, keys in problems.items() if keys}
        if problems and not return_info:
            details = "; ".join(
                f"{name}: {', '.join(keys[:20])}" + (f" and {len(keys) - 20} more" if len(keys) > 20 else "")
                for name, keys in problems.items()
            )
            raise CheckpointMismatchError(
                f"The checkpoint at {pretrained_model_name_or_path} does not fit {cls.__name__} ({details})."
            )
        # Save under this module's own weight names, whatever spelling the checkpoint used. transformers 5's public
        # alternative, `conversion_mapping.register_checkpoint_conversion_mapping`, is not used: it reaches custom
        # code only when registered at import of the remote module, and it reverses the renaming on save, so a
        # model would be written in the spelling of whatever checkpoint it came from (`layer.N` or `layers.N`).
        # `key_mapping`, the public from_pretrained argument, does the renaming; clearing the recorded conversions
        # keeps every checkpoint this package (and the Trainer) writes in one spelling: transformers' AltCLIPModel
        # module names (`layers.N` in both towers; see SAVED_TEXT_LAYER).
        model._weight_conversions = None
        return (model, info) if return_info else model


class AltCLIPPreTrainedModel(StrictReleasedLoadingMixin, PreTrainedModel):
    """Shared loading rules of every AltCLIP class: released weight names, strict loading, SDPA."""

    config: AltCLIPConfig
    config_class = AltCLIPConfig
    base_model_prefix = "altclip"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["XLMRobertaEmbeddings", "XLMRobertaLayer", "CLIPEncoderLayer", "CLIPVisionEmbeddings"]
    checkpoint_key_renaming = {**TEXT_LAYER_RENAMING, **VISION_LAYER_RENAMING}

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, AltCLIPModel):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)
            if module.logit_bias is not None:
                init.constant_(module.logit_bias, self.config.logit_bias_init_value)
            factor = self.config.initializer_factor
            init.normal_(module.text_projection.weight, std=module.text_embed_dim**-0.5 * factor)
            init.normal_(module.visual_projection.weight, std=module.vision_embed_dim**-0.5 * factor)


class AltCLIPTextModel(AltCLIPPreTrainedModel):
    """XLM-R encoder whose last hidden states go through ``pre_LN`` and ``transformation``; [CLS] is the feature."""

    config: AltCLIPTextConfig
    config_class = AltCLIPTextConfig
    main_input_name = "input_ids"
    input_modalities = ("text",)

    def __init__(self, config: AltCLIPTextConfig):
        super().__init__(config)
        self.roberta = XLMRobertaModel(config, add_pooling_layer=False)
        self.pre_LN = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.transformation = nn.Linear(config.hidden_size, config.project_dim)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.roberta.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.roberta.embeddings.word_embeddings = value

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPoolingAndProjection:
        """``last_hidden_state``: every position projected to ``project_dim``; ``pooler_output``: its [CLS] row."""
        _check_input_ids(input_ids, attention_mask, self.config.vocab_size)
        check_finite_input("inputs_embeds", inputs_embeds)
        outputs = self.roberta(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **kwargs,
        )
        projected = self.transformation(self.pre_LN(outputs.last_hidden_state))
        return BaseModelOutputWithPoolingAndProjection(
            last_hidden_state=projected,
            pooler_output=projected[:, 0],
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


class AltCLIPVisionModel(StrictReleasedLoadingMixin, CLIPVisionModel):
    """transformers' CLIP ViT with this package's config and a readable error for malformed ``pixel_values``."""

    config: AltCLIPVisionConfig
    config_class = AltCLIPVisionConfig
    checkpoint_key_renaming = VISION_LAYER_RENAMING

    def forward(
        self, pixel_values: torch.Tensor | None = None, interpolate_pos_encoding: bool | None = False, **kwargs: Any
    ) -> BaseModelOutputWithPooling:
        """Returns the ViT's ``last_hidden_state`` and ``pooler_output`` (the post-LayerNorm [CLS] token)."""
        _check_pixel_values(pixel_values, self.config, bool(interpolate_pos_encoding))
        return super().forward(pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs)


class AltCLIPModel(AltCLIPPreTrainedModel):
    """The dual encoder: image and text embeddings in one space, scaled cosine similarities as logits."""

    config: AltCLIPConfig
    main_input_name = "input_ids"

    def __init__(self, config: AltCLIPConfig):
        super().__init__(config)
        self.projection_dim = config.projection_dim
        self.text_embed_dim = config.text_config.project_dim
        self.vision_embed_dim = config.vision_config.hidden_size
        self.text_model = AltCLIPTextModel._from_config(config.text_config)
        self.vision_model = AltCLIPVisionModel._from_config(config.vision_config)
        self.visual_projection = nn.Linear(self.vision_embed_dim, self.projection_dim, bias=False)
        self.text_projection = nn.Linear(self.text_embed_dim, self.projection_dim, bias=False)
        # A (1,) vector, not a 0-dim tensor, so that FSDP2 and DeepSpeed can shard and broadcast it (see
        # LOGIT_SCALE_KEY); checkpoints store it as the released 0-dim tensor.
        self.logit_scale = nn.Parameter(torch.tensor([config.logit_scale_init_value]))
        # SigLIP's learnable bias, present only in models trained with the sigmoid loss (see `add_logit_bias`).
        bias = config.logit_bias_init_value
        self.logit_bias = nn.Parameter(torch.tensor([float(bias)])) if bias is not None else None
        self.register_load_state_dict_pre_hook(_logit_scale_as_vector_on_load)
        self.register_load_state_dict_pre_hook(_text_layers_on_load)
        self.post_init()

    @staticmethod
    def _load_pretrained_model(model, state_dict, checkpoint_files, load_config, expected_keys=None):
        """transformers' loading, with the stored 0-dim ``logit_scale`` reshaped into the model's (1,) vector
        (also under DeepSpeed ZeRO-3, whose loading applies the same weight conversions)."""
        converter = WeightConverter(LOGIT_SCALE_KEY, LOGIT_SCALE_KEY, [LogitScaleAsVector()])
        mapping = [*(load_config.weight_mapping or []), converter]
        load_config = dataclasses.replace(load_config, weight_mapping=mapping)
        return PreTrainedModel._load_pretrained_model(model, state_dict, checkpoint_files, load_config, expected_keys)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """`PreTrainedModel.save_pretrained` writing ``logit_scale`` in its released 0-dim shape (also from a given
        ``state_dict``, e.g. a Trainer's gathered one); with remote code on, also maps the zero-shot Auto class to
        this model."""
        if self._auto_class is not None:
            module = type(self).__module__.rsplit(".", 1)[-1]
            auto_map = dict(getattr(self.config, "auto_map", None) or {})
            auto_map["AutoModelForZeroShotImageClassification"] = f"{module}.{type(self).__name__}"
            self.config.auto_map = auto_map
        state_dict = kwargs.pop("state_dict", None)
        state_dict = dict(self.state_dict() if state_dict is None else state_dict)
        if LOGIT_SCALE_KEY in state_dict and state_dict[LOGIT_SCALE_KEY].numel() == 1:
            state_dict[LOGIT_SCALE_KEY] = state_dict[LOGIT_SCALE_KEY].detach().reshape(()).clone()
        state_dict = {SAVED_TEXT_LAYER.sub(r"\1layers.", key): value for key, value in state_dict.items()}
        super().save_pretrained(save_directory, *args, state_dict=state_dict, **kwargs)

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_model.set_input_embeddings(value)

    @can_return_tuple
    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPoolingAndProjection:
        """Text tower output whose ``pooler_output`` is the projected (not yet normalised) text embedding."""
        outputs = self.text_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            **kwargs,
        )
        outputs.pooler_output = self.text_projection(outputs.pooler_output)
        return outputs

    @can_return_tuple
    def get_image_features(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False, **kwargs: Any
    ) -> BaseModelOutputWithPooling:
        """Vision tower output whose ``pooler_output`` is the projected (not yet normalised) image embedding."""
        outputs = self.vision_model(
            pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs
        )
        outputs.pooler_output = self.visual_projection(outputs.pooler_output)
        return outputs

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        return_loss: bool | None = None,
        interpolate_pos_encoding: bool = False,
        image_embeds: torch.FloatTensor | None = None,
        return_logit_scale: bool = False,
        **kwargs: Any,
    ) -> AltCLIPOutput:
        """Embeds both modalities; ``logits_per_image[i, j]`` scores image i against text j.

        With ``return_loss=True`` the i-th text must describe the i-th image, so both batches must be equal.
        ``image_embeds`` (L2-normalised, e.g. cached from a frozen image tower) may stand in for ``pixel_values``;
        the vision tower is then not run. ``return_logit_scale=True`` adds ``logit_scale_exp``, the temperature
        applied, computed inside the forward (where DeepSpeed ZeRO-3 and FSDP2 have gathered ``logit_scale``), so
        that a loss over other ranks' embeddings can use it with its gradient.
        """
        if input_ids is None or (pixel_values is None) == (image_embeds is None):
            raise ValueError(
                "AltCLIPModel.forward needs input_ids and one of pixel_values or image_embeds; "
                "use get_text_features / get_image_features for one modality."
            )
        images = len(pixel_values) if pixel_values is not None else len(image_embeds)
        if return_loss and input_ids.shape[0] != images:
            raise ValueError(
                f"return_loss=True pairs text i with image i, but got {input_ids.shape[0]} texts and {images} images."
            )
        vision_outputs = None
        check_finite_input("image_embeds", image_embeds)
        if image_embeds is None:
            vision_outputs = self.vision_model(
                pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs
            )
            image_embeds = F.normalize(self.visual_projection(vision_outputs.pooler_output), dim=-1)
        text_outputs = self.text_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            **kwargs,
        )
        text_embeds = F.normalize(self.text_projection(text_outputs.pooler_output), dim=-1)

        scale = self.logit_scale.exp().to(text_embeds.device)
        logits_per_text = text_embeds @ image_embeds.t().to(text_embeds.device)
        logits_per_text = logits_per_text * scale
        bias = self.logit_bias.to(text_embeds.device) if self.logit_bias is not None else None
        if bias is not None:  # SigLIP's logits; a softmax over them (zero-shot) is unchanged by it
            logits_per_text = logits_per_text + bias
        logits_per_image = logits_per_text.t()

        return AltCLIPOutput(
            loss=contrastive_loss(logits_per_text) if return_loss else None,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
            logit_scale_exp=scale if return_logit_scale else None,
            logit_bias=bias if return_logit_scale else None,
        )


__all__ = [
    "AltCLIPModel",
    "AltCLIPOutput",
    "AltCLIPPreTrainedModel",
    "AltCLIPTextModel",
    "AltCLIPVisionModel",
    "CheckpointMismatchError",
    "NonFiniteInputError",
    "NonFiniteWeightsError",
    "check_finite_input",
    "check_finite_weights",
    "contrastive_loss",
]
