"""The data position of a checkpoint: what a resumed run must share with the run it continues.

The position itself is the Trainer's (epoch, step): the epoch plans are pure functions of the seed. They also
depend on the number of processes, DataLoader workers, batch size, gradient accumulation, shuffle buffer and
sources, so each checkpoint gets ``data_plan.json`` with those, and a resumption that changes them is refused
with the difference named.
"""

import json
from pathlib import Path

from transformers import TrainerCallback

from altclip.common.errors import UsageError

from .epoch_plan import data_seed

DATA_PLAN_FILE = "data_plan.json"


def data_plan(data_args, training_args, tables: dict | None = None) -> dict:
    """What a resumed run must share with the run it continues; `tables` (`table_sizes`) once they are built."""
    plan = {
        **({"tables": tables} if tables is not None else {}),
        "train_files": list(data_args.train_files),
        "train_file_weights": data_args.train_file_weights,
        "world_size": training_args.world_size,
        "dataloader_num_workers": training_args.dataloader_num_workers,
        "per_device_train_batch_size": training_args.per_device_train_batch_size,
        # A checkpoint's step counts optimizer steps: the batches behind each depend on the accumulation.
        "gradient_accumulation_steps": training_args.gradient_accumulation_steps,
        "shuffle_buffer": data_args.shuffle_buffer,
        "seed": data_seed(training_args),
    }
    # Shard sizing and reading mode (training/data/sizing.py, shard_plan.py): named only when set, so that checkpoints
    # written before these flags existed compare equal.
    for name in ("shard_sizes", "train_num_samples", "dataset_resampled"):
        if getattr(data_args, name, None):
            plan[name] = getattr(data_args, name)
    # Language balancing (language_balance.py) changes what each epoch draws; alpha 0 is a value, not "unset".
    for name in ("language_sampling_alpha", "language_column"):
        if getattr(data_args, name, None) is not None:
            plan[name] = getattr(data_args, name)
    return plan


class CheckpointRecordCallback(TrainerCallback):
    """Writes `record` as JSON into every checkpoint as `file_name` (process 0): what a resumed run must share with
    the run that wrote it (the data plan here, stage 2's objective in `loop/objective_record.py`)."""

    def __init__(self, file_name: str, record: dict):
        self.file_name, self.record = file_name, record

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                (folder / self.file_name).write_text(json.dumps(self.record, indent=2) + "\n")


def data_plan_callback(data_args, training_args, tables: dict | None = None) -> CheckpointRecordCallback:
    return CheckpointRecordCallback(DATA_PLAN_FILE, data_plan(data_args, training_args, tables))


def table_sizes(sources, dataset) -> dict | None:
    """{source spec: {"rows": rows, "bytes": {file: bytes}}} of table sources (None for shard streams): the row
    index of a checkpoint's data position means the same rows only while these stay."""
    if sources[0].is_shards:
        return None
    return {
        source.spec: {"rows": int(rows), "bytes": {url: _bytes(url) for url in source.urls}}
        for source, rows in zip(sources, dataset.sizes)
    }


def _bytes(url: str) -> int | None:
    path = Path(url)
    if not path.exists():  # a URL
        return None
    return path.stat().st_size if path.is_file() else sum(item.stat().st_size for item in path.rglob("*"))


def check_resumed_tables(checkpoint: str, tables: dict | None) -> None:
    """Refuses to resume `checkpoint` on tables whose rows changed since it was written (the epoch's order of row
    indices would then train some rows twice and others never), naming the source, rows then and now, and the
    files whose size changed."""
    path = Path(checkpoint) / DATA_PLAN_FILE
    saved = json.loads(path.read_text()).get("tables") if path.is_file() else None
    if saved is None or tables is None:
        return
    changed = []
    for spec, now in tables.items():
        then = saved.get(spec)
        if then is None or then["rows"] == now["rows"]:
            continue
        files = [
            f"{url} {then['bytes'].get(url)} -> {size} bytes"
            for url, size in now["bytes"].items()
            if then["bytes"].get(url) != size
        ]
        changed.append(
            f"{spec}: {then['rows']} rows then, {now['rows']} now" + (f" ({'; '.join(files)})" if files else "")
        )
    if changed:
        raise UsageError(
            f"altclip-train: {checkpoint} was trained on tables of another size ({'; '.join(changed)}); resume on "
            "the tables as they were, or start a new --output_dir to train on the changed ones."
        )


def check_resumed_plan(checkpoint: str, data_args, training_args) -> None:
    """Refuses to resume `checkpoint` with another data plan (the data position would not mean the same)."""
    path = Path(checkpoint) / DATA_PLAN_FILE
    if not path.is_file():
        return
    saved, current = json.loads(path.read_text()), data_plan(data_args, training_args)
    # A name missing from the saved plan was added after the checkpoint was written: not compared.
    changed = [
        f"{name} {saved[name]!r} -> {value!r}" for name, value in current.items() if saved.get(name, value) != value
    ]
    if changed:
        raise UsageError(
            f"altclip-train: {checkpoint} was trained with another data plan ({'; '.join(changed)}); resume with the "
            "same data, processes, workers, batch size, gradient accumulation, shuffle buffer and seed, or start a new "
            "--output_dir."
        )
