"""``altclip-train teacher|contrastive``: the two AltCLIP stages on the Hugging Face Trainer.

Flags are those of the argument dataclasses plus every `TrainingArguments` flag; ``--config FILE.yaml|json``
supplies them from a file (flags given after it win). Runs alike under ``python``, ``torchrun`` and
``accelerate launch``.
"""

import functools
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import HfArgumentParser, TrainingArguments

from altclip.common.cli_errors import one_line_parser_errors, run_with_one_line_errors, wants_traceback
from altclip.common.config_files import expand_config
from altclip.common.model_paths import unavailable_model
from altclip.common.records import DataFormatError
from modeling_altclip.assets import XLMR_MAX_LENGTH

from .arguments import (
    ContrastiveArguments,
    DataArguments,
    FineTuningArguments,
    ModelArguments,
    OutputArguments,
    TeacherLearningArguments,
    ZeroShotArguments,
)
from .data.data_plan import check_resumed_plan, check_resumed_tables, data_plan_callback, table_sizes
from .data.epoch_plan import data_seed, shuffles
from .data.image_text_data import (
    ContrastiveCollator,
    ImageTextTable,
    PairDecoder,
    decode_shard_sample,
    image_shape_of,
)
from .data.language_balance import balance_shards, balance_tables, check_balancing_flags
from .data.shard_stream import ShardStream
from .data.sources import Source, parse_sources, source_weights
from .data.tables import built_first, check_columns
from .data.text_data import DistillationCollator, ParallelText
from .finetune.before_after import BEFORE_AFTER_CHART, BeforeAfter, check_fine_tuning_arguments, save_before_after_chart
from .finetune.lora import apply_lora, check_lora_arguments, count_parameters, lora_enabled, save_adapter
from .loop.contrastive_objective import check_objective_flags, objective_for
from .loop.distributed_backends import gathered, init_deepspeed_communication, outside_zero3_init
from .loop.feature_caches import ImageCacheCallback, ImageEmbeddingCache, fingerprint, module_digest
from .loop.model_setup import (
    check_model_arguments,
    check_tokenizer_fits,
    disable_dropout,
    freeze_image_tower,
    load_or_build_model,
    load_teacher_for,
)
from .loop.output_folder import check_output_folder, check_room, disk_full_message, is_disk_full
from .loop.reporting import LOSS_CURVE_FILE, SUMMARY_FILE, save_loss_curve, save_summary
from .loop.saving import save_complete_model
from .loop.teacher import precomputed_teacher_features
from .loop.trainers import ContrastiveTrainer, TeacherLearningTrainer
from .loop.zeroshot_monitor import ZeroShotMonitor, check_zeroshot_arguments
from .run_plan import PlanCallback, check_shard_plan, reading_mode, sized_shards

logger = logging.getLogger("training")

STAGES = {"teacher": TeacherLearningArguments, "contrastive": ContrastiveArguments}
STAGE_OF = {arguments: stage for stage, arguments in STAGES.items()}
USAGE = """usage: altclip-train {teacher,contrastive} [--config FILE] [--FLAG VALUE ...]
       altclip-train toy-setup [FOLDER]
       altclip-train plan [--stage STAGE] --config FILE [--FLAG VALUE ...] [--world_size N]

  teacher      stage 1: the XLM-R text tower learns CLIP's text features from parallel text
  contrastive  stage 2: image-caption pairs, symmetric InfoNCE, image tower frozen by default
  plan         the run's plan without training: sources, samples, steps, batch sizes, memory, disk
  toy-setup    write tiny random CLIP and XLM-R checkpoints and a multilingual shapes dataset
               (default folder outputs/toy) for a CPU run that needs no download

'altclip-train STAGE --help' lists every flag."""


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
    try:
        parsed = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except ValueError as error:  # TrainingArguments' own checks of flag combinations
        raise SystemExit(f"{program}: {error}") from None
    *dataclasses, remaining = parsed
    if remaining:
        raise SystemExit(f"{program}: unknown flag(s) {' '.join(remaining)}. '{program} --help' lists every flag.")
    run = RunArguments(*dataclasses)
    run.training.remove_unused_columns = False  # the collators build exactly the inputs the stage needs
    run.training.dataloader_pin_memory = run.training.dataloader_pin_memory and torch.cuda.is_available()
    check_numbers(run)
    return run


