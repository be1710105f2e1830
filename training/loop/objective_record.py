"""Stage 2's objective, written into every checkpoint and compared when a run resumes.

A requeued job re-reads its config: had the config's ``loss``, ``matryoshka_dims``/``_weights`` or
``gather_with_grad`` changed in between, the run would continue on another objective without a word — its logged
loss jumping (a Matryoshka loss is a sum over widths), its saved config naming widths the first part never trained.
Like the data plan (`data/data_plan.py`), a resumption that changes it is refused with the difference named.
"""

import json
from pathlib import Path

from altclip.common.errors import UsageError

from ..data.data_plan import CheckpointRecordCallback
from .contrastive_objective import parse_dims

OBJECTIVE_FILE = "objective.json"


def objective_settings(stage_args) -> dict:
    """What a resumed stage-2 run must share with the run it continues: the loss and its widths as asked."""
    return {
        "loss": stage_args.loss,
        "matryoshka_dims": parse_dims(stage_args.matryoshka_dims),
        "matryoshka_weights": stage_args.matryoshka_weights,
        "gather_with_grad": bool(stage_args.gather_with_grad),
    }


class ObjectiveRecordCallback(CheckpointRecordCallback):
    """Its own class: the Trainer warns when a second callback of one class is added (the data plan's is one)."""


def objective_record_callback(stage_args) -> CheckpointRecordCallback:
    """Writes the run's objective settings into every checkpoint (process 0)."""
    return ObjectiveRecordCallback(OBJECTIVE_FILE, objective_settings(stage_args))


def checkpoint_config(checkpoint: Path) -> dict:
    path = checkpoint / "config.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def saved_settings(checkpoint: Path, config: dict) -> dict:
    """The checkpoint's objective settings; for one written before `OBJECTIVE_FILE` existed, only the Matryoshka
    widths its ``config.json`` (`config`) records (None there: the full width only)."""
    path = checkpoint / OBJECTIVE_FILE
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    return {"matryoshka_dims": config.get("matryoshka_dims") or []} if config else {}


def prefix_widths(dims: list[int], full: int | None) -> list[int]:
    """The prefix widths of a dims list, the full width (always trained) left out, so that ``192,384`` and
    ``192,384,768`` of a 768-wide model compare equal."""
    return sorted({int(dim) for dim in dims if dim != full})


def check_resumed_objective(checkpoint: str, stage_args) -> None:
    """Refuses to resume `checkpoint` with another objective, naming each difference."""
    config = checkpoint_config(Path(checkpoint))
    saved, current = saved_settings(Path(checkpoint), config), objective_settings(stage_args)
    full = config.get("projection_dim")
    for settings in (saved, current):
        if "matryoshka_dims" in settings:
            settings["matryoshka_dims"] = prefix_widths(settings["matryoshka_dims"], full)
    changed = [
        f"{name} {saved[name]!r} -> {value!r}"
        for name, value in current.items()
        if name in saved and saved[name] != value
    ]
    if changed:
        raise UsageError(
            f"altclip-train: {checkpoint} was trained with another objective ({'; '.join(changed)}); resume with "
            "the same --loss, --matryoshka_dims, --matryoshka_weights and --gather_with_grad, or start a new "
            "--output_dir."
        )
