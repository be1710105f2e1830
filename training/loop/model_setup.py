"""Turning `ModelArguments` into the model, processor and (stage 1) teacher that a run trains."""

import contextlib
import logging

import torch
from transformers import AutoTokenizer, TrainingArguments

from altclip.common.errors import UsageError
from modeling_altclip import AltCLIPModel, AltCLIPProcessor
from modeling_altclip.conversion_altclip import build_altclip

from ..arguments import ModelArguments
from .distributed_backends import full_numel, outside_zero3_init
from .teacher import FrozenTextTeacher, load_teacher, self_teacher

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_or_build_model(
    args: ModelArguments, training_args: TrainingArguments | None = None
) -> tuple[AltCLIPModel, AltCLIPProcessor]:
    """An existing AltCLIP checkpoint, or a new one from a CLIP and an XLM-R-family encoder (built whole under
    ZeRO-3: its weights are copied between models)."""
    if args.model_name_or_path:
        model = AltCLIPModel.from_pretrained(args.model_name_or_path, attn_implementation=args.attn_implementation)
        processor = AltCLIPProcessor.from_pretrained(args.tokenizer_name_or_path or args.model_name_or_path)
        return model, processor
    check_model_arguments(args, needs_teacher=False)
    with outside_zero3_init(training_args) if training_args is not None else contextlib.nullcontext():
        model, processor = build_altclip(
            args.clip_model_name_or_path,
            args.text_encoder_name_or_path,
            args.tokenizer_name_or_path,
            attn_implementation=args.attn_implementation,
        )
    return model, processor


def check_model_arguments(args: ModelArguments, needs_teacher: bool) -> None:
    """The model flags a stage needs, refused in one line before anything loads."""
    if needs_teacher and not args.clip_model_name_or_path:
        raise UsageError(
            "altclip-train: teacher learning needs --clip_model_name_or_path, the CLIP whose text features are taught."
        )
    if not args.model_name_or_path and not (args.clip_model_name_or_path and args.text_encoder_name_or_path):
        raise UsageError(
            "altclip-train: give --model_name_or_path (an AltCLIP checkpoint), or both --clip_model_name_or_path and "
            "--text_encoder_name_or_path to start a new AltCLIP."
        )


def teacher_dtype(name: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"Unknown teacher dtype {name!r}; choose auto, {', '.join(DTYPES)}.") from None


def load_teacher_for(model: AltCLIPModel, args: ModelArguments, dtype_name: str, kind: str = "clip", tokenizer=None):
    """The frozen text teacher and its tokenizer: CLIP's (`kind` "clip"; its width must equal the student's
    ``project_dim``), or a copy of the model's own text tower with the model's `tokenizer` ("self")."""
    if kind == "self":
        return self_teacher(model.text_model, teacher_dtype(dtype_name)), tokenizer
    check_model_arguments(args, needs_teacher=True)
    teacher: FrozenTextTeacher = load_teacher(args.clip_model_name_or_path, dtype=teacher_dtype(dtype_name))
    project_dim = model.config.text_config.project_dim
    if teacher.width != project_dim:
        raise UsageError(
            f"altclip-train: the teacher {args.clip_model_name_or_path} has text width {teacher.width}, but the "
            f"student's transformation maps to project_dim={project_dim}; they must be equal."
        )
    tokenizer = AutoTokenizer.from_pretrained(args.teacher_tokenizer_name_or_path or args.clip_model_name_or_path)
    return teacher, tokenizer


def disable_dropout(module: torch.nn.Module) -> None:
    """Sets every dropout probability in `module` to zero (the saved config keeps its values)."""
    for child in module.modules():
        if isinstance(child, torch.nn.Dropout):
            child.p = 0.0


def freeze_image_tower(model: AltCLIPModel) -> None:
    """Stage 2 default: the vision tower and ``visual_projection`` keep CLIP's weights."""
    model.vision_model.requires_grad_(False)
    model.visual_projection.requires_grad_(False)
    trainable = sum(full_numel(p) for p in model.parameters() if p.requires_grad)
    logger.info("Image tower frozen; %s trainable parameters", f"{trainable:,}")


def check_tokenizer_fits(model: AltCLIPModel, processor: AltCLIPProcessor, args: ModelArguments) -> None:
    """Refuses (one line, before the first step) a tokenizer with more tokens than the text tower has embeddings:
    its larger ids would fail the first forward pass that meets them."""
    tokens, embeddings = len(processor.tokenizer), model.config.text_config.vocab_size
    if tokens > embeddings:
        tokenizer = args.tokenizer_name_or_path or args.model_name_or_path or args.text_encoder_name_or_path
        tower = args.model_name_or_path or args.text_encoder_name_or_path
        raise UsageError(
            f"altclip-train: the tokenizer of {tokenizer} has {tokens:,} tokens but the text tower of {tower} has "
            f"{embeddings:,} embeddings (vocab_size): pass the tokenizer that text encoder was trained with "
            "(--tokenizer_name_or_path), or a text encoder made for this tokenizer."
        )
