"""Running ``altclip-train`` stages inside the test process and reading back what they logged."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
from ports import free_port

from altclip.common.cli_errors import CommandLineError
from altclip.training.cli import main as train_main

REPO = Path(__file__).resolve().parents[1]

QUIET = ["--report_to", "none", "--disable_tqdm", "true", "--dataloader_num_workers", "0", "--seed", "0"]


def run_stage(stage: str, output_dir: Path, *flags: str) -> dict:
    """Runs ``altclip-train STAGE`` in this process and returns its training summary."""
    train_main([stage, "--output_dir", str(output_dir), *QUIET, *flags])
    return json.loads((output_dir / "training_summary.json").read_text())


def stage_refusal(cli, stage: str, output_dir: Path, *flags: str, **expected) -> str:
    """Runs the stage (`run_stage`) with the ``cli`` fixture expecting a one-line refusal: `CommandLineError`, exit
    status 2, the message as stderr's last line, no traceback, and what `expected` asks of the line
    (`cli_runs.assert_one_line_error`). Returns the line."""
    return cli.call_refusal(lambda: run_stage(stage, output_dir, *flags), kind=CommandLineError, **expected)


def logged_losses(output_dir: Path) -> dict[int, float]:
    """step -> logged training loss, from the last checkpoint's trainer_state.json."""
    checkpoints = sorted(output_dir.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    state = json.loads((checkpoints[-1] / "trainer_state.json").read_text())
    return {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}


def toy_teacher_inputs(toy) -> tuple[str, ...]:
    """The toy setup's stage-1 models and data: tiny CLIP teacher, tiny XLM-R, shapes parallel text."""
    return (
        "--clip_model_name_or_path",
        str(toy["clip"]),
        "--text_encoder_name_or_path",
        str(toy["xlmr"]),
        "--train_files",
        str(toy["parallel"]),
    )


def teacher_flags(toy, *extra: str) -> tuple[str, ...]:
    """Stage-1 flags for the toy setup (`toy_teacher_inputs`, batch 16, lr 1e-3), then `extra`."""
    return (
        *toy_teacher_inputs(toy),
        "--per_device_train_batch_size",
        "16",
        "--learning_rate",
        "1e-3",
        "--logging_steps",
        "5",
        *extra,
    )


def torchrun_command(stage: str, output_dir: Path, processes: int, *flags: str) -> list[str]:
    """``altclip-train STAGE`` under ``torchrun --nproc_per_node processes`` (gloo on 127.0.0.1), quiet flags first."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(processes)]
    launcher += ["--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "altclip.training.cli"]
    return [*launcher, stage, "--output_dir", str(output_dir), *QUIET, *flags]


def torchrun_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def torchrun(stage: str, output_dir: Path, processes: int, *flags: str) -> subprocess.CompletedProcess:
    """Runs the stage to the end in `processes` processes; fails the test with the output tail if it fails."""
    command = torchrun_command(stage, output_dir, processes, *flags)
    result = subprocess.run(command, cwd=REPO, env=torchrun_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def trained_keys(output_dir: Path, up_to_step: int | None = None) -> Counter:
    """How often each sample reached the model's forward (``--record_trained_keys``), all ranks, up to a step."""
    counts: Counter = Counter()
    for path in (output_dir / "trained_keys").glob("rank-*.tsv"):
        for line in path.read_text(encoding="utf-8").splitlines():
            step, key = line.split("\t", 1)
            if up_to_step is None or int(step) <= up_to_step:
                counts[key] += 1
    return counts


def trained_steps(output_dir: Path) -> Counter:
    """(step, key) pairs recorded by ``--record_trained_keys``, all ranks."""
    pairs: Counter = Counter()
    for path in (output_dir / "trained_keys").glob("rank-*.tsv"):
        pairs.update(tuple(line.split("\t", 1)) for line in path.read_text(encoding="utf-8").splitlines())
    return pairs


def shapes_image_folder(toy, root: Path) -> Path:
    """An altclip-eval image_folder of the toy images by shape, with English and German class names."""
    for image in sorted((Path(toy["captions"]).parent / "images").glob("*.png")):
        shape = image.stem.split("_")[1]
        (root / shape).mkdir(parents=True, exist_ok=True)
        (root / shape / image.name).symlink_to(image)
    names = {"en": ["circle", "square", "triangle"], "de": ["Kreis", "Quadrat", "Dreieck"]}
    (root / "classnames.json").write_text(json.dumps(names))
    return root


def kill_after_checkpoint(command: list[str], output_dir: Path, step: int) -> None:
    """Starts a run and SIGKILLs torchrun and every process under it (the ranks and their DataLoader workers are
    not in torchrun's process group) once checkpoint-`step` is complete."""
    process = subprocess.Popen(command, cwd=REPO, env=torchrun_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (output_dir / f"checkpoint-{step}" / "trainer_state.json").is_file():
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    root = psutil.Process(process.pid)
    members = [root, *root.children(recursive=True)]
    for member in members:
        try:
            member.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    process.wait()
    psutil.wait_procs(members[1:], timeout=30)
    assert not (output_dir / "training_summary.json").exists(), "the run ended before it was killed"


def tiny_matryoshka_dims(shipped: str, model_dir: Path, shipped_width: int = 768) -> str:
    """The shipped widths as the same fractions of the tiny model's projection width (192,384 of 768 -> 1/4, 1/2)."""
    width = json.loads((Path(model_dir) / "config.json").read_text())["projection_dim"]
    return ",".join(str(int(dim) * width // shipped_width) for dim in str(shipped).split(","))
