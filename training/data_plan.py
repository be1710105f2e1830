"""The data position of a checkpoint: what a resumed run must share with the run it continues.

The position itself is the Trainer's (epoch, step): the epoch plans are pure functions of the seed. They also
depend on the number of processes, DataLoader workers, batch size, gradient accumulation, shuffle buffer and
sources, so each checkpoint gets ``data_plan.json`` with those, and a resumption that changes them is refused
with the difference named.
"""

import json
from pathlib import Path

from transformers import TrainerCallback

from .epoch_plan import data_seed

DATA_PLAN_FILE = "data_plan.json"


def data_plan(data_args, training_args) -> dict:
    plan = {
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
    # Shard sizing and reading mode (training/sizing.py, shard_plan.py): named only when set, so that checkpoints
    # written before these flags existed compare equal.
    for name in ("shard_sizes", "train_num_samples", "dataset_resampled"):
        if getattr(data_args, name, None):
            plan[name] = getattr(data_args, name)
    return plan


class DataPlanCallback(TrainerCallback):
    """Writes the run's data plan into every checkpoint (process 0)."""

    def __init__(self, plan: dict):
        self.plan = plan

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                (folder / DATA_PLAN_FILE).write_text(json.dumps(self.plan, indent=2))


def data_plan_callback(data_args, training_args) -> DataPlanCallback:
    return DataPlanCallback(data_plan(data_args, training_args))


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
        raise SystemExit(
            f"altclip-train: {checkpoint} was trained with another data plan ({'; '.join(changed)}); resume with the "
            "same data, processes, workers, batch size, gradient accumulation, shuffle buffer and seed, or start a new "
            "--output_dir."
        )
