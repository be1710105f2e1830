"""The plan of a run before its first step: data (sources, samples, readers, steps, batch sizes, padding) and model
(parameters, memory per device under the backend, disk), printed by ``altclip-train plan`` and, at the start of every
run, logged and written to ``OUTPUT_DIR/plan.json``.

Memory is estimated from the model config on the meta device (no weights read), per device, in bytes:

- weights, gradients, optimizer states (AdamW: two fp32 states per trainable parameter) by backend: DDP keeps
  everything whole (weights fp32, bf16 autocast adds a 16-bit copy of the trained weights to the gradients' side);
  DeepSpeed ZeRO-2 keeps 16-bit weights whole and shards 16-bit gradients and the fp32 master + states over the
  world; ZeRO-3 shards all of them; FSDP2 shards fp32 weights, gradients and states.
- activations of the trained towers (Korthikanti et al. 2022, flash/SDPA attention: 34 x seq x batch x hidden bytes
  per 16-bit layer; with activation checkpointing 2 x seq x batch x hidden per layer plus one layer recomputed);
  frozen towers run without gradients and keep none (their transient forward peak, one layer's intermediate
  tensors, is not counted).

For DDP in fp32 and bf16 with every parameter trained on one device, weights + gradients + optimizer equal the
parts of accelerate's ``accelerate estimate-memory`` (``estimate_training_usage``: model 4P, gradients 4P or 6P,
optimizer 8P; tests/training/test_run_plan.py checks it). accelerate reports the largest of those parts as "Training
using Adam" and knows no frozen towers, sharding backends or activations; those figures are ours.
"""

import json
import logging
import math
import os
from pathlib import Path

import numpy as np
from transformers import TrainerCallback

from altclip.common.errors import InputDataError

from .data.epoch_plan import even_split
from .loop.distributed_backends import outside_zero3_init

logger = logging.getLogger("training.plan")  # under the "training" logger that altclip-train sets to INFO

PLAN_FILE = "plan.json"
GIB = 1024**3


# ----------------------------------------------------------------------------------------------------------- data
def shard_data_report(stream) -> dict:
    """The epoch plan of a `shard_stream.ShardStream` (its `shard_plan.ShardPlan`), over all readers."""
    from .data.shard_plan import RESAMPLED

    plan = stream.shard_plan
    quotas = plan.quotas()
    batches = plan.batches_per_reader
    per_reader = [even_split(int(quota), batches) for quota in (quotas.min(), quotas.max())]
    total, readers, shards = plan.samples_per_epoch, plan.readers, len(plan.shard_sizes)
    mean = total / (readers * batches)
    report = {
        "kind": "shards",
        "mode": plan.mode,
        "shards": shards,
        "readers": readers,
        "shards_per_reader": round(shards / readers, 2),
        "samples_per_epoch": total,
        "batches_per_rank_per_epoch": batches * stream.workers,
        "per_device_batch": {
            "asked": plan.batch_size,
            "min": min(min(sizes) for sizes in per_reader),
            "mean": round(mean, 2),
            "max": max(max(sizes) for sizes in per_reader),
        },
        "padding_share": round(1 - mean / plan.batch_size, 4),
    }
    if plan.mode != RESAMPLED:
        report["read_through"] = read_through(plan)
    return report


def read_through(plan) -> dict:
    """Epoch 0 of mode split: readers that start inside a shard, and the samples they read past (not decoded)."""
    pieces = plan.epoch_pieces(0)
    ends = np.cumsum(pieces.lengths)
    boundaries = np.cumsum(plan.quotas())[:-1]
    index = np.searchsorted(ends, boundaries, side="right")
    inside = index < len(pieces)
    index, boundaries = index[inside], boundaries[inside]
    begin = ends[index] - pieces.lengths[index]
    starts_inside = boundaries > begin
    offsets = pieces.start[index][starts_inside] + (boundaries - begin)[starts_inside]
    total = max(plan.samples_per_epoch, 1)
    return {
        "readers_starting_inside_a_shard": int(starts_inside.sum()),
        "share": round(float(offsets.sum()) / total, 4),
    }


