"""``altclip-train plan``: the plan of a run (`run_plan`) without training, for any world size.

Reads what the run would read before its first step (the config, the sources and their sizes, table row counts,
the model configs on the meta device) and loads no weights. A plan that breaks an invariant ends in one line naming
the fix (exit status 2) after the report.
"""

import json
from collections.abc import Sequence

from altclip.common.config_files import expand_config
from altclip.common.errors import UsageError

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


def whole_number(flag: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise UsageError(f"altclip-train plan: {flag} must be a whole number of at least 1, not {value}.")
    return number


def world_of(world_size: str | None, nnodes: str | None, nproc_per_node: str | None) -> tuple[int, int] | None:
    """(processes, nodes) of the planned world: --nnodes N --nproc_per_node M (torchrun's names) or --world_size;
    None where neither is given (the launcher's own world is planned)."""
    if nnodes is None and nproc_per_node is None:
        return (whole_number("--world_size", world_size), 1) if world_size is not None else None
    nodes, per_node = whole_number("--nnodes", nnodes or "1"), whole_number("--nproc_per_node", nproc_per_node or "1")
    if world_size is not None and whole_number("--world_size", world_size) != nodes * per_node:
        raise UsageError(
            f"altclip-train plan: --world_size {world_size} is not --nnodes {nodes} x --nproc_per_node {per_node}; "
            "give one or the other."
        )
    return nodes * per_node, nodes


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
    from .run_plan import format_report, plan_problems, run_report, shard_stream_for_plan

    argv = expand_config(list(argv))
    stage = take_flag(argv, "--stage") or infer_stage(argv)
    if stage not in STAGES:
        raise SystemExit(f"altclip-train plan: --stage {stage}: choose teacher or contrastive.")
    world = world_of(take_flag(argv, "--world_size"), take_flag(argv, "--nnodes"), take_flag(argv, "--nproc_per_node"))
    as_json = take_flag(argv, "--format") == "json"
    deepspeed = take_flag(argv, "--deepspeed")  # read here, not by TrainingArguments (which needs the package)
    run = parse(stage, argv)
    run.training.deepspeed = deepspeed
    nodes = world[1] if world else 1
    world = world[0] if world else run.training.world_size
    train_sources, _ = read_sources(run.data, stage)
    check_stage_flags(stage, run.stage, run.training, train_sources)
    if train_sources[0].is_shards:
        plan = shard_stream_for_plan(train_sources, run.data, run.training, world)
    else:
        try:
            dataset = table_dataset(stage, train_sources, run.data, run.stage)
        except DataFormatError as error:
            raise SystemExit(f"altclip-train: {error}") from None
        plan = GlobalBatchSampler(
            dataset.sizes,
            run.training.per_device_train_batch_size,
            weights=[source.weight for source in train_sources] if train_sources[0].weight is not None else None,
            extra=len(dataset) - sum(dataset.sizes),
            seed=data_seed(run.training),
            shuffle=shuffles(run.training),
            world_size=world,
        )
    report = run_report(run, stage, train_sources, plan, world)
    report["nodes"] = nodes
    print(json.dumps(report, indent=2) if as_json else format_report(report))
    problems = plan_problems(report["data"], run.training)
    if problems:
        raise SystemExit(f"altclip-train plan: {problems[0]}")
