"""The two stages of ``altclip-train`` on the Hugging Face Trainer, reading top to bottom as the story of a run:
checks before any model loads, the run's data (`run_data.get_data`), models, the Trainer, training, the save."""

import json
import logging
import sys
from pathlib import Path

import torch
import transformers
from transformers import TrainingArguments

from altclip.common.errors import PathError, UsageError
from altclip.common.model_paths import unavailable_model

from .arguments import FineTuningArguments, ModelArguments, RunArguments, parse
from .data.data_plan import check_resumed_plan, check_resumed_tables, data_plan_callback, table_sizes
from .data.epoch_plan import shuffles
from .data.image_text_data import ContrastiveCollator, image_shape_of
from .data.language_balance import balance_tables
from .data.sources import source_weights
from .data.text_data import DistillationCollator
from .finetune.before_after import BEFORE_AFTER_CHART, BeforeAfter, check_fine_tuning_arguments, save_before_after_chart
from .finetune.lora import (
    apply_lora_for_data,
    check_lora_arguments,
    count_parameters,
    lora_enabled,
    save_adapter,
    trained_token_count,
)
from .loop.contrastive_objective import objective_for
from .loop.distributed_backends import check_fsdp_applies, gathered, init_deepspeed_communication, outside_zero3_init
from .loop.feature_caches import ImageCacheCallback, ImageEmbeddingCache, fingerprint, module_digest
from .loop.model_setup import (
    check_model_arguments,
    check_tokenizer_fits,
    disable_dropout,
    freeze_image_tower,
    load_or_build_model,
    load_teacher_for,
)
from .loop.objective_record import check_resumed_anchor_start, check_resumed_objective, objective_record_callback
from .loop.output_folder import check_output_folder, check_room
from .loop.preemption import (
    PreemptionCallback,
    PreemptionSignals,
    TrainingPreempted,
    check_no_second_handler,
    parse_signals,
)
from .loop.reporting import LOSS_CURVE_FILE, SUMMARY_FILE, save_loss_curve, save_summary
from .loop.saving import save_complete_model
from .loop.teacher import precomputed_teacher_features, teacher_max_length
from .loop.text_anchors import TextAnchors, start_digest
from .loop.trainers import ContrastiveTrainer, TeacherLearningTrainer
from .loop.zeroshot_monitor import ZeroShotMonitor, check_zeroshot_arguments
from .run_data import RunData, check_shard_plan, get_data, train_dataset, validation_dataset
from .run_plan import PlanCallback
from .startup_checks import check_evaluation_data

logger = logging.getLogger("training")


def train(stage: str, argv: list[str], parsed: dict | None = None) -> None:
    """Parse, set up logging, run the stage; the parsed arguments are left in `parsed["run"]` for the error messages
    of `main`."""
    run = parse(stage, argv)
    if parsed is not None:
        parsed["run"] = run
    setup_logging(run.training)
    signals = parse_signals(run.output.preemption_signals)
    check_no_second_handler(signals, run.training)
    run.preemption = PreemptionSignals(signals)
    try:
        run_stage(run, stage)
    finally:
        run.preemption.restore()


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


def run_stage(run: RunArguments, stage: str) -> None:
    """Checks everything that can be checked before a model loads, then runs `stage` on the run's data."""
    data = get_data(run, stage)
    check_shard_plan(data, run)  # the reading plan of this world size checked before models load
    check_zeroshot_arguments(run.zeroshot)
    check_lora_arguments(run.tuning, stage, run.stage, run.training, run.model, run.flags_given)
    check_fine_tuning_arguments(run.tuning, run.zeroshot, data.validation_sources is not None, run.training)
    check_fsdp_applies(run.training)  # never a silent fallback to DDP
    check_evaluation_data(run.training, data.validation_sources is not None)
    checkpoint = resume_checkpoint(run.training)  # refuse an occupied output folder before loading anything
    if checkpoint is not None:
        check_resumed_plan(checkpoint, run.data, run.training)
        check_resumed_objective(checkpoint, run.stage, stage, data.anchors)
    inputs = [run.model.model_name_or_path, run.model.clip_model_name_or_path, run.model.text_encoder_name_or_path]
    check_output_folder(run.training.output_dir, inputs, run.output.overwrite_output_dir)
    check_model_arguments(run.model, needs_teacher=stage == "teacher" and run.stage.teacher == "clip")
    if stage == "teacher" and run.stage.teacher == "self":
        check_self_teacher_flags(run.model)
    check_model_paths(run.model)
    run.training.resume_from_checkpoint = checkpoint
    init_deepspeed_communication(run.training)
    transformers.set_seed(run.training.seed)  # the fresh `transformation` layer is drawn before the Trainer exists
    # a DataFormatError found only once the data is built (a table without one usable pair) is one line as well
    (run_teacher_learning if stage == "teacher" else run_contrastive)(run, data)


