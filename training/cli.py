"""``altclip-train teacher|contrastive``: the two AltCLIP stages on the Hugging Face Trainer.

Flags are those of the argument dataclasses plus every `TrainingArguments` flag; ``--config FILE.yaml|json``
supplies them from a file (flags given after it win). Runs alike under ``python``, ``torchrun`` and
``accelerate launch``.
"""

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import transformers
from transformers import HfArgumentParser, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from .arguments import ContrastiveArguments, DataArguments, ModelArguments, TeacherLearningArguments
from .config_files import expand_config
from .image_text_data import ContrastiveCollator, ImageTextDataset, StreamingImageTextDataset
from .model_setup import disable_dropout, freeze_image_tower, load_or_build_model, load_teacher_for
from .reporting import LOSS_CURVE_FILE, SUMMARY_FILE, save_loss_curve, save_summary
from .teacher import cached_teacher_features
from .text_data import DistillationCollator, ParallelTextDataset, StreamingParallelText
from .trainers import ContrastiveTrainer, TeacherLearningTrainer

logger = logging.getLogger("training")

STAGES = {"teacher": TeacherLearningArguments, "contrastive": ContrastiveArguments}
USAGE = """usage: altclip-train {teacher,contrastive} [--config FILE] [--FLAG VALUE ...]
       altclip-train toy-setup [FOLDER]

  teacher      stage 1: the XLM-R text tower learns CLIP's text features from parallel text
  contrastive  stage 2: image-caption pairs, symmetric InfoNCE, image tower frozen by default
  toy-setup    write tiny random CLIP and XLM-R checkpoints and a multilingual shapes dataset
               (default folder outputs/toy) for a CPU run that needs no download

'altclip-train STAGE --help' lists every flag."""


def parse(stage: str, argv: Sequence[str]):
    parser = HfArgumentParser((ModelArguments, DataArguments, STAGES[stage], TrainingArguments))
    parser.prog = f"altclip-train {stage}"
    argv = expand_config(argv)
    if not torch.cuda.is_available() and not any(flag.startswith("--use_cpu") for flag in argv):
        # Without it, accelerate sees no device to distribute over and torchrun's processes each train alone.
        argv += ["--use_cpu", "true"]
    model_args, data_args, stage_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    training_args.remove_unused_columns = False  # the collators build exactly the inputs the stage needs
    training_args.dataloader_pin_memory = training_args.dataloader_pin_memory and torch.cuda.is_available()
    if data_args.streaming:
        training_args.accelerator_config.dispatch_batches = False  # each rank reads its own share of the stream
        if training_args.max_steps <= 0:
            raise SystemExit("altclip-train: --streaming true needs --max_steps (a stream has no length).")
    if not data_args.train_files:
        raise SystemExit("altclip-train: give --train_files.")
    return model_args, data_args, stage_args, training_args


def setup_logging(training_args: TrainingArguments) -> None:
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.WARNING,
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    level = training_args.get_process_log_level()
    transformers.utils.logging.set_verbosity(level)
    for name in ("training", "modeling_altclip"):
        logging.getLogger(name).setLevel(logging.INFO if training_args.should_log else level)


def resume_checkpoint(training_args: TrainingArguments) -> str | None:
    """The checkpoint to resume from; refuses to train over an output folder that already holds checkpoints."""
    requested = training_args.resume_from_checkpoint
    output_dir = Path(training_args.output_dir)
    last = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    if requested in (None, "", "false", "False"):
        if last is not None:
            raise SystemExit(
                f"altclip-train: {output_dir} already holds {Path(last).name}. Pass --resume_from_checkpoint true to "
                "continue that run, or choose another --output_dir."
            )
        return None
    if requested in ("true", "True"):
        if last is None:
            raise SystemExit(f"altclip-train: --resume_from_checkpoint true, but {output_dir} holds no checkpoint.")
        return last
    if not Path(requested).is_dir():
        raise SystemExit(f"altclip-train: checkpoint {requested} does not exist.")
    return requested


def finish(trainer, model, processor, training_args: TrainingArguments, stage: str, extra: dict) -> None:
    """Saves the complete model with its processor, a loss-curve PNG and a summary; all ranks sum their skips."""
    skipped = trainer.accelerator.reduce(torch.tensor(float(trainer.skipped.total), device=training_args.device), "sum")
    if not trainer.is_world_process_zero():
        return
    output_dir = Path(training_args.output_dir)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    save_loss_curve(trainer.state.log_history, output_dir / LOSS_CURVE_FILE, title=f"AltCLIP {stage} stage")
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


