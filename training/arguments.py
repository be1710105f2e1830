"""Command-line arguments of ``altclip-train``, parsed with `HfArgumentParser` beside `TrainingArguments`."""

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser, TrainingArguments

from altclip.common.cli_errors import one_line_parser_errors
from altclip.common.config_files import expand_config
from altclip.common.constants import DEFAULT_MAX_TEXT_LENGTH
from altclip.common.errors import UsageError
from modeling_altclip.assets import XLMR_MAX_LENGTH

from .flag_ranges import check_flag_ranges
from .loop.contrastive_objective import CONTRASTIVE_LOSSES
from .loop.losses import DISTILLATION_LOSSES
from .loop.preemption import DEFAULT_PREEMPTION_SIGNALS, PreemptionSignals


@dataclass
class ModelArguments:
    """Where the model starts: an AltCLIP checkpoint, or a CLIP plus an XLM-R-family encoder joined anew."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "An AltCLIP checkpoint to continue from (e.g. the output of stage 1)."}
    )
    clip_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A CLIP checkpoint: the teacher of stage 1 and, without --model_name_or_path, the vision side."
        },
    )
    text_encoder_name_or_path: str | None = field(
        default=None, metadata={"help": "An XLM-R-family encoder for a new AltCLIP's text tower."}
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "The student's tokenizer, if not the text encoder's own."}
    )
    teacher_tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "The teacher's tokenizer, if not the CLIP checkpoint's own."}
    )
    attn_implementation: str = field(default="sdpa", metadata={"help": "eager, sdpa or flash_attention_2."})


@dataclass
class DataArguments:
    """Training data: sources (files, folders, shard specs, URLs) mixed by sampling weights."""

    train_files: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Sources, each a file, folder, brace list (laion/{00000..41407}.tar), glob, or URL (https://, "
            "s3://, gs://, hf://, pipe:CMD). Webdataset shards (.tar, .tar.gz) stream; JSONL/CSV/TSV/Parquet "
            "tables and save_to_disk folders are memory-mapped."
        },
    )
    train_file_weights: list[float] | None = field(
        default=None, metadata={"help": "Sampling weight of each --train_files source (languages, corpora)."}
    )
    validation_files: list[str] | None = field(default=None, metadata={"help": "Held-out sources for eval_loss."})
    shuffle_buffer: int = field(
        default=5000, metadata={"help": "Shard streams: samples in the shuffle buffer of each DataLoader worker."}
    )
    data_cache_dir: str | None = field(
        default=None, metadata={"help": "Where datasets keeps the Arrow files of tables (default: its own cache)."}
    )
    table_build_processes: int | None = field(
        default=None,
        metadata={
            "help": "Processes that build a table's Arrow file on its first use (default: every CPU of the node)."
        },
    )
    record_trained_keys: bool = field(
        default=False,
        metadata={"help": "Write every trained sample's location per step to OUTPUT_DIR/trained_keys/rank-R.tsv."},
    )
    reduced_jpeg_decoding: bool = field(
        default=False,
        metadata={"help": "Decode JPEGs at the smallest DCT scale (1/2..1/8) still covering the model's input."},
    )
    max_text_length: int = field(
        default=DEFAULT_MAX_TEXT_LENGTH, metadata={"help": "Student tokens per text after truncation."}
    )
    english_column: str = field(default="english", metadata={"help": "Teacher learning: the English column."})
    translation_column: str = field(default="translation", metadata={"help": "Teacher learning: the translation."})
    image_column: str = field(default="image", metadata={"help": "Contrastive: image path (or image) column."})
    caption_column: str = field(default="caption", metadata={"help": "Contrastive: caption column."})
    image_root: str | None = field(
        default=None, metadata={"help": "Folder that relative image paths start from (default: the table's folder)."}
    )
    # Shard sizing and the reading plan (training/data/sizing.py, training/data/shard_plan.py, training/run_plan.py).
    shard_sizes: list[str] | None = field(
        default=None,
        metadata={
            "help": "JSON files {shard file name or URL: samples} for shards whose folder has no sizes.json (any "
            "source kind, pipe: included); they win over sizes.json."
        },
    )
    train_num_samples: list[int] | None = field(
        default=None,
        metadata={
            "help": "open_clip's: samples of the shards no size is known for (one number for all, or one per "
            "source), spread evenly over them; with --dataset_resampled, the samples of an epoch."
        },
    )
    # Language balancing (training/data/language_balance.py; docs/training.md, "Language balancing").
    language_sampling_alpha: float | None = field(
        default=None,
        metadata={
            "help": "Weigh each --train_files source by its samples n^alpha (XLM-R/mT5 sampling; 0.3 there), and "
            "with --language_column each language within a table alike. Default: no weighting, every row once."
        },
    )
    language_column: str | None = field(
        default=None,
        metadata={
            "help": "Tables: the column naming each row's language; the plan prints samples per language per "
            "epoch, and with --language_sampling_alpha the languages within a source are sampled by n^alpha."
        },
    )
    dataset_resampled: bool = field(
        default=False,
        metadata={
            "help": "open_clip's: each reader draws whole shards with replacement (by size and weight) instead of "
            "reading its sample range of the epoch; for fewer than two shards per reader."
        },
    )


@dataclass
class TeacherLearningArguments:
    """Stage 1 options."""

    distillation_loss: str = field(default="mse", metadata={"help": "mse or cosine.", "choices": DISTILLATION_LOSSES})
    teacher: str = field(
        default="clip",
        metadata={
            "help": "clip: the student learns --clip_model_name_or_path's text features (stage 1 of a new model). "
            "self: a frozen copy of the starting model's own text tower is the teacher on the English side, so a "
            "trained AltCLIP learns a language in the space it already has (add-language's default).",
            "choices": ["clip", "self"],
        },
    )
    include_english_pairs: bool = field(
        default=True, metadata={"help": "Also train English-English pairs so the student keeps the teacher's English."}
    )
    student_dropout: bool = field(default=False, metadata={"help": "Keep the student's dropout on (off by default)."})
    teacher_dtype: str = field(
        default="auto",
        metadata={
            "help": "auto (bf16 on a GPU that has it, else fp32), float32, bfloat16, float16.",
            "choices": ["auto", "float32", "bfloat16", "float16"],
        },
    )
    precompute_teacher_features: bool = field(
        default=False,
        metadata={
            "help": "Run the teacher once over the distinct English sentences (all ranks in parallel, float16 shards) "
            "and read its features instead of running it every step."
        },
    )
    teacher_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where precomputed features live (default: OUTPUT_DIR/teacher_cache); one folder per teacher "
            "weights, tokenizer, dtype, max length and corpus. Shared by all ranks."
        },
    )
    teacher_cache_shard_rows: int = field(default=65_536, metadata={"help": "Sentences per teacher-feature shard."})


@dataclass
class ContrastiveArguments:
    """Stage 2 options."""

    unfreeze_vision: bool = field(default=False, metadata={"help": "Train the image tower too (frozen by default)."})
    max_logit_scale: float = field(default=100.0, metadata={"help": "Upper clamp of exp(logit_scale)."})
    gather_with_grad: bool = field(
        default=True, metadata={"help": "Back-propagate through the cross-rank gather (exact global-batch gradient)."}
    )
    full_batch_negatives: bool = field(
        default=True,
        metadata={
            "help": "With --gradient_accumulation_steps k > 1, score every pair against the whole accumulated batch "
            "(GradCache: the update of one step on k times the batch, for one extra forward without gradients); "
            "false scores each micro-batch alone (plain accumulation, k times fewer negatives)."
        },
    )
    cache_image_features: bool = field(
        default=False,
        metadata={
            "help": "Frozen image tower, table data: store each image's embedding (float16) the first time it is "
            "trained and reuse it later, so that later epochs neither decode the image nor run the tower."
        },
    )
    image_feature_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Where --cache_image_features keeps them (default: OUTPUT_DIR/image_feature_cache)."},
    )
    # The objective (training/loop/contrastive_objective.py; docs/training.md, "Loss and Matryoshka embeddings").
    loss: str = field(
        default="infonce",
        metadata={
            "help": "infonce (CLIP's softmax loss) or siglip (SigLIP's sigmoid loss, arXiv 2303.15343: a learnable "
            "bias, -10, is added to the model and its temperature starts at 10).",
            "choices": list(CONTRASTIVE_LOSSES),
        },
    )
    matryoshka_dims: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated embedding widths, e.g. 64,128,256: the loss is also trained on each prefix of "
            "the embeddings, re-normalised (Matryoshka, arXiv 2205.13147); the full width is always included and "
            "the saved config records them."
        },
    )
    matryoshka_weights: str | None = field(
        default=None,
        metadata={"help": "Comma-separated weights, one per Matryoshka width with the full width last (default: 1s)."},
    )
    # Keeping what the model knew while fine-tuning (training/loop/text_anchors.py; docs/finetuning.md).
    anchor_texts: list[str] | None = field(
        default=None,
        metadata={
            "help": "Texts whose embeddings fine-tuning keeps: .txt files (one per line) or tables (their "
            "--anchor_text_column), e.g. the names the model knew, in its languages. Each micro-batch adds a draw "
            "of them and --anchor_weight * (1 - cos) to the starting model's embeddings of them."
        },
    )
    anchor_text_column: str = field(default="caption", metadata={"help": "The text column of --anchor_texts tables."})
    anchor_weight: float = field(
        default=10.0,
        metadata={
            "help": "Weight of the anchor term in the loss (with --anchor_texts); 10 was chosen (of 1, 10, 30) on "
            "the fine-tuning demonstration's validation split (docs/finetuning.md): sweep it on yours."
        },
    )
    anchor_batch_size: int | None = field(
        default=None, metadata={"help": "Anchor texts per micro-batch and device (default: the per-device batch)."}
    )


@dataclass
class ZeroShotArguments:
    """Zero-shot evaluation during training."""

    zeroshot_steps: int = field(default=0, metadata={"help": "Score zero-shot classification every N steps (0: off)."})
    zeroshot_dataset: str = field(
        default="image_folder", metadata={"help": "An altclip-eval zeroshot dataset: imagenet1k, cifar10, ..."}
    )
    zeroshot_data_dir: str | None = field(default=None, metadata={"help": "Its local copy (layouts in the README)."})
    zeroshot_languages: str = field(default="en", metadata={"help": "Comma-separated languages to score."})
    zeroshot_eval_flags: str = field(
        default="", metadata={"help": 'More altclip-eval flags, e.g. "--batch_size 256 --num_workers 8".'}
    )


@dataclass
class OutputArguments:
    """What may be replaced, how errors are shown, and which signals stop a run with a checkpoint."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Train into an --output_dir that already holds a model, replacing it (never an input model)."
        },
    )
    show_traceback: bool = field(
        default=False, metadata={"help": "Show the full traceback of an error instead of its one-line message."}
    )
    preemption_signals: str = field(
        default=DEFAULT_PREEMPTION_SIGNALS,
        metadata={
            "help": "Signals (comma-separated, as SLURM's --signal sends them; none for none) on which every rank "
            "finishes its step, the run saves a checkpoint and exits with status 75 for the job script to requeue."
        },
    )