def check_self_teacher_flags(model_args) -> None:
    """``--teacher self`` needs a trained AltCLIP and no CLIP: a CLIP flag would be ignored without a word (or
    refused for a path the run never reads)."""
    if not model_args.model_name_or_path:
        raise UsageError(
            "altclip-train: --teacher self distils a trained AltCLIP toward its own English features; give it as "
            "--model_name_or_path (or use --teacher clip to start a new model)."
        )
    for flag in ("clip_model_name_or_path", "teacher_tokenizer_name_or_path"):
        if getattr(model_args, flag):
            raise UsageError(
                f"altclip-train: --{flag} is not used with --teacher self (the model's own text tower and tokenizer "
                f"are the teacher); drop it, or give --teacher clip to distil toward that CLIP."
            )


def run_teacher_learning(run: RunArguments, data: RunData) -> None:
    """Stage 1: the student text tower learns a frozen teacher's features (CLIP's text tower, or a copy of its own)
    from parallel text."""
    model_args, data_args, stage_args, training_args = run.model, run.data, run.stage, run.training
    with outside_zero3_init(training_args):  # the engine trains (and partitions) the text tower only
        model, processor = load_or_build_model(model_args)
        check_tokenizer_fits(model, processor, model_args)
        teacher, teacher_tokenizer = load_teacher_for(
            model, model_args, stage_args.teacher_dtype, stage_args.teacher, processor.tokenizer
        )
    train_data = train_dataset(data, run)
    eval_dataset = validation_dataset(data, run)
    adapter = None
    if lora_enabled(run.tuning):  # the student reads the translations and (English pairs) the English sentences
        texts = (data_args.translation_column, data_args.english_column)[: 2 if stage_args.include_english_pairs else 1]
        adapter = apply_lora_for_data(
            model, run.tuning, model_args.model_name_or_path, train_data, texts, processor.tokenizer, training_args
        )
    student = model.text_model  # with LoRA, its linear layers now carry the adapters (the rest frozen)
    if not stage_args.student_dropout:
        disable_dropout(student)
    # the model's own tower reads as many tokens as the student; CLIP's reads its 77 positions
    own = stage_args.teacher == "self"
    teacher_length = data_args.max_text_length if own else teacher_max_length(teacher_tokenizer)
    features = None
    if stage_args.precompute_teacher_features:
        if eval_dataset is not None:
            raise UsageError(
                "altclip-train: --precompute_teacher_features covers the training data only; drop --validation_files."
            )
        features = precomputed_teacher_features(
            teacher,
            teacher_tokenizer,
            train_data.english_texts,
            stage_args.teacher_cache_dir or str(Path(training_args.output_dir) / "teacher_cache"),
            train_data.corpus_digest,
            rank=training_args.process_index,
            world_size=training_args.world_size,
            device=training_args.device,
            shard_rows=stage_args.teacher_cache_shard_rows,
            wait_seconds=training_args.ddp_timeout,  # a rank this late would time a collective out as well
            max_length=teacher_length,
        )
        teacher = None  # its features are computed: free its weights (on the device) for the training
    trainer = TeacherLearningTrainer(
        model=student,
        args=training_args,
        train_dataset=train_data,
        eval_dataset=eval_dataset,
        data_collator=DistillationCollator(
            processor.tokenizer, teacher_tokenizer, data_args.max_text_length, features, teacher_length
        ),
        teacher=teacher,
        loss_kind=stage_args.distillation_loss,
        **trainer_data_options(run, data, train_data),
    )
    trainer.add_callback(objective_record_callback(stage_args, "teacher"))
    ZeroShotMonitor.attach(trainer, run.zeroshot, model, processor)
    check_room(training_args.output_dir, trainer.model, model, training_args, train_data)
    scoring = BeforeAfter.start(trainer, run.tuning, run.zeroshot, student, model, processor)
    train_until_done_or_preempted(trainer, run)
    # The student trained in place inside `model`: saving `model` assembles the full AltCLIP checkpoint.
    teacher_name = model_args.clip_model_name_or_path if stage_args.teacher == "clip" else "self"
    extra = {"distillation_loss": stage_args.distillation_loss, "teacher": teacher_name}
    extra.update(fine_tuning_summary(run.tuning, student, scoring.finish(), adapter))
    finish(trainer, model, processor, training_args, "teacher", extra, adapter, run.tuning.merge_adapter)