def table_data_report(
    sizes: list[int], rows: int, weights, batch_size: int, world_size: int, workers: int, drawn: int | None = None
) -> dict:
    """The epoch plan of table rows (`epoch_plan.GlobalBatchSampler`): global batches cut into one slice per rank;
    `drawn` the sources' samples per epoch where a language plan sets them."""
    from .data.epoch_plan import drawn_per_source

    if drawn is None:
        drawn = sum(sizes) if weights is None else sum(drawn_per_source(sizes, weights))
    drawn += rows - sum(sizes)
    global_batch = batch_size * world_size
    steps = max(1, math.ceil(drawn / global_batch))
    last = drawn - (steps - 1) * global_batch
    last_slices = even_split(last, world_size)
    mean = drawn / (steps * world_size)
    return {
        "kind": "tables",
        "readers": world_size * max(workers, 1),
        "samples_per_epoch": drawn,
        "batches_per_rank_per_epoch": steps,
        "per_device_batch": {
            "asked": batch_size,
            "min": min(last_slices) if steps == 1 else min(min(last_slices), batch_size),
            "mean": round(mean, 2),
            "max": batch_size if steps > 1 else max(last_slices),
        },
        "padding_share": round(1 - mean / batch_size, 4),
    }


def sources_report(sources, sizes_by_source: list[int], origins: list[str] | None) -> list[dict]:
    """Every source resolved: spec, kind, files/shards, samples, where the sizes came from, weight, epoch share."""
    from .data.epoch_plan import drawn_per_source
    from .data.sources import source_weights

    weights = source_weights(sources)
    per_epoch = sizes_by_source if weights is None else drawn_per_source(sizes_by_source, weights)
    return [
        {
            "spec": source.spec,
            "kind": source.kind,
            "files": len(source.urls),
            "first": source.urls[0],
            "samples": samples,
            "sized_by": origins[index] if origins else "rows",
            "weight": source.weight,
            "samples_per_epoch": drawn,
        }
        for index, (source, samples, drawn) in enumerate(zip(sources, sizes_by_source, per_epoch))
    ]


def plan_problems(data: dict, training_args) -> list[str]:
    """Invariants a plan breaks, each one line naming the fix (an empty list: the plan holds)."""
    problems = []
    readers, total = data["readers"], data["samples_per_epoch"]
    if data["kind"] == "shards" and total < readers:
        workers = max(training_args.dataloader_num_workers, 1)
        problems.append(
            f"{total} samples per epoch for {readers} readers (processes x DataLoader workers): some readers would "
            f"train nothing; use fewer --dataloader_num_workers (now {workers}) or more data."
        )
    return problems


def data_notes(data: dict) -> list[str]:
    """What the plan says about itself: few shards per reader, and the modes that fit."""
    notes = []
    if data["kind"] == "shards" and data["shards_per_reader"] < 2:
        share = data.get("read_through", {}).get("share")
        if data["mode"] == "split":
            notes.append(
                f"{data['shards']} shards for {data['readers']} readers (fewer than two per reader): readers split "
                f"shards by sample range and read past {share:.0%} of an epoch's samples to reach theirs; "
                "--dataset_resampled reads whole shards drawn with replacement instead, or use fewer "
                "--dataloader_num_workers, or more, smaller shards."
            )
        else:
            notes.append(
                f"{data['shards']} shards for {data['readers']} readers: resampled (shards drawn with replacement; "
                "samples by weight, not each once per epoch)."
            )
    if data["padding_share"] > 0.05:
        notes.append(
            f"{data['padding_share']:.0%} of every batch is padding on average: the epoch holds "
            f"{data['samples_per_epoch']} samples for {data['readers']} readers x per-device batch "
            f"{data['per_device_batch']['asked']}; a smaller batch or fewer readers fill it."
        )
    return notes