@dataclass
class FineTuningArguments:
    """Fine-tuning without forgetting: LoRA adapters (peft), weight-space interpolation (WiSE-FT), before/after."""

    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0 trains the weights themselves (no adapter)."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scaling numerator (update scaled by alpha/r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA branch's input."})
    lora_targets: str = field(
        default="text",
        metadata={"help": "Towers that get adapters: text, vision or both.", "choices": ["text", "vision", "both"]},
    )
    lora_layers: str = field(
        default="attention,mlp",
        metadata={
            "help": "Comma-separated linear layers of each transformer block that get adapters: attention (query, "
            "key, value, output), mlp (both feed-forward layers), projection (the towers' output projections)."
        },
    )
    lora_trainable_tokens: str = field(
        default="auto",
        metadata={
            "help": "LoRA on the text tower: also train these token embeddings (saved in the adapter): auto (the "
            "tokens of the training texts, table data), none, or comma-separated token ids."
        },
    )
    merge_adapter: bool = field(
        default=False,
        metadata={
            "help": "LoRA: also save the adapter merged into the base model, a full checkpoint in OUTPUT_DIR/merged."
        },
    )
    wise_ft_alpha: float | None = field(
        default=None,
        metadata={
            "help": "Save start + alpha * (fine-tuned - start) (WiSE-FT, Wortsman et al. 2022): 0 the start model, 1 "
            "the fine-tuned one; with LoRA the adapter's update is scaled."
        },
    )
    wise_ft_sweep: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated alphas (e.g. 0,0.25,0.5,0.75,1) scored at the end on the validation and "
            "zero-shot sets; the best by --wise_ft_metric is saved."
        },
    )
    wise_ft_metric: str = field(
        default="eval_loss",
        metadata={
            "help": "What the sweep maximises: eval_loss (minimised) or a zero-shot score, e.g. "
            "zeroshot/image_folder/en/top1."
        },
    )
    before_after: bool = field(
        default=False,
        metadata={
            "help": "Score the validation set and the --zeroshot_* set before the first step and at the end: "
            "training_summary.json and before_after.png (the forgetting view)."
        },
    )