def run_contrastive(run: RunArguments, data: RunData) -> None:
    """Stage 2: symmetric InfoNCE on image-caption pairs, the image tower frozen by default."""
    model_args, data_args, stage_args, training_args = run.model, run.data, run.stage, run.training
    model, processor = load_or_build_model(model_args, training_args)
    check_tokenizer_fits(model, processor, model_args)
    if not stage_args.unfreeze_vision:
        freeze_image_tower(model)
    objective = objective_for(stage_args, model, lora=lora_enabled(run.tuning))  # SigLIP's bias joins the model
    anchors, start = None, None
    if data.anchors is not None:  # the starting model's embeddings of them, before any adapter or step changes it
        start = start_digest(model)
        if training_args.resume_from_checkpoint:  # before the embedding work: a changed start is refused at once
            check_resumed_anchor_start(training_args.resume_from_checkpoint, start)
        anchors = TextAnchors.for_rank(
            model, processor.tokenizer, data.anchors, data_args.max_text_length, stage_args.anchor_weight,
            stage_args.anchor_batch_size or training_args.per_device_train_batch_size, training_args.seed,
            training_args.process_index, training_args.device,
        )  # fmt: skip
    image_processor = processor.image_processor
    train_data = train_dataset(data, run, image_processor)
    adapter = None
    if lora_enabled(run.tuning):
        adapter = apply_lora_for_data(
            model, run.tuning, model_args.model_name_or_path, train_data, (data_args.caption_column,),
            processor.tokenizer, training_args,
        )  # fmt: skip
    trained = adapter if adapter is not None else model
    image_cache = None
    if stage_args.cache_image_features:
        image_cache = image_feature_cache(model, image_processor, train_data, stage_args, data_args, training_args)
        train_data.image_cache = image_cache
    eval_dataset = validation_dataset(data, run, image_processor)
    trainer = ContrastiveTrainer(
        model=trained,
        args=training_args,
        train_dataset=train_data,
        eval_dataset=eval_dataset,
        data_collator=ContrastiveCollator(
            processor.tokenizer, data_args.max_text_length, image_shape_of(image_processor)
        ),
        max_logit_scale=stage_args.max_logit_scale,
        gather_with_grad=stage_args.gather_with_grad,
        full_batch_negatives=stage_args.full_batch_negatives,
        image_cache=image_cache,
        objective=objective,
        anchors=anchors,
        **trainer_data_options(run, data, train_data),
    )
    if image_cache is not None:
        trainer.add_callback(ImageCacheCallback(image_cache))
    trainer.add_callback(objective_record_callback(stage_args, "contrastive", data.anchors, start))
    ZeroShotMonitor.attach(trainer, run.zeroshot, model, processor)
    check_room(training_args.output_dir, trainer.model, model, training_args, train_data)
    scoring = BeforeAfter.start(trainer, run.tuning, run.zeroshot, trained, model, processor)
    train_until_done_or_preempted(trainer, run)
    extra = {"image_tower_frozen": not stage_args.unfreeze_vision, "loss": stage_args.loss}
    if anchors is not None:
        extra["anchors"] = {"texts": data.anchors.count, "weight": stage_args.anchor_weight}
    extra["matryoshka_dims"] = model.config.matryoshka_dims
    extra.update(fine_tuning_summary(run.tuning, trained, scoring.finish()))
    saved = model if adapter is not None else trainer.accelerator.unwrap_model(trainer.model)
    finish(trainer, saved, processor, training_args, "contrastive", extra, adapter, run.tuning.merge_adapter)


