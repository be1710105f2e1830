"""altclip-train under a careless user's input: one line naming the problem, exit status 2, before models load;
nothing a user wrote is overwritten (an input model, a finished model), a full disk is named."""

import errno
import hashlib
import re
import shlex
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest
from cli_runs import assert_one_line_error, run_process
from huggingface_hub import constants
from safetensors import SafetensorError
from stage_runs import QUIET, run_stage, stage_refusal, teacher_flags, torchrun_env
from transformers import XLMRobertaConfig, XLMRobertaModel, modeling_utils

from altclip.training.loop import output_folder
from modeling_altclip import AltCLIPModel


def digest(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in folder.iterdir() if path.is_file()}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--bogus_flag", "1"), "unknown flag(s) --bogus_flag 1"),
        (("--per_device_train_batch_size", "0"), "--per_device_train_batch_size 0 is too small; give a whole number"),
        (("--gradient_accumulation_steps", "0"), "--gradient_accumulation_steps 0 is too small; give a whole number"),
        (("--teacher_dtype", "float8"), "invalid choice: 'float8'"),
        (("--learning_rate", "abc"), "invalid float value: 'abc'"),
        (("--max_text_length", "600"), "--max_text_length 600 is outside 1..512"),
        (("--text_encoder_name_or_path", "./no/such/model"), "./no/such/model: no such folder"),
        (("--train_file_weights", "1", "2"), "--train_file_weights has 2 values for 1 --train_files entries"),
    ],
)
def test_flag_errors_are_one_line_before_models_load(cli, tmp_path, toy, monkeypatch, flags, message):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the flags were checked")

    monkeypatch.setattr("altclip.training.stages.load_or_build_model", no_model)
    assert message in stage_refusal(cli, "teacher", tmp_path / "out", *teacher_flags(toy, *flags))


def test_the_input_model_is_never_the_output(cli, tmp_path, toy, teacher_model_dir):
    before = digest(teacher_model_dir)
    flags = ["--model_name_or_path", str(teacher_model_dir), "--train_files", str(toy["captions"])]
    message = stage_refusal(cli, "contrastive", tmp_path / "out", *flags, "--output_dir", str(teacher_model_dir))
    assert "is inside the input model" in message
    message = stage_refusal(
        cli,
        "contrastive",
        tmp_path / "out",
        *flags,
        "--output_dir",
        str(teacher_model_dir),
        "--overwrite_output_dir",
        "true",
    )
    assert "is inside the input model" in message
    assert digest(teacher_model_dir) == before


def test_a_finished_model_is_not_trained_over_without_overwrite(cli, tmp_path, toy):
    flags = teacher_flags(toy, "--max_steps", "1", "--save_strategy", "no")
    run_stage("teacher", tmp_path / "out", *flags)
    before = digest(tmp_path / "out")
    assert "model.safetensors" in before
    message = stage_refusal(cli, "teacher", tmp_path / "out", *flags)
    assert "already holds a model (config.json, model.safetensors" in message and "--overwrite_output_dir" in message
    assert digest(tmp_path / "out") == before
    run_stage("teacher", tmp_path / "out", *flags, "--overwrite_output_dir", "true")
    assert AltCLIPModel.from_pretrained(tmp_path / "out") is not None


def test_an_unwritable_output_folder_is_found_before_training(cli, tmp_path, toy):
    (tmp_path / "a-file").write_text("not a folder")
    message = stage_refusal(
        cli, "teacher", tmp_path / "out", *teacher_flags(toy), "--output_dir", str(tmp_path / "a-file" / "run")
    )
    assert message.startswith(f"altclip-train: cannot write to --output_dir {tmp_path / 'a-file' / 'run'}")


