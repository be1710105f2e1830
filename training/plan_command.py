"""``altclip-train plan``: the plan of a run (`run_plan`) without training, for any world size.

Reads what the run would read before its first step (the config, the sources and their sizes, table row counts,
the model configs on the meta device) and loads no weights. A plan that breaks an invariant ends in one line naming
the fix (exit status 2) after the report.
"""

import json
from collections.abc import Sequence

from altclip.common.config_files import expand_config

TEACHER_ONLY = (
    "--clip_model_name_or_path",
    "--text_encoder_name_or_path",
    "--distillation_loss",
    "--precompute_teacher_features",
    "--teacher_dtype",
    "--english_column",
    "--translation_column",
)


def take_flag(argv: list[str], flag: str) -> str | None:
    """Removes ``flag VALUE`` from `argv` and returns VALUE (None where absent)."""
    if flag not in argv:
        return None
    index = argv.index(flag)
    if index + 1 >= len(argv):
        raise SystemExit(f"altclip-train plan: {flag} needs a value.")
    value = argv[index + 1]
    del argv[index : index + 2]
    return value


def infer_stage(argv: Sequence[str]) -> str:
    """teacher when the flags (config included) start from a CLIP and a text encoder, else contrastive."""
    flags = expand_config(list(argv))
    if "--model_name_or_path" not in flags and any(flag in flags for flag in TEACHER_ONLY):
        return "teacher"
    return "contrastive"


def table_dataset(stage: str, sources, data_args, stage_args):
    """The run's table dataset (built once into the Arrow cache the run reuses); no image is decoded."""
    if stage == "teacher":
        from .data.text_data import ParallelText

        return ParallelText(
            sources,
            english_column=data_args.english_column,
            translation_column=data_args.translation_column,
            include_english_pairs=stage_args.include_english_pairs,
            cache_dir=data_args.data_cache_dir,
        )
    from .data.image_text_data import ImageTextTable

    return ImageTextTable(
        sources,
        None,
        image_column=data_args.image_column,
        caption_column=data_args.caption_column,
        cache_dir=data_args.data_cache_dir,
    )


def plan_main(argv: Sequence[str]) -> None:
    from altclip.common.records import DataFormatError

    from .cli import STAGES, check_stage_flags, parse, read_sources
    from .data.epoch_plan import GlobalBatchSampler, data_seed, shuffles
    from .data.language_balance import balance_shards, balance_tables, check_balancing_flags
    from .run_plan import format_report, plan_problems, run_report, shard_stream_for_plan, sized_shards

    argv = expand_config(list(argv))
    stage = take_flag(argv, "--stage") or infer_stage(argv)
    if stage not in STAGES:
        raise SystemExit(f"altclip-train plan: --stage {stage}: choose teacher or contrastive.")
    world = take_flag(argv, "--world_size")
    as_json = take_flag(argv, "--format") == "json"
    deepspeed = take_flag(argv, "--deepspeed")  # read here, not by TrainingArguments (which needs the package)
    run = parse(stage, argv)
    run.training.deepspeed = deepspeed
    world = int(world) if world else run.training.world_size
    if world < 1:
        raise SystemExit(f"altclip-train plan: --world_size must be at least 1, not {world}.")
    train_sources, _ = read_sources(run.data, stage)
    check_stage_flags(stage, run.stage, run.training, train_sources)
    check_balancing_flags(run.data, train_sources)
    if train_sources[0].is_shards:
        if run.data.language_sampling_alpha is not None:
            sizes = sized_shards(train_sources, run.data).sizes
            train_sources = balance_shards(train_sources, sizes, run.data.language_sampling_alpha)
        plan = shard_stream_for_plan(train_sources, run.data, run.training, world)
    else:
        try:
            dataset = table_dataset(stage, train_sources, run.data, run.stage)
        except DataFormatError as error:
            raise SystemExit(f"altclip-train: {error}") from None
        train_sources, languages = balance_tables(train_sources, dataset, run.data)
        plan = GlobalBatchSampler(
            dataset.sizes,
            run.training.per_device_train_batch_size,
            language_plan=languages,
            weights=[source.weight for source in train_sources] if train_sources[0].weight is not None else None,
            extra=len(dataset) - sum(dataset.sizes),
            seed=data_seed(run.training),
            shuffle=shuffles(run.training),
            world_size=world,
        )
    report = run_report(run, stage, train_sources, plan, world)
    print(json.dumps(report, indent=2) if as_json else format_report(report))
    problems = plan_problems(report["data"], run.training)
    if problems:
        raise SystemExit(f"altclip-train plan: {problems[0]}")