STAGES = {"teacher": TeacherLearningArguments, "contrastive": ContrastiveArguments}


STAGE_OF = {arguments: stage for stage, arguments in STAGES.items()}


@dataclass
class RunArguments:
    """Everything a run was given, parsed and checked."""

    model: ModelArguments
    data: DataArguments
    stage: TeacherLearningArguments | ContrastiveArguments
    zeroshot: ZeroShotArguments
    output: OutputArguments
    training: TrainingArguments
    tuning: FineTuningArguments
    flags_given: frozenset[str] = frozenset()  # the --flag names the user wrote (flags and --config files)
    preemption: PreemptionSignals | None = None  # installed by altclip-train before any model loads


def parse(stage: str, argv: Sequence[str]) -> RunArguments:
    """The flags (and ``--config`` files) of `stage`; unknown or malformed flags end in one line."""
    program = f"altclip-train {stage}"
    parser = HfArgumentParser(
        (
            ModelArguments,
            DataArguments,
            STAGES[stage],
            ZeroShotArguments,
            OutputArguments,
            TrainingArguments,
            FineTuningArguments,
        )
    )
    parser.prog = program
    one_line_parser_errors(parser, program)
    argv = expand_config(argv)
    if not torch.cuda.is_available() and not any(flag.startswith("--use_cpu") for flag in argv):
        # Without it, accelerate sees no device to distribute over and torchrun's processes each train alone.
        argv += ["--use_cpu", "true"]
    # every numeric flag in its range (NaN and infinity refused) before TrainingArguments' own checks, which name no
    # flag for some values (an infinite --logging_steps is an OverflowError there)
    check_flag_ranges([parser.parse_known_args(args=argv)[0]])
    try:
        parsed = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except ValueError as error:  # TrainingArguments' own checks of flag combinations
        raise UsageError(f"{program}: {error}") from None
    *dataclasses, remaining = parsed
    if remaining:
        raise UsageError(f"{program}: unknown flag(s) {' '.join(remaining)}. '{program} --help' lists every flag.")
    run = RunArguments(*dataclasses)
    run.flags_given = frozenset(item.split("=", 1)[0] for item in argv if item.startswith("--"))
    run.training.remove_unused_columns = False  # the collators build exactly the inputs the stage needs
    run.training.dataloader_pin_memory = run.training.dataloader_pin_memory and torch.cuda.is_available()
    check_numbers(run)
    return run


def check_numbers(run: RunArguments) -> None:
    """Values no run can use, refused before anything loads."""
    training = run.training
    for flag in ("per_device_train_batch_size", "gradient_accumulation_steps"):
        if getattr(training, flag) < 1:
            raise UsageError(f"altclip-train: --{flag} must be at least 1, not {getattr(training, flag)}.")
    limit = text_position_limit(run.model)
    if not 1 <= run.data.max_text_length <= limit:
        raise UsageError(
            f"altclip-train: --max_text_length {run.data.max_text_length} is outside 1..{limit}, the text tower's "
            "positions; choose a length within it."
        )


def text_position_limit(model_args: ModelArguments) -> int:
    """Tokens the student's text tower can take: its positions less RoBERTa's offset of 2 (XLM-R: 512), read from
    the local config; 512 when the model is a Hub id not read here."""
    for name, nested in ((model_args.model_name_or_path, True), (model_args.text_encoder_name_or_path, False)):
        config = Path(name) / "config.json" if name else None
        if config is not None and config.is_file():
            values = json.loads(config.read_text())
            values = values.get("text_config", values) if nested else values
            if "max_position_embeddings" in values:
                return int(values["max_position_embeddings"]) - 2
    return XLMR_MAX_LENGTH
