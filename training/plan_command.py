"""``altclip-train plan``: the plan of a run (`run_plan`) without training, for any world size.

Reads what the run would read before its first step (the config, the sources and their sizes, table row counts,
the model configs on the meta device) and loads no weights. A plan that breaks an invariant ends in one line naming
the fix (exit status 2) after the report.
"""

import dataclasses
import json
from collections.abc import Sequence

from altclip.common.config_files import expand_config
from altclip.common.errors import UsageError
from altclip.common.number_checks import COUNT, check_number

# Stage-1 flags outside its own argument class (`TeacherLearningArguments`, whose fields are read from it).
STAGE1_MODEL_AND_DATA = ("--teacher_tokenizer_name_or_path", "--english_column", "--translation_column")
# A new model (no --model_name_or_path) built from a CLIP and a text encoder starts with stage 1.
NEW_MODEL = ("--clip_model_name_or_path", "--text_encoder_name_or_path")


def take_flag(argv: list[str], flag: str) -> str | None:
    """Removes ``flag VALUE`` from `argv` and returns VALUE (None where absent)."""
    if flag not in argv:
        return None
    index = argv.index(flag)
    if index + 1 >= len(argv):
        raise UsageError(f"altclip-train plan: {flag} needs a value.")
    value = argv[index + 1]
    del argv[index : index + 2]
    return value


def whole_number(flag: str, value: str) -> int:
    """A count of nodes or processes: a whole number, at least 1 (`UsageError` naming the flag otherwise)."""
    try:
        number = int(value)
    except ValueError:
        raise UsageError(
            f"altclip-train plan: {flag} {value!r} is not a whole number; give the count of processes or nodes, e.g. 8."
        ) from None
    check_number(f"altclip-train plan: {flag}", number, COUNT)
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
    """teacher when the flags (config included) name a stage-1 option or start a new model from a CLIP and a text
    encoder, else contrastive."""
    from .arguments import TeacherLearningArguments

    flags = expand_config(list(argv))
    # a flag of stage 1 alone names it whatever else is given (it may start from a trained AltCLIP: add-language)
    stage1_only = [f"--{field.name}" for field in dataclasses.fields(TeacherLearningArguments)]
    if any(flag in flags for flag in (*stage1_only, *STAGE1_MODEL_AND_DATA)):
        return "teacher"
    if "--model_name_or_path" not in flags and any(flag in flags for flag in NEW_MODEL):
        return "teacher"
    return "contrastive"


def plan_main(argv: Sequence[str]) -> None:
    from .arguments import STAGES, parse
    from .data.epoch_plan import GlobalBatchSampler, data_seed, shuffles
    from .data.language_balance import balance_tables
    from .run_data import get_data, shard_stream, table_dataset
    from .run_plan import format_report, plan_problems, run_report

    argv = expand_config(list(argv))
    stage = take_flag(argv, "--stage") or infer_stage(argv)
    if stage not in STAGES:
        raise UsageError(f"altclip-train plan: --stage {stage}: choose teacher or contrastive.")
    world = world_of(take_flag(argv, "--world_size"), take_flag(argv, "--nnodes"), take_flag(argv, "--nproc_per_node"))
    as_json = take_flag(argv, "--format") == "json"
    deepspeed = take_flag(argv, "--deepspeed")  # read here, not by TrainingArguments (which needs the package)
    run = parse(stage, argv)
    run.training.deepspeed = deepspeed
    nodes = world[1] if world else 1
    world = world[0] if world else run.training.world_size
    data = get_data(run, stage)  # the same sources, checks and shard sizes as the run's
    if data.is_shards:
        plan = shard_stream(data, run, world_size=world)
    else:
        dataset = table_dataset(data, run, data.train_sources)  # built once into the Arrow cache the run reuses
        data.train_sources, languages = balance_tables(data.train_sources, dataset, run.data)
        plan = GlobalBatchSampler(
            dataset.sizes,
            run.training.per_device_train_batch_size,
            language_plan=languages,
            weights=[source.weight for source in data.train_sources]
            if data.train_sources[0].weight is not None
            else None,
            extra=len(dataset) - sum(dataset.sizes),
            seed=data_seed(run.training),
            shuffle=shuffles(run.training),
            world_size=world,
        )
    report = run_report(run, data, plan, world)
    report["nodes"] = nodes
    print(json.dumps(report, indent=2) if as_json else format_report(report))
    problems = plan_problems(report["data"], run.training)
    if problems:
        raise UsageError(f"altclip-train plan: {problems[0]}")