def check_numbers(run: RunArguments) -> None:
    """Values no run can use, refused before anything loads."""
    training = run.training
    for flag in ("per_device_train_batch_size", "gradient_accumulation_steps"):
        if getattr(training, flag) < 1:
            raise SystemExit(f"altclip-train: --{flag} must be at least 1, not {getattr(training, flag)}.")
    limit = text_position_limit(run.model)
    if not 1 <= run.data.max_text_length <= limit:
        raise SystemExit(
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


def read_sources(data_args, stage: str) -> tuple[list[Source], list[Source] | None]:
    """Training and validation sources, checked before any model loads (one-line errors): they exist, their kinds
    fit the stage and every table has the stage's columns."""
    columns = (
        (data_args.english_column, data_args.translation_column)
        if stage == "teacher"
        else (data_args.image_column, data_args.caption_column)
    )
    try:
        train = parse_sources(data_args.train_files, data_args.train_file_weights)
        validation = parse_sources(data_args.validation_files) if data_args.validation_files else None
        for source in train + (validation or []):
            if not source.is_shards:
                check_columns(source, columns)
    except DataFormatError as error:
        raise SystemExit(f"altclip-train: {error}") from None
    if stage == "teacher" and any(source.is_shards for source in train + (validation or [])):
        raise SystemExit(
            "altclip-train teacher: parallel text comes as tables (JSONL/CSV/TSV/Parquet/datasets "
            "folders), not webdataset shards."
        )
    if validation and any(source.is_shards for source in validation):
        raise SystemExit(
            "altclip-train: --validation_files must be tables (JSONL/CSV/TSV/Parquet/datasets folders); held-out "
            "webdataset shards are not supported for eval_loss yet."
        )
    if data_args.shuffle_buffer < 1:
        raise SystemExit(f"altclip-train: --shuffle_buffer must be at least 1, not {data_args.shuffle_buffer}.")
    return train, validation


def check_stage_flags(stage: str, stage_args, training_args: TrainingArguments, train_sources: list[Source]) -> None:
    """Flag combinations that cannot work, refused in one line before any model loads."""
    if stage != "contrastive":
        return
    check_objective_flags(stage_args)
    if stage_args.cache_image_features and stage_args.unfreeze_vision:
        raise SystemExit(
            "altclip-train: --cache_image_features needs a frozen image tower (its embeddings change every step "
            "under --unfreeze_vision); drop one of the two."
        )
    if stage_args.cache_image_features and any(source.is_shards for source in train_sources):
        raise SystemExit(
            "altclip-train: --cache_image_features works on table data (JSONL/CSV/TSV/Parquet/datasets folders), "
            "whose rows have a fixed index; webdataset shards stream and are not cached."
        )
    sharded = "DeepSpeed" if training_args.deepspeed else "FSDP" if training_args.fsdp else None
    if sharded and stage_args.full_batch_negatives and training_args.gradient_accumulation_steps > 1:
        raise SystemExit(
            "altclip-train: --full_batch_negatives with --gradient_accumulation_steps above 1 (GradCache: several "
            f"backward passes per optimizer step, the temperature read outside the forward) is not supported under "
            f"{sharded}; use DDP, or pass --full_batch_negatives false for plain accumulation."
        )


def image_feature_cache(model, image_processor, dataset, stage_args, data_args, training_args):
    """The `ImageEmbeddingCache` of this frozen image tower, image processor and table data (created once)."""
    tower = torch.nn.ModuleDict({"vision_model": model.vision_model, "visual_projection": model.visual_projection})
    with gathered(tower):  # ZeRO-3 built it partitioned
        digest = module_digest(tower)
    key = {
        "image_tower": digest,
        "image_processor": image_processor.to_dict(),
        "reduced_jpeg_decoding": data_args.reduced_jpeg_decoding,
        "tables": [table._fingerprint for table in dataset.rows.tables],
        "rows": len(dataset),
        # which image a row names: relative paths start at --image_root (the image files' bytes are not hashed)
        "image_column": data_args.image_column,
        "image_root": str(Path(data_args.image_root).resolve()) if data_args.image_root else None,
    }
    root = Path(stage_args.image_feature_cache_dir or Path(training_args.output_dir) / "image_feature_cache")
    # local=False: one writer of the manifest for all nodes, which share the cache folder
    with training_args.main_process_first(local=False, desc="image feature cache"):
        return ImageEmbeddingCache.create(
            root / f"images-{fingerprint(key)}",
            len(dataset),
            model.config.projection_dim,
            key,
            training_args.process_index,
            reserved_bytes=checkpoint_bytes_on_disk_of(root, model, training_args),
        )


def checkpoint_bytes_on_disk_of(folder: Path, model, training_args: TrainingArguments) -> int:
    """Bytes of the checkpoints kept (--save_total_limit, at least one: fp32 weights and Adam's two fp32 states of
    the trained ones) when they go to the same file system as `folder`, else 0."""

    def device(path: Path) -> int:
        path = path.resolve()
        while not path.exists():
            path = path.parent
        return path.stat().st_dev

    if device(Path(training_args.output_dir)) != device(folder):
        return 0
    total = sum(parameter.numel() for parameter in model.parameters())
    trained = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    return (4 * total + 8 * trained) * max(training_args.save_total_limit or 1, 1)


def setup_logging(training_args: TrainingArguments) -> None:
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.WARNING,
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    level = training_args.get_process_log_level()
    transformers.utils.logging.set_verbosity(level)
    for name in ("training", "altclip", "modeling_altclip"):  # the installed jobs log as altclip.training.*
        logging.getLogger(name).setLevel(logging.INFO if training_args.should_log else level)


def checkpoints(output_dir: Path) -> list[Path]:
    """checkpoint-* folders, oldest (smallest step) first."""
    return sorted(output_dir.glob("checkpoint-*"), key=checkpoint_step) if output_dir.is_dir() else []


def checkpoint_step(folder: Path) -> int:
    """N of checkpoint-N (-1 for a folder that only looks like one)."""
    step = folder.name.split("-", 1)[1]
    return int(step) if step.isdigit() else -1


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """checkpoint-N folders whose trainer_state.json was written (the Trainer writes it last), oldest first."""
    complete = []
    for folder in checkpoints(output_dir):
        try:
            json.loads((folder / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        complete.append(folder)
    return complete


def resume_checkpoint(training_args: TrainingArguments) -> str | None:
    """The checkpoint to resume from (the newest complete one for ``true``); refuses to train over an output folder
    that already holds checkpoints."""
    requested = training_args.resume_from_checkpoint
    output_dir = Path(training_args.output_dir)
    started = checkpoints(output_dir)
    if requested in (None, "", "false", "False"):
        if started:
            raise SystemExit(
                f"altclip-train: {output_dir} already holds {started[-1].name}. Pass --resume_from_checkpoint true to "
                "continue that run, or choose another --output_dir."
            )
        return None
    if requested in ("true", "True"):
        complete = complete_checkpoints(output_dir)
        if not complete:
            raise SystemExit(
                f"altclip-train: --resume_from_checkpoint true, but {output_dir} holds no complete checkpoint."
            )
        newer = [path.name for path in started if checkpoint_step(path) > checkpoint_step(complete[-1])]
        if newer:
            logger.warning(
                "Resuming from %s: %s has no trainer_state.json (its write was interrupted) and is passed over.",
                complete[-1].name,
                ", ".join(newer),
            )
        return str(complete[-1])
    if not (Path(requested) / "trainer_state.json").is_file():
        raise SystemExit(
            f"altclip-train: checkpoint {requested} does not exist or is incomplete (no trainer_state.json)."
        )
    return requested


def finish(
    trainer, model, processor, training_args: TrainingArguments, stage: str, extra: dict, adapter=None, merge=False
) -> None:
    """Saves the complete model (or, with LoRA, the `adapter` and with `merge` also the merged model) with its
    processor, a loss-curve PNG and a summary; all ranks sum their skips."""
    skipped = trainer.accelerator.reduce(torch.tensor(float(trainer.skipped.total), device=training_args.device), "sum")
    output_dir = Path(training_args.output_dir)
    if adapter is not None:
        if not save_adapter(trainer, adapter, processor, output_dir, merge):
            return
    elif not save_complete_model(trainer, model, processor, output_dir):
        return
    save_loss_curve(trainer.state.log_history, output_dir / LOSS_CURVE_FILE, title=f"AltCLIP {stage} stage")
    before_after = extra.get("before_after")
    if before_after and before_after["after"]:
        title = f"AltCLIP {stage} stage: before and after fine-tuning"
        save_before_after_chart(before_after["before"], before_after["after"], output_dir / BEFORE_AFTER_CHART, title)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    save_summary(
        {
            "stage": stage,
            "global_step": trainer.state.global_step,
            "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None,
            "skipped_records": int(skipped.item()),
            "skipped_by_reason_on_rank0": dict(trainer.skipped.by_reason),
            **extra,
        },
        output_dir / SUMMARY_FILE,
    )
    logger.info("Saved the %s-stage model, %s and %s to %s", stage, LOSS_CURVE_FILE, SUMMARY_FILE, output_dir)


def trainer_data_options(
    data_args,
    train_sources: list[Source],
    training_args: TrainingArguments,
    run=None,
    stage: str | None = None,
    train_dataset=None,
) -> dict:
    language = None
    if train_dataset is not None and not train_sources[0].is_shards:  # --language_sampling_alpha, --language_column
        train_sources, language = balance_tables(train_sources, train_dataset, data_args)
    tables = table_sizes(train_sources, train_dataset) if train_dataset is not None else None
    if training_args.resume_from_checkpoint:
        check_resumed_tables(training_args.resume_from_checkpoint, tables)
    callbacks = [data_plan_callback(data_args, training_args, tables)]
    if run is not None:  # the run's plan, logged and written to OUTPUT_DIR/plan.json when training begins
        callbacks.append(PlanCallback(run, stage, train_sources))
    return {
        "record_trained_keys": data_args.record_trained_keys,
        "train_weights": source_weights(train_sources),
        "language_plan": language,
        "shuffle_train": shuffles(training_args),
        "callbacks": callbacks,
    }


def run_teacher_learning(run: RunArguments, train_sources, validation_sources) -> None:
    model_args, data_args, stage_args, training_args = run.model, run.data, run.stage, run.training
    with outside_zero3_init(training_args):  # the engine trains (and partitions) the text tower only
        model, processor = load_or_build_model(model_args)
        check_tokenizer_fits(model, processor, model_args)
        teacher, teacher_tokenizer = load_teacher_for(model, model_args, stage_args.teacher_dtype)
    adapter = apply_lora(model, run.tuning, model_args.model_name_or_path) if lora_enabled(run.tuning) else None
    student = model.text_model  # with LoRA, its linear layers now carry the adapters (the rest frozen)
    if not stage_args.student_dropout:
        disable_dropout(student)
    columns = dict(
        english_column=data_args.english_column,
        translation_column=data_args.translation_column,
        include_english_pairs=stage_args.include_english_pairs,
        cache_dir=data_args.data_cache_dir,
        build_processes=data_args.table_build_processes,
    )
    tables = [*train_sources, *(validation_sources or [])]
    with built_first(training_args, tables, data_args.table_build_processes, "parallel text tables"):
        train_dataset = ParallelText(train_sources, **columns)
        eval_dataset = ParallelText(validation_sources, **columns) if validation_sources else None
    features = None
    if stage_args.precompute_teacher_features:
        if eval_dataset is not None:
            raise SystemExit(
                "altclip-train: --precompute_teacher_features covers the training data only; drop --validation_files."
            )
        features = precomputed_teacher_features(
            teacher,
            teacher_tokenizer,
            train_dataset.english_texts,
            stage_args.teacher_cache_dir or str(Path(training_args.output_dir) / "teacher_cache"),
            train_dataset.corpus_digest,
            rank=training_args.process_index,
            world_size=training_args.world_size,
            device=training_args.device,
            shard_rows=stage_args.teacher_cache_shard_rows,
            wait_seconds=training_args.ddp_timeout,  # a rank this late would time a collective out as well
        )
    trainer = TeacherLearningTrainer(
        model=student,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=DistillationCollator(processor.tokenizer, teacher_tokenizer, data_args.max_text_length, features),
        teacher=None if features is not None else teacher,
        loss_kind=stage_args.distillation_loss,
        **trainer_data_options(data_args, train_sources, training_args, run, STAGE_OF[type(stage_args)], train_dataset),
    )
    ZeroShotMonitor.attach(trainer, run.zeroshot, model, processor)
    check_room(training_args.output_dir, trainer.model, model, training_args, train_dataset)
    scoring = BeforeAfter.start(trainer, run.tuning, run.zeroshot, student, model, processor)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    # The student trained in place inside `model`: saving `model` assembles the full AltCLIP checkpoint.
    extra = {"distillation_loss": stage_args.distillation_loss, "teacher": model_args.clip_model_name_or_path}
    extra.update(fine_tuning_summary(run.tuning, student, scoring.finish()))
    finish(trainer, model, processor, training_args, "teacher", extra, adapter, run.tuning.merge_adapter)


def image_text_data(sources: list[Source], image_processor, data_args, training_args, shuffle: bool = True):
    """A `ShardStream` of webdataset shards or an `ImageTextTable` of tables, for this rank."""
    if sources[0].is_shards:
        sized = sized_shards(sources, data_args)
        return ShardStream(
            sources,
            functools.partial(
                decode_shard_sample, decode=PairDecoder(image_processor, data_args.reduced_jpeg_decoding)
            ),
            batch_size=training_args.per_device_train_batch_size,
            rank=training_args.process_index,
            world_size=training_args.world_size,
            num_workers=training_args.dataloader_num_workers,
            seed=data_seed(training_args),
            shuffle_buffer=data_args.shuffle_buffer,
            shuffle=shuffle and shuffles(training_args),
            sizes=sized.sizes,
            **reading_mode(data_args),
        )
    with built_first(training_args, sources, data_args.table_build_processes, "image-caption tables"):
        return ImageTextTable(
            sources,
            image_processor,
            image_column=data_args.image_column,
            caption_column=data_args.caption_column,
            image_root=data_args.image_root,
            cache_dir=data_args.data_cache_dir,
            reduced_jpeg_decoding=data_args.reduced_jpeg_decoding,
            build_processes=data_args.table_build_processes,
        )


def run_contrastive(run: RunArguments, train_sources, validation_sources) -> None:
    model_args, data_args, stage_args, training_args = run.model, run.data, run.stage, run.training
    model, processor = load_or_build_model(model_args, training_args)
    check_tokenizer_fits(model, processor, model_args)
    if not stage_args.unfreeze_vision:
        freeze_image_tower(model)
    objective = objective_for(stage_args, model, lora=lora_enabled(run.tuning))  # SigLIP's bias joins the model
    adapter = apply_lora(model, run.tuning, model_args.model_name_or_path) if lora_enabled(run.tuning) else None
    trained = adapter if adapter is not None else model
    image_processor = processor.image_processor
    train_dataset = image_text_data(train_sources, image_processor, data_args, training_args)
    image_cache = None
    if stage_args.cache_image_features:
        image_cache = image_feature_cache(model, image_processor, train_dataset, stage_args, data_args, training_args)
        train_dataset.image_cache = image_cache
    eval_dataset = (
        image_text_data(validation_sources, image_processor, data_args, training_args, shuffle=False)
        if validation_sources
        else None
    )
    trainer = ContrastiveTrainer(
        model=trained,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=ContrastiveCollator(
            processor.tokenizer, data_args.max_text_length, image_shape_of(image_processor)
        ),
        max_logit_scale=stage_args.max_logit_scale,
        gather_with_grad=stage_args.gather_with_grad,
        full_batch_negatives=stage_args.full_batch_negatives,
        image_cache=image_cache,
        objective=objective,
        **trainer_data_options(data_args, train_sources, training_args, run, STAGE_OF[type(stage_args)], train_dataset),
    )
    if image_cache is not None:
        trainer.add_callback(ImageCacheCallback(image_cache))
    ZeroShotMonitor.attach(trainer, run.zeroshot, model, processor)
    check_room(training_args.output_dir, trainer.model, model, training_args, train_dataset)
    scoring = BeforeAfter.start(trainer, run.tuning, run.zeroshot, trained, model, processor)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    extra = {"image_tower_frozen": not stage_args.unfreeze_vision, "loss": stage_args.loss}
    extra["matryoshka_dims"] = model.config.matryoshka_dims
    extra.update(fine_tuning_summary(run.tuning, trained, scoring.finish()))
    saved = model if adapter is not None else trainer.accelerator.unwrap_model(trainer.model)
    finish(trainer, saved, processor, training_args, "contrastive", extra, adapter, run.tuning.merge_adapter)


def fine_tuning_summary(args: FineTuningArguments, trained: torch.nn.Module, scores: dict) -> dict:
    """The summary's fine-tuning fields: parameters trained, the LoRA settings, WiSE-FT and before/after scores."""
    trainable, total = count_parameters(trained)
    summary = {"trainable_parameters": trainable, "parameters": total}
    if lora_enabled(args):
        summary["lora"] = {
            "r": args.lora_r,
            "alpha": args.lora_alpha,
            "dropout": args.lora_dropout,
            "targets": args.lora_targets,
            "layers": args.lora_layers,
        }
    return {**summary, **scores}


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "toy-setup":
        from .toy_setup import write_toy_setup

        for name, path in write_toy_setup(argv[1] if len(argv) > 1 else "outputs/toy").items():
            print(f"{name}: {path}")
        return
    if argv and argv[0] == "plan":
        from .plan_command import plan_main

        run_with_one_line_errors("altclip-train", lambda: plan_main(argv[1:]), wants_traceback(argv))
        return
    if not argv or argv[0] not in STAGES:
        print(USAGE, file=sys.stderr)
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    parsed: dict[str, RunArguments] = {}

    def environment_error(error: BaseException) -> str | None:
        """A full disk, or a file or download that failed (OSError), in one line; anything else is a bug."""
        if is_disk_full(error):
            return disk_full_message(parsed["run"].training.output_dir if parsed else ".")
        if isinstance(error, OSError):
            return f"altclip-train: {str(error).strip().splitlines()[0]}"
        return None

    run_with_one_line_errors(
        "altclip-train", lambda: train(argv[0], argv[1:], parsed), wants_traceback(argv), environment_error
    )


def train(stage: str, argv: list[str], parsed: dict | None = None) -> None:
    """Parse and check everything, then run the stage; the parsed arguments are left in `parsed["run"]` for the
    error messages of `main`."""
    run = parse(stage, argv)
    if parsed is not None:
        parsed["run"] = run
    setup_logging(run.training)
    train_sources, validation_sources = read_sources(run.data, stage)
    check_stage_flags(stage, run.stage, run.training, train_sources)
    check_balancing_flags(run.data, train_sources)
    check_shard_plan(run, train_sources)  # shard sizes resolved and the reading plan checked before models load
    if train_sources[0].is_shards and run.data.language_sampling_alpha is not None:
        sizes = sized_shards(train_sources, run.data).sizes
        train_sources = balance_shards(train_sources, sizes, run.data.language_sampling_alpha)
    check_zeroshot_arguments(run.zeroshot)
    check_lora_arguments(run.tuning, stage, run.stage, run.training, run.model)
    check_fine_tuning_arguments(run.tuning, run.zeroshot, validation_sources is not None, run.training)
    checkpoint = resume_checkpoint(run.training)  # refuse an occupied output folder before loading anything
    if checkpoint is not None:
        check_resumed_plan(checkpoint, run.data, run.training)
    inputs = [run.model.model_name_or_path, run.model.clip_model_name_or_path, run.model.text_encoder_name_or_path]
    check_output_folder(run.training.output_dir, inputs, run.output.overwrite_output_dir)
    check_model_arguments(run.model, needs_teacher=stage == "teacher")
    check_model_paths(run.model)
    run.training.resume_from_checkpoint = checkpoint
    init_deepspeed_communication(run.training)
    transformers.set_seed(run.training.seed)  # the fresh `transformation` layer is drawn before the Trainer exists
    runner = run_teacher_learning if stage == "teacher" else run_contrastive
    try:
        runner(run, train_sources, validation_sources)
    except DataFormatError as error:  # found only once the data is built (e.g. a table without one usable pair)
        raise SystemExit(f"altclip-train: {error}") from None


def check_model_paths(model_args: ModelArguments) -> None:
    """A model that is neither a local folder nor to be had from the Hub (a mistyped path or name, offline) is named
    at once, not after Hub retries as "couldn't connect to huggingface.co"."""
    for flag in (
        "model_name_or_path",
        "clip_model_name_or_path",
        "text_encoder_name_or_path",
        "tokenizer_name_or_path",
        "teacher_tokenizer_name_or_path",
    ):
        problem = unavailable_model(getattr(model_args, flag))
        if problem:
            raise SystemExit(f"altclip-train: --{flag} {problem}")


if __name__ == "__main__":
    main()
