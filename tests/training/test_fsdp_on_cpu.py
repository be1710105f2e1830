"""The shipped FSDP config on CPU processes: accelerate cannot apply FSDP there and would train plain DDP with nothing
sharded; ``altclip-train`` refuses it in one line on every rank before any model loads (never a silent fallback).
(tests/training/test_backends.py runs FSDP2 for real on CPU through a test-only relabelling of the device type.)"""

import subprocess

import pytest
import yaml
from stage_runs import REPO, torchrun_command, torchrun_env

FSDP_CONFIG = REPO / "training" / "configs" / "contrastive_vit-l-14_xlm-r-large_fsdp.yaml"


@pytest.mark.slow
def test_the_shipped_fsdp_config_on_two_cpu_processes_is_refused_not_run_as_ddp(tmp_path, toy):
    values = yaml.safe_load(FSDP_CONFIG.read_text())
    values.update(model_name_or_path=str(tmp_path / "model-never-loaded"), train_files=[str(toy["captions"])])
    values.update(bf16=False, report_to="none")
    values.pop("train_file_weights")
    config = tmp_path / "fsdp.yaml"
    config.write_text(yaml.safe_dump(values))
    command = torchrun_command("contrastive", tmp_path / "out", 2, "--config", str(config), "--max_steps", "1")
    result = subprocess.run(command, cwd=tmp_path, env=torchrun_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    refusals = [line for line in result.stderr.splitlines() if line.startswith("altclip-train: --fsdp is set")]
    # one line per rank that got to print it: torchrun stops the other rank as soon as one exits with an error,
    # which can come before that rank's own refusal (seen once in a loaded run)
    assert 1 <= len(refusals) <= 2, result.stderr[-3000:]
    assert "run on the CPU (accelerate's distributed type MULTI_CPU)" in refusals[0]
    assert "drop --fsdp and --fsdp_config" in refusals[0]
    # the ranks print no traceback (torchrun's launcher prints its own ChildFailedError, from its own frames)
    frames = [line for line in result.stderr.splitlines() if line.lstrip().startswith('File "')]
    assert not [frame for frame in frames if str(REPO) in frame], frames
    assert not (tmp_path / "out").exists()  # refused before anything was written
