"""Running ``altclip-train`` stages inside the test process and reading back what they logged."""

import json
from pathlib import Path

from training.cli import main as train_main

QUIET = ["--report_to", "none", "--disable_tqdm", "true", "--dataloader_num_workers", "0", "--seed", "0"]


def run_stage(stage: str, output_dir: Path, *flags: str) -> dict:
    """Runs ``altclip-train STAGE`` in this process and returns its training summary."""
    train_main([stage, "--output_dir", str(output_dir), *QUIET, *flags])
    return json.loads((output_dir / "training_summary.json").read_text())


def logged_losses(output_dir: Path) -> dict[int, float]:
    """step -> logged training loss, from the last checkpoint's trainer_state.json."""
    checkpoints = sorted(output_dir.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    state = json.loads((checkpoints[-1] / "trainer_state.json").read_text())
    return {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}


def teacher_flags(toy, *extra: str) -> tuple[str, ...]:
    """Stage-1 flags for the toy setup (tiny CLIP teacher, tiny XLM-R, shapes parallel text), then `extra`."""
    return (
        "--clip_model_name_or_path",
        str(toy["clip"]),
        "--text_encoder_name_or_path",
        str(toy["xlmr"]),
        "--train_files",
        str(toy["parallel"]),
        "--per_device_train_batch_size",
        "16",
        "--learning_rate",
        "1e-3",
        "--logging_steps",
        "5",
        *extra,
    )