def run_teacher_learning(model_args, data_args, stage_args, training_args) -> None:
    model, processor = load_or_build_model(model_args)
    teacher, teacher_tokenizer = load_teacher_for(model, model_args, stage_args.teacher_dtype)
    student = model.text_model
    if not stage_args.student_dropout:
        disable_dropout(student)
    dataset_class = StreamingParallelText if data_args.streaming else ParallelTextDataset
    columns = dict(
        english_column=data_args.english_column,
        translation_column=data_args.translation_column,
        include_english_pairs=stage_args.include_english_pairs,
        seed=training_args.seed,
    )
    train_dataset = dataset_class(data_args.train_files, weights=data_args.train_file_weights, **columns)
    eval_dataset = dataset_class(data_args.validation_files, **columns) if data_args.validation_files else None
    features = None
    if stage_args.precompute_teacher_features:
        if data_args.streaming or eval_dataset is not None:
            raise SystemExit(
                "altclip-train: --precompute_teacher_features needs in-memory training data only "
                "(no --streaming, no --validation_files)."
            )
        cache_dir = stage_args.teacher_cache_dir or str(Path(training_args.output_dir) / "teacher_cache")
        with training_args.main_process_first(desc="teacher features"):
            features = cached_teacher_features(
                teacher, teacher_tokenizer, train_dataset.english_texts, cache_dir, device=training_args.device
            )
    trainer = TeacherLearningTrainer(
        model=student,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=DistillationCollator(processor.tokenizer, teacher_tokenizer, data_args.max_text_length, features),
        teacher=None if features is not None else teacher,
        loss_kind=stage_args.distillation_loss,
        skipped_while_reading=getattr(train_dataset, "skipped", None),
    )
    trainer.train(resume_from_checkpoint=resume_checkpoint(training_args))
    # The student trained in place inside `model`: saving `model` assembles the full AltCLIP checkpoint.
    finish(
        trainer,
        model,
        processor,
        training_args,
        "teacher",
        {"distillation_loss": stage_args.distillation_loss, "teacher": model_args.clip_model_name_or_path},
    )


def run_contrastive(model_args, data_args, stage_args, training_args) -> None:
    model, processor = load_or_build_model(model_args)
    if not stage_args.unfreeze_vision:
        freeze_image_tower(model)
    dataset_class = StreamingImageTextDataset if data_args.streaming else ImageTextDataset
    columns = dict(
        image_column=data_args.image_column,
        caption_column=data_args.caption_column,
        image_root=data_args.image_root,
        seed=training_args.seed,
    )
    image_processor = processor.image_processor
    train_dataset = dataset_class(
        data_args.train_files, image_processor, weights=data_args.train_file_weights, **columns
    )
    eval_dataset = (
        dataset_class(data_args.validation_files, image_processor, **columns) if data_args.validation_files else None
    )
    trainer = ContrastiveTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=ContrastiveCollator(processor.tokenizer, data_args.max_text_length),
        max_logit_scale=stage_args.max_logit_scale,
        gather_with_grad=stage_args.gather_with_grad,
        skipped_while_reading=getattr(train_dataset, "skipped", None),
    )
    trainer.train(resume_from_checkpoint=resume_checkpoint(training_args))
    finish(
        trainer,
        trainer.accelerator.unwrap_model(trainer.model),
        processor,
        training_args,
        "contrastive",
        {"image_tower_frozen": not stage_args.unfreeze_vision},
    )


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "toy-setup":
        from .toy_setup import write_toy_setup

        for name, path in write_toy_setup(argv[1] if len(argv) > 1 else "outputs/toy").items():
            print(f"{name}: {path}")
        return
    if not argv or argv[0] not in STAGES:
        print(USAGE, file=sys.stderr)
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    stage = argv[0]
    model_args, data_args, stage_args, training_args = parse(stage, argv[1:])
    setup_logging(training_args)
    resume_checkpoint(training_args)  # refuse an occupied output folder before loading anything
    transformers.set_seed(training_args.seed)  # the fresh `transformation` layer is drawn before the Trainer exists
    runner = run_teacher_learning if stage == "teacher" else run_contrastive
    runner(model_args, data_args, stage_args, training_args)


if __name__ == "__main__":
    main()