def train_until_done_or_preempted(trainer, run: RunArguments) -> None:
    """``trainer.train()``; a preemption signal stops it after a step with that step's checkpoint written, and
    raises `TrainingPreempted` instead of saving the final model."""
    preemption = PreemptionCallback(run.preemption) if run.preemption is not None else None
    if preemption is not None:
        trainer.add_callback(preemption)
    trainer.train(resume_from_checkpoint=run.training.resume_from_checkpoint)
    if preemption is not None and preemption.stopped_by is not None:
        checkpoint = Path(run.training.output_dir) / f"checkpoint-{preemption.step}"
        raise TrainingPreempted(preemption.stopped_by.name, preemption.step, str(checkpoint))


def trainer_data_options(run: RunArguments, data: RunData, train_dataset) -> dict:
    """The Trainer keywords of the run's data: source weights, shuffling, the data-plan and run-plan callbacks."""
    training_args = run.training
    language = None
    if not data.is_shards:  # --language_sampling_alpha, --language_column: weights from the rows, languages in them
        data.train_sources, language = balance_tables(data.train_sources, train_dataset, run.data)
    tables = table_sizes(data.train_sources, train_dataset)
    if training_args.resume_from_checkpoint:
        check_resumed_tables(training_args.resume_from_checkpoint, tables)
    callbacks = [
        data_plan_callback(run.data, training_args, tables),
        PlanCallback(run, data),  # the run's plan, logged and written to OUTPUT_DIR/plan.json when training begins
    ]
    return {
        "record_trained_keys": run.data.record_trained_keys,
        "train_weights": source_weights(data.train_sources),
        "language_plan": language,
        "shuffle_train": shuffles(training_args),
        "callbacks": callbacks,
    }


def fine_tuning_summary(
    args: FineTuningArguments, trained: torch.nn.Module, scores: dict, adapter: torch.nn.Module | None = None
) -> dict:
    """The summary's fine-tuning fields: parameters trained, the LoRA settings (the token count from the `adapter`,
    which in stage 1 wraps the model whose text tower `trained` is), WiSE-FT and before/after scores."""
    trainable, total = count_parameters(trained)
    adapter = adapter if adapter is not None else trained
    summary = {"trainable_parameters": trainable, "parameters": total}
    if lora_enabled(args):
        summary["lora"] = {
            "r": args.lora_r,
            "alpha": args.lora_alpha,
            "dropout": args.lora_dropout,
            "targets": args.lora_targets,
            "layers": args.lora_layers,
            "trainable_tokens": trained_token_count(adapter) if hasattr(adapter, "peft_config") else 0,
        }
    return {**summary, **scores}


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
            raise PathError(
                f"altclip-train: {output_dir} already holds {started[-1].name}. Pass --resume_from_checkpoint true to "
                "continue that run, or choose another --output_dir."
            )
        return None
    if requested in ("true", "True", "auto"):
        complete = complete_checkpoints(output_dir)
        if not complete and requested == "auto":  # a first start, or a restart before the first checkpoint
            if started:
                logger.warning(
                    "No complete checkpoint in %s (%s interrupted): starting from step 0", output_dir, started[-1].name
                )
            return None
        if not complete:
            raise PathError(
                f"altclip-train: --resume_from_checkpoint true, but {output_dir} holds no complete checkpoint."
            )
        newer = [path.name for path in started if checkpoint_step(path) > checkpoint_step(complete[-1])]
        if not newer:
            logger.info("Resuming from %s, the newest complete checkpoint in %s", complete[-1].name, output_dir)
        else:
            logger.warning(
                "Resuming from %s: %s has no trainer_state.json (its write was interrupted) and is passed over.",
                complete[-1].name,
                ", ".join(newer),
            )
        return str(complete[-1])
    if not (Path(requested) / "trainer_state.json").is_file():
        raise PathError(
            f"altclip-train: checkpoint {requested} does not exist or is incomplete (no trainer_state.json)."
        )
    return requested


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
            raise PathError(f"altclip-train: --{flag} {problem}")


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