# ---------------------------------------------------------------------------------------------------------- model
def backend_of(training_args) -> str:
    """ddp, zero2, zero3 or fsdp2, from the run's flags."""
    if training_args.deepspeed:
        config = training_args.deepspeed
        if isinstance(config, str):
            try:
                config = json.loads(Path(config).read_text())
            except (OSError, ValueError) as error:
                raise InputDataError(
                    f"altclip-train: --deepspeed {config}: not a readable JSON file ({error})."
                ) from None
        stage = int((config or {}).get("zero_optimization", {}).get("stage", 0))
        return {2: "zero2", 3: "zero3"}.get(stage, f"zero{stage}")
    if training_args.fsdp:
        return "fsdp2"
    return "ddp"


def model_config(model_args, stage: str):
    """The AltCLIP config the run trains (read from config files only); (config, note): where a model's config is
    not readable here (a Hub id offline, a folder still to be written by stage 1), the released shape is assumed."""
    from transformers import AutoConfig

    from altclip.common.model_paths import missing_local_model
    from modeling_altclip import AltCLIPConfig

    def read(cls, name):
        if missing_local_model(name):
            raise FileNotFoundError(f"no such folder {name}")
        try:  # the local cache first: no network round trip where the config is already here
            return cls.from_pretrained(name, local_files_only=True)
        except OSError:
            return cls.from_pretrained(name)

    try:
        if model_args.model_name_or_path:
            return read(AltCLIPConfig, model_args.model_name_or_path), None
        clip = read(AutoConfig, model_args.clip_model_name_or_path)
        text = read(AutoConfig, model_args.text_encoder_name_or_path)
        config = AltCLIPConfig(
            text_config={**text.to_dict(), "project_dim": clip.projection_dim},
            vision_config=clip.vision_config.to_dict(),
            projection_dim=clip.projection_dim,
        )
        return config, None
    except Exception as error:  # offline Hub, missing folder, foreign config: all mean "not readable here"
        name = model_args.model_name_or_path or model_args.clip_model_name_or_path
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return AltCLIPConfig(), f"{name}: config not readable here ({first[:120]}); assumed the released shape"


def count_parameters(config, stage: str, unfreeze_vision: bool = False) -> dict:
    """Parameters of the model on the meta device (no memory, no weights): total, trained, and the towers."""
    import torch

    from modeling_altclip import AltCLIPModel

    with torch.device("meta"):
        model = AltCLIPModel(config)
    total = sum(parameter.numel() for parameter in model.parameters())
    text = sum(parameter.numel() for parameter in model.text_model.parameters())
    vision = sum(p.numel() for module in (model.vision_model, model.visual_projection) for p in module.parameters())
    trainable = text if stage == "teacher" else (total if unfreeze_vision else total - vision)
    return {"total": total, "trainable": trainable, "text_tower": text, "image_tower": vision}


def layer_activation_bytes(seq: int, batch: int, hidden: int, bf16: bool) -> int:
    """Activations kept for backward by one transformer layer with flash/SDPA attention (Korthikanti et al.)."""
    return 34 * seq * batch * hidden * (1 if bf16 else 2)


