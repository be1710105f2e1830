"""A stage's objective, written into every checkpoint and compared when a run resumes.

A requeued job re-reads its config: had the config's ``loss``, ``matryoshka_dims``/``_weights``,
``gather_with_grad`` or anchor texts (stage 2), or its ``teacher``, ``distillation_loss`` or
``include_english_pairs`` (stage 1), changed in between, the run would continue on another objective without a
word — its logged loss jumping (a Matryoshka loss is a sum over widths; a self teacher starts at 0), its saved
config naming widths the first part never trained. Like the data plan (`data/data_plan.py`), a resumption that
changes it is refused with the difference named.
"""

import json
from pathlib import Path

from altclip.common.errors import UsageError

from ..data.data_plan import CheckpointRecordCallback
from .contrastive_objective import parse_dims
from .text_anchors import AnchorTexts

OBJECTIVE_FILE = "objective.json"
ANCHORS_START = "anchors_start"  # the digest of the start model's text side, known once the model has loaded


# The flags of each stage's objective, named in the refusal.
OBJECTIVE_FLAGS = {
    "teacher": "--teacher, --distillation_loss and --include_english_pairs",
    "contrastive": "--loss, --matryoshka_dims, --matryoshka_weights, --gather_with_grad and --anchor_*",
}


def objective_settings(stage_args, stage: str = "contrastive", anchors: AnchorTexts | None = None) -> dict:
    """What a resumed run must share with the run it continues: stage 2's loss, its widths as asked and its anchor
    term (the texts by their digest, not their files' paths); stage 1's teacher (CLIP's or the model's own) and
    loss."""
    if stage == "teacher":
        return {
            "teacher": stage_args.teacher,
            "distillation_loss": stage_args.distillation_loss,
            "include_english_pairs": bool(stage_args.include_english_pairs),
        }
    return {
        "loss": stage_args.loss,
        "matryoshka_dims": parse_dims(stage_args.matryoshka_dims),
        "matryoshka_weights": stage_args.matryoshka_weights,
        "gather_with_grad": bool(stage_args.gather_with_grad),
        "anchors": {
            "texts_sha256": anchors.digest,
            "texts": anchors.count,
            "weight": stage_args.anchor_weight,
            "batch_size": stage_args.anchor_batch_size,
        }
        if anchors is not None
        else None,
    }


class ObjectiveRecordCallback(CheckpointRecordCallback):
    """Its own class: the Trainer warns when a second callback of one class is added (the data plan's is one)."""


def objective_record_callback(
    stage_args, stage: str = "contrastive", anchors: AnchorTexts | None = None, anchors_start: str | None = None
) -> CheckpointRecordCallback:
    """Writes the run's objective settings into every checkpoint (process 0), and with anchors the digest of the
    start model's text side their targets came from (`check_resumed_anchor_start`)."""
    settings = objective_settings(stage_args, stage, anchors)
    if anchors_start is not None:
        settings[ANCHORS_START] = anchors_start
    return ObjectiveRecordCallback(OBJECTIVE_FILE, settings)


def checkpoint_config(checkpoint: Path) -> dict:
    path = checkpoint / "config.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def saved_settings(checkpoint: Path, config: dict, stage: str = "contrastive") -> dict:
    """The checkpoint's objective settings; for one written before `OBJECTIVE_FILE` existed, what is known of it:
    stage 2's Matryoshka widths from its ``config.json`` (`config`; None there: the full width only); stage 1's
    teacher, CLIP's (``--teacher self`` came with the record)."""
    path = checkpoint / OBJECTIVE_FILE
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    if stage == "teacher":
        return {"teacher": "clip"}
    return {"matryoshka_dims": config.get("matryoshka_dims") or []} if config else {}


def prefix_widths(dims: list[int], full: int | None) -> list[int]:
    """The prefix widths of a dims list, the full width (always trained) left out, so that ``192,384`` and
    ``192,384,768`` of a 768-wide model compare equal."""
    return sorted({int(dim) for dim in dims if dim != full})


def check_resumed_objective(
    checkpoint: str, stage_args, stage: str = "contrastive", anchors: AnchorTexts | None = None
) -> None:
    """Refuses to resume `checkpoint` with another objective, naming each difference."""
    config = checkpoint_config(Path(checkpoint))
    saved = saved_settings(Path(checkpoint), config, stage)
    current = objective_settings(stage_args, stage, anchors)
    if stage == "contrastive":  # a checkpoint from before anchors existed was trained without them
        saved.setdefault("anchors", None)
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
            f"the same {OBJECTIVE_FLAGS[stage]}, or start a new --output_dir."
        )


def check_resumed_anchor_start(checkpoint: str, start: str) -> None:
    """Refuses to resume an anchored run whose start model (``--model_name_or_path``, whose embeddings of the anchors
    are the targets) is not the one the run started from: retrained, overwritten, or a newer Hub revision."""
    saved = saved_settings(Path(checkpoint), {}).get(ANCHORS_START)  # none recorded: nothing to compare
    if saved is not None and saved != start:
        raise UsageError(
            f"altclip-train: {checkpoint} was trained toward the anchors' embeddings by another start model (its "
            "text tower's weights differ from --model_name_or_path's now); resume from the model the run started "
            "from, or start a new --output_dir."
        )