def test_no_room_for_a_checkpoint_is_found_before_the_first_step(cli, tmp_path, toy, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(output_folder.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    message = stage_refusal(cli, "teacher", tmp_path / "out", *teacher_flags(toy, "--max_steps", "2"))
    assert "1 checkpoint(s) of about" in message and "0.00 GiB free" in message
    assert not list((tmp_path / "out").glob("checkpoint-*"))


def can_mount_tmpfs() -> bool:
    """Whether this machine lets an unprivileged process mount its own tmpfs (user and mount namespaces)."""
    probe = "mount -t tmpfs -o size=1m tmpfs /mnt || mount -t tmpfs -o size=1m tmpfs /tmp"
    return (
        shutil.which("unshare") is not None
        and subprocess.run(["unshare", "-r", "-m", "sh", "-c", probe], capture_output=True).returncode == 0
    )


@pytest.mark.skipif(not can_mount_tmpfs(), reason="needs `unshare -r -m` to mount a small tmpfs")
def test_a_real_disk_too_small_for_the_run_is_refused_before_the_first_step(tmp_path, toy):
    """A real 110 MiB tmpfs: room for one toy checkpoint (~92 MiB) but not for the two that --save_steps 2 keeps
    plus the final model (the old check counted one checkpoint and let this disk through, to fail at step 4)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    flags = [*QUIET, *teacher_flags(toy, "--max_steps", "4", "--save_steps", "2")]
    command = shlex.join(
        [sys.executable, "-m", "altclip.training.cli", "teacher", "--output_dir", f"{disk}/out", *flags]
    )
    done = run_process(
        ["unshare", "-r", "-m", "sh", "-c", f"mount -t tmpfs -o size=110m tmpfs {disk} && exec {command}"],
        env=torchrun_env(),
        timeout=600,
    )
    last = assert_one_line_error(done)
    assert re.fullmatch(
        rf"altclip-train: 2 checkpoint\(s\) of about 0\.09 GiB and the final model \(0\.03 GiB\) need about 0\.21 GiB, "
        rf"but the disk of {disk}/out has 0\.1\d GiB free\. Free some space, keep fewer checkpoints "
        r"\(--save_total_limit, --save_steps\), or choose another --output_dir\.",
        last,
    ), last


def test_a_full_disk_during_a_checkpoint_write_is_one_line(cli, tmp_path, toy, monkeypatch):
    """safetensors' writer fails with its own error type (not OSError) when the disk fills inside a checkpoint
    (simulated: the writer is patched to raise the exact error a full tmpfs gave)."""
    real_save_file = modeling_utils.safe_save_file

    def full_inside_checkpoints(tensors, filename, *args, **kwargs):
        if "checkpoint-" in str(filename):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real_save_file(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(modeling_utils, "safe_save_file", full_inside_checkpoints)
    message = stage_refusal(
        cli, "teacher", tmp_path / "out", *teacher_flags(toy, "--max_steps", "2", "--save_steps", "1")
    )
    assert re.fullmatch(
        rf"altclip-train: the disk of {tmp_path / 'out'} is full \(\d+ MiB free\) and a save failed\. Free some "
        r"space, then continue with --resume_from_checkpoint true \(it takes the newest complete checkpoint\)\.",
        message,
    ), message


def test_a_full_disk_during_the_final_save_is_named_and_leaves_no_half_model(cli, tmp_path, toy, monkeypatch):
    def full(self, folder, *args, **kwargs):
        (Path(folder) / "model.safetensors").parent.mkdir(parents=True, exist_ok=True)
        (Path(folder) / "model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(AltCLIPModel, "save_pretrained", full)
    message = stage_refusal(
        cli, "teacher", tmp_path / "out", *teacher_flags(toy, "--max_steps", "1", "--save_strategy", "no")
    )
    assert message.startswith(f"altclip-train: the disk of {tmp_path / 'out'} is full")
    assert "--resume_from_checkpoint true" in message
    assert not (tmp_path / "out" / "model.safetensors").exists()  # the half file went with the staging folder
    assert not list((tmp_path / "out").glob(".saving.*"))


def test_a_tokenizer_larger_than_the_text_vocabulary_is_one_line_before_the_first_step(cli, tmp_path, toy):
    """XLM-R's 250,002-token tokenizer over a text tower with 1,000 embeddings: its ids would fail the first
    forward pass (ValueError inside the Trainer's step, a traceback)."""
    encoder = tmp_path / "small-vocabulary"
    config = XLMRobertaConfig(
        vocab_size=1000, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64
    )
    XLMRobertaModel(config).save_pretrained(encoder)
    shutil.copy(toy["xlmr"] / "tokenizer.json", encoder)
    shutil.copy(toy["xlmr"] / "tokenizer_config.json", encoder)
    flags = teacher_flags(toy, "--text_encoder_name_or_path", str(encoder), "--max_steps", "1", "--save_strategy", "no")
    assert stage_refusal(cli, "teacher", tmp_path / "out", *flags) == (
        f"altclip-train: the tokenizer of {encoder} has 250,002 tokens but the text tower of {encoder} has 1,000 "
        "embeddings (vocab_size): pass the tokenizer that text encoder was trained with (--tokenizer_name_or_path), "
        "or a text encoder made for this tokenizer."
    )
    assert not (tmp_path / "out" / "training_summary.json").exists()


def test_a_mistyped_model_name_without_a_slash_is_named_before_loading(cli, tmp_path, toy, monkeypatch):
    """Offline with an empty cache: no such local folder, not "couldn't connect to huggingface.co"."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    flags = ["--model_name_or_path", "altclipp", "--train_files", str(toy["captions"])]
    assert stage_refusal(cli, "contrastive", tmp_path / "out", *flags) == (
        "altclip-train: --model_name_or_path altclipp: no such local folder, and not in the Hub cache (HF_HUB_OFFLINE "
        "is set). Check the name."
    )