def activation_bytes(
    config, stage: str, batch: int, text_length: int, bf16: bool, checkpointing: bool, trains_vision, anchors: int = 0
):
    """Activations of the trained towers for one micro-batch; the text tower also reads `anchors` anchor texts
    (``--anchor_texts``) in the same forward."""
    towers = [(config.text_config, text_length, batch + anchors)]
    if trains_vision:
        vision = config.vision_config
        towers.append((vision, (vision.image_size // vision.patch_size) ** 2 + 1, batch))
    total = 0
    for tower, seq, rows in towers:
        layer = layer_activation_bytes(seq, rows, tower.hidden_size, bf16)
        inputs = 2 * seq * rows * tower.hidden_size * (1 if bf16 else 2)
        layers = tower.num_hidden_layers
        total += layers * inputs + layer if checkpointing else layers * layer
    return total


def memory_report(params: dict, backend: str, world: int, bf16: bool) -> dict:
    """Bytes per device of weights, gradients and optimizer states (see the module doc)."""
    total, trained = params["total"], params["trainable"]
    if backend == "ddp":
        weights, gradients = 4 * total, 4 * trained + (2 * trained if bf16 else 0)
        optimizer = 8 * trained
    elif backend == "zero2":
        weights, gradients, optimizer = 2 * total, 2 * trained / world, 12 * trained / world
    elif backend == "zero3":
        weights, gradients, optimizer = 2 * total / world, 2 * trained / world, 12 * trained / world
    else:  # fsdp2 (and any other sharding backend)
        weights, gradients, optimizer = 4 * total / world, 4 * trained / world, 8 * trained / world
    return {"weights": int(weights), "gradients": int(gradients), "optimizer_states": int(optimizer)}


def model_report(run, stage: str, world: int, anchor_count: int = 0) -> dict:
    """Parameters, memory per device (both with and without activation checkpointing) and disk of the run."""
    training = run.training
    config, note = model_config(run.model, stage)
    unfreeze = bool(getattr(run.stage, "unfreeze_vision", False))
    params = count_parameters(config, stage, unfreeze)
    backend = backend_of(training)
    bf16 = bool(training.bf16)
    memory = memory_report(params, backend, world, bf16)
    batch, length = training.per_device_train_batch_size, run.data.max_text_length
    anchors = 0  # anchor texts per micro-batch (stage 2 with --anchor_texts): more rows through the text tower
    if getattr(run.stage, "anchor_texts", None):
        anchors = run.stage.anchor_batch_size or batch
    activations = {
        flag: activation_bytes(config, stage, batch, length, bf16, flag, unfreeze and stage != "teacher", anchors)
        for flag in (False, True)
    }
    checkpointing = bool(getattr(training, "activation_checkpointing", False) or training.gradient_checkpointing)
    if isinstance(training.fsdp_config, dict) and training.fsdp_config.get("activation_checkpointing"):
        checkpointing = True
    fixed = sum(memory.values())
    report = {
        "config_note": note,
        "parameters": params,
        "backend": backend,
        "world_size": world,
        "bf16": bf16,
        "activation_checkpointing": checkpointing,
        "memory_per_device": {
            **memory,
            "activations": activations[checkpointing],
            "activations_without_checkpointing": activations[False],
            "activations_with_checkpointing": activations[True],
            "total": fixed + activations[checkpointing],
        },
    }
    if anchors:  # the start model's embeddings of this rank's share of the anchor texts, float32 on the device
        held = math.ceil(anchor_count / world) * config.projection_dim * 4
        report["memory_per_device"]["anchor_targets"] = held
        report["memory_per_device"]["total"] += held
    if stage == "teacher":
        # the frozen teacher in --teacher_dtype: the text tower's size (exact for --teacher self; CLIP's text tower
        # is smaller, so an upper bound), held unless --precompute_teacher_features frees it before training
        held = (4 if run.stage.teacher_dtype == "float32" else 2) * params["text_tower"]
        if run.stage.precompute_teacher_features:
            held = 0
        report["memory_per_device"]["frozen_teacher"] = held
        report["memory_per_device"]["total"] += held
    return report


def disk_report(params: dict, backend: str, training_args, rows: int, stage_args, projection_dim: int) -> dict:
    """Disk of checkpoints (model + optimizer, times --save_total_limit) and of the feature caches."""
    total, trained = params["total"], params["trainable"]
    if backend.startswith("zero"):
        checkpoint = 2 * total + 12 * trained + 4 * total  # DeepSpeed's 16-bit weights and fp32 states, + the model
    else:
        checkpoint = 4 * total + 8 * trained
    kept = training_args.save_total_limit
    caches = {}
    if getattr(stage_args, "precompute_teacher_features", False):
        caches["teacher_features"] = rows * projection_dim * 2
    if getattr(stage_args, "cache_image_features", False):
        caches["image_features"] = rows * projection_dim * 2
    return {
        "per_checkpoint": checkpoint,
        "checkpoints_kept": kept,
        "checkpoints": checkpoint * kept if kept else None,
        "final_model": 4 * total,
        "caches": caches,
    }


# ---------------------------------------------------------------------------------------------------------- report
def gib(value) -> str:
    return "n/a" if value is None else f"{value / GIB:.2f} GiB"


def format_report(report: dict) -> str:
    """The plan as the lines a person reads."""
    data, lines = report["data"], []
    nodes = report.get("nodes", 1)
    per_node = f" ({nodes} nodes x {report['world_size'] // nodes})" if nodes > 1 else ""
    lines.append(f"Plan of altclip-train {report['stage']} on {report['world_size']} processes{per_node}")
    for source in report["sources"]:
        weight = "" if source["weight"] is None else f", weight {source['weight']}"
        lines.append(
            f"  source {source['spec']}: {source['kind']}, {source['files']} file(s), {source['samples']:,} samples "
            f"({source['sized_by']}){weight}; {source['samples_per_epoch']:,} per epoch"
        )
    for group in data.get("languages", ()):
        lines.append(
            f"    language {group['language']} in {group['source']}: {group['rows']:,} rows, "
            f"{group['samples_per_epoch']:,} samples per epoch"
        )
    batch = data["per_device_batch"]
    reading = f"{data['readers']} readers (processes x workers)"
    if data["kind"] == "shards":
        reading += f" for {data['shards']:,} shards ({data['shards_per_reader']} per reader, mode {data['mode']})"
    lines += [
        f"  {reading}",
        f"  epoch: {data['samples_per_epoch']:,} samples, {data['batches_per_rank_per_epoch']:,} batches per rank, "
        f"{report['optimizer_steps_per_epoch']:,} optimizer steps; total {report['total_steps']:,} steps",
        f"  per-device batch: asked {batch['asked']}, min {batch['min']}, mean {batch['mean']}, max {batch['max']}; "
        f"padding {data['padding_share']:.2%}",
    ]
    if "read_through" in data:
        through = data["read_through"]
        lines.append(
            f"  readers starting inside a shard: {through['readers_starting_inside_a_shard']} (read past without "
            f"decoding: {through['share']:.2%} of the epoch's samples)"
        )
    model = report.get("model")
    if model:
        params, memory = model["parameters"], model["memory_per_device"]
        if model["config_note"]:
            lines.append(f"  model: {model['config_note']}")
        lines.append(
            f"  parameters: {params['total']:,} ({params['trainable']:,} trained; text tower {params['text_tower']:,}, "
            f"image tower {params['image_tower']:,})"
        )
        lines.append(
            f"  memory per device ({model['backend']}, world {model['world_size']}, "
            f"{'bf16' if model['bf16'] else 'fp32'}): weights {gib(memory['weights'])}, gradients "
            f"{gib(memory['gradients'])}, optimizer {gib(memory['optimizer_states'])}, activations "
            f"{gib(memory['activations_with_checkpointing'])} with checkpointing / "
            f"{gib(memory['activations_without_checkpointing'])} without"
            + (f", frozen teacher {gib(memory['frozen_teacher'])}" if "frozen_teacher" in memory else "")
            + f"; total {gib(memory['total'])} (checkpointing {'on' if model['activation_checkpointing'] else 'off'})"
        )
        disk = report["disk"]
        caches = ", ".join(f"{name} {gib(size)}" for name, size in disk["caches"].items()) or "none"
        lines.append(
            f"  disk: {gib(disk['per_checkpoint'])} per checkpoint x {disk['checkpoints_kept'] or 'all'} kept, final "
            f"model {gib(disk['final_model'])}, caches: {caches}"
        )
    for note in report["notes"]:
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def steps(data: dict, training_args) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps) as the Trainer counts them."""
    per_epoch = max(1, data["batches_per_rank_per_epoch"] // training_args.gradient_accumulation_steps)
    total = (
        training_args.max_steps
        if training_args.max_steps > 0
        else math.ceil(training_args.num_train_epochs * per_epoch)
    )
    return per_epoch, total


def full_report(run, stage: str, world: int, data: dict, sources: list[dict], rows: int, anchor_count: int = 0) -> dict:
    """The whole plan: data, model, disk, notes."""
    per_epoch, total = steps(data, run.training)
    model = model_report(run, stage, world, anchor_count)
    config, _ = model_config(run.model, stage)
    disk = disk_report(model["parameters"], model["backend"], run.training, rows, run.stage, config.projection_dim)
    return {
        "stage": stage,
        "world_size": world,
        "sources": sources,
        "data": data,
        "optimizer_steps_per_epoch": per_epoch,
        "total_steps": total,
        "model": model,
        "disk": disk,
        "notes": data_notes(data) + estimate_notes(sources),
    }


def estimate_notes(sources: list[dict]) -> list[str]:
    """Sizes estimated from --train_num_samples: what a shard of another size does."""
    if not any("--train_num_samples" in source["sized_by"] for source in sources):
        return []
    return [
        "shard sizes estimated from --train_num_samples: a shard holding fewer samples leaves the rest of its planned "
        "samples as counted skips, one holding more is read only as far as planned; a sizes.json makes it exact."
    ]


def write_plan(report: dict, output_dir: str) -> Path:
    path = Path(output_dir) / PLAN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    return path


# ------------------------------------------------------------------------------------------------------ in the run
def shard_sources_report(data, stream) -> list[dict]:
    """Per shard source of a `run_data.RunData`: samples planned and where their sizes came from."""
    ends = np.cumsum([0, *stream.shards_per_source])
    by_source = [int(sum(stream.sizes[ends[i] : ends[i + 1]])) for i in range(len(data.train_sources))]
    return sources_report(data.train_sources, by_source, data.sized.origins)


class PlanCallback(TrainerCallback):
    """Logs the run's plan and writes ``OUTPUT_DIR/plan.json`` (process 0) when training begins, from the data
    plan the DataLoader actually holds."""

    def __init__(self, run, data):
        self.run, self.data = run, data

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        if not state.is_world_process_zero or train_dataloader is None:
            return
        # the meta-device model that counts parameters must not be built under ZeRO-3's zero.Init: that
        # broadcasts each parameter, and the other ranks are not in this callback (a hang, found under ZeRO-3)
        with outside_zero3_init(args):
            report = run_report(self.run, self.data, train_dataloader.plan, args.world_size)
        report["nodes"] = int(os.environ.get("GROUP_WORLD_SIZE", 1))  # torchrun's agents (one per node)
        logger.info("%s", format_report(report))
        write_plan(report, args.output_dir)


def run_report(run, run_data, plan, world: int) -> dict:
    """The full report of a run's data (a `run_data.RunData`) and its plan object (a `ShardStream` or an
    `epoch_plan.GlobalBatchSampler`)."""
    from .data.shard_stream import ShardStream

    if isinstance(plan, ShardStream):
        data = shard_data_report(plan)
        described = shard_sources_report(run_data, plan)
    else:
        rows = sum(plan.sizes) + plan.extra
        workers = run.training.dataloader_num_workers
        languages = plan.language_plan
        drawn = languages.samples_per_epoch if languages is not None else None
        data = table_data_report(plan.sizes, rows, plan.weights, plan.batch_size, world, workers, drawn)
        described = sources_report(run_data.train_sources, list(plan.sizes), None)
        if languages is not None:
            data["languages"] = languages.report()
            for source in described:  # the language plan's rounding decides a source's samples
                source["samples_per_epoch"] = sum(
                    group["samples_per_epoch"] for group in data["languages"] if group["source"] == source["spec"]
                )
    anchor_count = run_data.anchors.count if run_data.anchors is not None else 0
    report = full_report(run, run_data.stage, world, data, described, data["samples_per_epoch"], anchor_count)
    report["notes"] += repeat_notes(described, data.get("languages"))
    return report


def repeat_notes(sources: list[dict], languages: list[dict] | None) -> list[str]:
    """Where weighting (--train_file_weights, --language_sampling_alpha) repeats or drops samples in an epoch."""
    notes = []
    for entry in languages or sources:
        rows = entry["rows"] if languages else entry["samples"]
        drawn, name = entry["samples_per_epoch"], entry.get("spec") or f"{entry['source']} [{entry['language']}]"
        if drawn > rows:
            notes.append(f"{name}: {drawn:,} samples per epoch from {rows:,} rows: rows repeat (x{drawn / rows:.2f}).")
        elif drawn < rows:
            notes.append(f"{name}: {drawn:,} samples per epoch from {rows:,} rows: a different subset each epoch.")
    return notes
