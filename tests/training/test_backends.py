"""FSDP2 and DeepSpeed ZeRO-2/3 for real: ``altclip-train`` on 2 CPU processes (torchrun, gloo) under the shipped
configs, each run proving from inside (`backend_probe`) that its backend trains, with DDP's losses and full saved
weights.

The shipped configs are used as they are, except for what a toy run must replace, named in `toy_config`: model
path, data, bf16 (off: CPU runs in fp32), the Matryoshka widths (the same fractions of the toy model's width), and
run-size flags (steps, batch, logging, saving; a warm-up-free learning rate of 1e-3 so that two steps move the
weights measurably).
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from backend_probe import FSDP_ON_CPU, probe_reports
from ports import free_port
from safetensors.torch import load_file
from stage_runs import QUIET, REPO, tiny_matryoshka_dims, torchrun_env, toy_teacher_inputs

from modeling_altclip import AltCLIPModel, AltCLIPProcessor

CONFIGS = REPO / "training" / "configs"
FSDP_CONFIG = CONFIGS / "contrastive_vit-l-14_xlm-r-large_fsdp.yaml"
RUN_SIZE = [
    "--max_steps",
    "2",
    "--per_device_train_batch_size",
    "8",
    "--logging_steps",
    "1",
    "--save_steps",
    "2",
    "--train_sampling_strategy",
    "sequential",
    "--learning_rate",
    "1e-3",
    "--warmup_steps",
    "0",
]


def probed_run(stage: str, output_dir: Path, config: Path, *flags: str, fsdp_on_cpu: bool = False) -> str:
    """``altclip-train STAGE --config CONFIG`` on 2 gloo processes through `backend_probe`, the quiet and run-size
    flags after the config (they win); returns the output."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2"]
    launcher += ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    command = [*launcher, str(REPO / "tests" / "backend_probe.py"), stage, "--config", str(config)]
    command += ["--output_dir", str(output_dir), *QUIET, *RUN_SIZE, *flags]
    env = {**torchrun_env(), FSDP_ON_CPU: "1" if fsdp_on_cpu else "0"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result.stdout + result.stderr


def toy_config(shipped: Path, folder: Path, model_flags: dict, train_files: str, keep_backend: bool = True) -> Path:
    """The shipped YAML config with the toy run's model path(s), data and bf16 replaced, its Matryoshka widths as the
    same fractions of the toy model's width (and, for the DDP baseline, its FSDP keys dropped)."""
    values = yaml.safe_load(shipped.read_text())
    values.update(model_flags, train_files=[train_files], bf16=False)
    if values.get("matryoshka_dims") and "model_name_or_path" in model_flags:
        values["matryoshka_dims"] = tiny_matryoshka_dims(values["matryoshka_dims"], model_flags["model_name_or_path"])
    values.pop("train_file_weights", None)
    if not keep_backend:
        values.pop("fsdp", None)
        values.pop("fsdp_config", None)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ("config.yaml" if keep_backend else "ddp_config.yaml")
    path.write_text(yaml.safe_dump(values))
    return path


def losses_of(output_dir: Path) -> list[float]:
    state = json.loads((output_dir / "checkpoint-2" / "trainer_state.json").read_text())
    steps = [(entry["step"], entry["loss"]) for entry in state["log_history"] if "loss" in entry]
    assert [step for step, _ in steps] == [1, 2]
    return [loss for _, loss in steps]


def assert_saved_like(trained: Path, baseline: Path, start: Path, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """The saved model holds full tensors equal to the baseline's, moved from the start, ``logit_scale`` 0-dim."""
    saved = load_file(trained / "model.safetensors")
    expected = load_file(baseline / "model.safetensors")
    first = load_file(start / "model.safetensors")
    assert saved.keys() == expected.keys()
    for name, tensor in saved.items():
        assert tensor.shape == expected[name].shape, name
        torch.testing.assert_close(tensor, expected[name], rtol=rtol, atol=atol, msg=name)
    assert saved["logit_scale"].shape == ()
    assert not torch.equal(saved["text_projection.weight"], first["text_projection.weight"])


@pytest.fixture(scope="module")
def start_above_bound(tmp_path_factory, start_without_dropout) -> Path:
    """The dropout-free stage-1 model with its temperature beyond the bound (log 500 > log 100): every backend must
    clamp it in place (master copy included) to give DDP's losses from the second step on."""
    model = AltCLIPModel.from_pretrained(start_without_dropout)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(500.0))
    path = tmp_path_factory.mktemp("above_bound")
    model.save_pretrained(path)
    AltCLIPProcessor.from_pretrained(start_without_dropout).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def contrastive_ddp(tmp_path_factory, toy, start_above_bound) -> Path:
    """The DDP baseline: the shipped FSDP config without its FSDP keys."""
    folder = tmp_path_factory.mktemp("ddp")
    model = {"model_name_or_path": str(start_above_bound)}
    config = toy_config(FSDP_CONFIG, folder, model, str(toy["captions"]), keep_backend=False)
    probed_run("contrastive", folder / "out", config)
    return folder / "out"


@pytest.mark.slow
def test_fsdp2_shards_trains_like_ddp_and_saves_full_weights(tmp_path, toy, start_above_bound, contrastive_ddp):
    """The shipped FSDP2 config on 2 gloo processes: inside the run the trained ``text_projection.weight`` is a
    DTensor whose local shard is smaller than the full tensor (the DDP baseline's probe shows a plain tensor: a
    fallback to DDP fails here), the frozen image tower is left whole out of the sharding, the losses are DDP's and
    the saved model holds DDP's full weights."""
    model = {"model_name_or_path": str(start_above_bound)}
    config = toy_config(FSDP_CONFIG, tmp_path, model, str(toy["captions"]))
    probed_run("contrastive", tmp_path / "fsdp", config, fsdp_on_cpu=True)
    fsdp, ddp = probe_reports(tmp_path / "fsdp"), probe_reports(contrastive_ddp)
    assert len(fsdp) == len(ddp) == 2
    for report in fsdp:
        assert report["distributed_type"] == "FSDP" and report["is_fsdp_enabled"], report
        trained = report["trained"]
        assert trained["dtensor"] and trained["full_shape"] == [16, 32], trained  # projection_dim x text width
        assert math.prod(trained["local_shape"]) < math.prod(trained["full_shape"]), trained
        assert not report["frozen"]["dtensor"], report  # the frozen tower is kept out of the sharding
    for report in ddp:
        assert report["distributed_type"] == "MULTI_CPU" and not report["trained"]["dtensor"], report
    assert losses_of(tmp_path / "fsdp") == pytest.approx(losses_of(contrastive_ddp), rel=1e-5)
    assert_saved_like(tmp_path / "fsdp", contrastive_ddp, start_above_bound)


@pytest.mark.parametrize(
    "backend, words",
    [(["--fsdp", "full_shard"], "FSDP"), (["--deepspeed", str(CONFIGS / "deepspeed_zero2.json")], "DeepSpeed")],
    ids=["fsdp", "deepspeed"],
)
def test_gradcache_under_fsdp_or_deepspeed_is_refused_in_one_line(
    tmp_path, toy, start_without_dropout, cli, backend, words
):
    from altclip.training.cli import main

    flags = ["--model_name_or_path", str(start_without_dropout), "--train_files", str(toy["captions"])]
    flags += ["--gradient_accumulation_steps", "2", "--output_dir", str(tmp_path / "out"), *QUIET]
    cli.refusal(main, "contrastive", *flags, *backend, only_line=True, contains=[f"not supported under {words}"])


# ZeRO-3 reduces, clips and updates in another order than DDP: step 2's loss agrees to about 3e-5 relative and the
# saved weights to about 1.5e-4 (the two steps move them by up to 1.6e-3 and an unclamped master temperature would
# change step 2's loss by far more, so a run that did not train or clamp still fails).
DEEPSPEED_LOSS_RTOL, DEEPSPEED_RTOL, DEEPSPEED_ATOL = 1e-4, 1e-3, 1e-4


def assert_deepspeed_in_effect(reports: list[dict], stage: int) -> None:
    """Read inside the run: DeepSpeed's engine at the configured ZeRO stage; under ZeRO-3 the trained weight is
    partitioned (its ``numel()`` 0, each rank holding less than ``ds_numel``), under ZeRO-2 it is whole."""
    assert len(reports) == 2
    for report in reports:
        assert report["distributed_type"] == "DEEPSPEED" and report["wrapper"] == "DeepSpeedEngine", report
        assert report["zero_stage"] == stage, report
        trained = report["trained"]
        if stage == 3:
            assert trained["numel"] == 0 and 0 < trained["ds_partition_numel"] < trained["ds_numel"], trained
        else:
            assert "ds_numel" not in trained and trained["numel"] > 0, trained


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_contrastive_trains_like_ddp_and_saves_full_weights(
    tmp_path, toy, start_above_bound, contrastive_ddp, stage
):
    """The shipped ZeRO config over the same run as the DDP baseline: DeepSpeed's engine trains (ZeRO-3: partitioned
    trained weights; the frozen image tower, partitioned by ``zero.Init`` in ``from_pretrained``, gathered where it
    runs), DDP's losses (the temperature beyond the bound clamped in DeepSpeed's fp32 master copy too, or step 2
    would differ), full weights saved."""
    model = {"model_name_or_path": str(start_above_bound)}
    config = toy_config(FSDP_CONFIG, tmp_path, model, str(toy["captions"]), keep_backend=False)
    deepspeed = CONFIGS / f"deepspeed_zero{stage}.json"
    probed_run("contrastive", tmp_path / "out", config, "--deepspeed", str(deepspeed))
    assert_deepspeed_in_effect(probe_reports(tmp_path / "out"), stage)
    assert losses_of(tmp_path / "out") == pytest.approx(losses_of(contrastive_ddp), rel=DEEPSPEED_LOSS_RTOL)
    assert_saved_like(tmp_path / "out", contrastive_ddp, start_above_bound, DEEPSPEED_RTOL, DEEPSPEED_ATOL)


def teacher_config(toy, folder: Path) -> Path:
    """Stage 1 on the toy models: the frozen teacher and the joined AltCLIP are built outside ZeRO-3's partitioning."""
    shipped = CONFIGS / "teacher_toy_cpu.yaml"
    flags = toy_teacher_inputs(toy)
    models = {"clip_model_name_or_path": flags[1], "text_encoder_name_or_path": flags[3]}
    return toy_config(shipped, folder, models, flags[5])


@pytest.fixture(scope="module")
def teacher_ddp(tmp_path_factory, toy) -> Path:
    folder = tmp_path_factory.mktemp("teacher_ddp")
    probed_run("teacher", folder / "out", teacher_config(toy, folder))
    return folder / "out"


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_teacher_learning_trains_like_ddp_and_saves_the_whole_model(tmp_path, toy, teacher_ddp, stage):
    """Stage 1 under the shipped ZeRO configs: the engine trains the text tower (ZeRO-3: partitioned), the teacher
    runs whole outside it, DDP's losses, and the complete AltCLIP (the untouched vision side included) is saved."""
    deepspeed = CONFIGS / f"deepspeed_zero{stage}.json"
    probed_run("teacher", tmp_path / "out", teacher_config(toy, tmp_path), "--deepspeed", str(deepspeed))
    assert_deepspeed_in_effect(probe_reports(tmp_path / "out"), stage)
    assert losses_of(tmp_path / "out") == pytest.approx(losses_of(teacher_ddp), rel=DEEPSPEED_LOSS_RTOL)
    saved = load_file(tmp_path / "out" / "model.safetensors")
    expected = load_file(teacher_ddp / "model.safetensors")
    assert saved.keys() == expected.keys()
    for name, tensor in saved.items():
        torch.testing.assert_close(tensor, expected[name], rtol=DEEPSPEED_RTOL, atol=DEEPSPEED_ATOL, msg=name)


@pytest.mark.slow
def test_fsdp2_teacher_learning_shards_the_text_tower_and_trains_like_ddp(tmp_path, toy, teacher_ddp):
    """Stage 1 under the shipped FSDP2 settings (its ``fsdp`` and ``fsdp_config``, whose ``CLIPEncoderLayer`` the
    text tower lacks): the trained ``transformation.weight`` is sharded, the teacher runs whole, DDP's losses and the
    complete AltCLIP saved."""
    config = teacher_config(toy, tmp_path)
    shipped = yaml.safe_load(FSDP_CONFIG.read_text())
    values = {**yaml.safe_load(config.read_text()), "fsdp": shipped["fsdp"], "fsdp_config": shipped["fsdp_config"]}
    config.write_text(yaml.safe_dump(values))
    probed_run("teacher", tmp_path / "out", config, fsdp_on_cpu=True)
    for report in probe_reports(tmp_path / "out"):
        assert report["distributed_type"] == "FSDP" and report["trained"]["dtensor"], report
        trained = report["trained"]
        assert math.prod(trained["local_shape"]) < math.prod(trained["full_shape"]), trained
    assert losses_of(tmp_path / "out") == pytest.approx(losses_of(teacher_ddp), rel=1e-5)
    saved = load_file(tmp_path / "out" / "model.safetensors")
    expected = load_file(teacher_ddp / "model.safetensors")
    assert saved.keys() == expected.keys()
    for name, tensor in saved.items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-4, atol=1e-5, msg=name)
