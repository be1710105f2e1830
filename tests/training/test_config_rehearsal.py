"""Every YAML under training/configs/ rehearsed through ``altclip-train`` on 2 CPU processes, as shipped except:

(a) model paths: the toy setup's tiny CLIP and XLM-R, or a tiny stage-1 result;
(b) each source: a local one of the same kind, braces and globs kept (``pipe:aws s3 cp s3://.../{...}.tar -`` ->
    ``pipe:cat DIR/{...}.tar``; ``hf://datasets/...`` -> an ``http://127.0.0.1`` server this test starts; local
    globs -> the same globs in a temporary folder), with fewer shards;
(c) what a CPU cannot do, switched off: ``bf16`` (CPU_OFF), FSDP (its flags are removed: ``fsdp``/``fsdp_config``:
    accelerate enables FSDP only on GPU-like devices; the shipped FSDP settings are run for real on gloo by
    tests/training/test_backends.py through a test-only switch), tensorboard (not installed: ``report_to none``).
    DeepSpeed stays as shipped (``deepspeed_zero2.json``): it runs on CPU gloo processes;
(d) output folders in the test's temporary folder, ``max_steps`` of the toy configs cut to 6 for time, and
    ``--record_trained_keys`` to see the rows that reach the forward;
(e) ``matryoshka_dims``: the same fractions of the tiny model's projection width as of ViT-L/14's 768 (the saved
    config shows they reached the model).

Each run's plan (``altclip-train plan --world_size 2`` on the same config, and the run's own ``plan.json``) is
checked against what it did: its steps, and no forward larger than the planned maximum batch.
"""

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import datasets
import pytest
import yaml
from ports import free_port
from stage_runs import REPO, tiny_matryoshka_dims, torchrun_env

from altclip.common.config_files import beside_config
from altclip.training.cli import main as train_main

CONFIGS = sorted((REPO / "training" / "configs").glob("*.yaml"))
CPU_OFF = {"bf16": False, "report_to": "none"}
NOT_ON_CPU = ("fsdp", "fsdp_config")
TOY_STEPS = 6


def copy_shards(toy, folder: Path, count: int) -> None:
    """`count` toy shards as 00000.tar ... with their sizes.json (webdataset's naming, as the configs write it)."""
    folder.mkdir(parents=True)
    toy_folder = Path(toy["shards"]).parent
    toy_sizes = json.loads((toy_folder / "sizes.json").read_text())
    sizes = {}
    for number in range(count):
        shutil.copy(toy_folder / f"shard-{number:04d}.tar", folder / f"{number:05d}.tar")
        sizes[f"{number:05d}.tar"] = toy_sizes[f"shard-{number:04d}.tar"]
    (folder / "sizes.json").write_text(json.dumps(sizes))


def local_source(spec: str, toy, work: Path, served_folder) -> str:
    """A local source of the same kind as `spec`, braces and globs kept (see the module doc, (b))."""
    folder, base = served_folder
    if spec.startswith("pipe:"):  # pipe:aws s3 cp s3://bucket/NAME/{a..b}.tar -  ->  pipe:cat WORK/NAME/{0..7}.tar
        name = spec.split("s3://", 1)[1].split("/")[1]
        copy_shards(toy, work / name, 8)
        return f"pipe:cat {work}/{name}/{{00000..00007}}.tar"
    if spec.startswith("hf://"):  # hf://datasets/ORG/NAME/{a..b}.tar  ->  http://127.0.0.1:PORT/NAME/{0..3}.tar
        name = spec.split("/")[4]
        copy_shards(toy, folder / name, 4)
        return f"{base}/{name}/{{00000..00003}}.tar"
    if spec.endswith(".jsonl") and "*" in spec:  # a glob of JSONL tables
        target = work / spec
        target.parent.mkdir(parents=True, exist_ok=True)
        lines = Path(toy["parallel"]).read_text().splitlines(keepends=True)
        half = len(lines) // 2
        (target.parent / "part-0.jsonl").write_text("".join(lines[:half]))
        (target.parent / "part-1.jsonl").write_text("".join(lines[half:]))
        return str(target)
    if spec.endswith(".parquet"):
        rows = [json.loads(line) for line in Path(toy["parallel"]).read_text().splitlines()]
        english = [{"english": row["english"], "translation": row["english"]} for row in rows[:20]]
        (work / spec).parent.mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_list(english).to_parquet(work / spec)
        return str(work / spec)
    return {"captions.jsonl": str(toy["captions"]), "parallel.jsonl": str(toy["parallel"])}[Path(spec).name]


def rehearsal_config(path: Path, toy, teacher_model_dir, work: Path, served_folder) -> tuple[str, dict]:
    """(stage, the config with (a)-(d) applied)."""
    config = yaml.safe_load(path.read_text())
    stage = "teacher" if "clip_model_name_or_path" in config else "contrastive"
    if stage == "teacher":
        config["clip_model_name_or_path"], config["text_encoder_name_or_path"] = str(toy["clip"]), str(toy["xlmr"])
    else:
        config["model_name_or_path"] = str(teacher_model_dir)
    config["train_files"] = [local_source(spec, toy, work, served_folder) for spec in config["train_files"]]
    if isinstance(config.get("deepspeed"), str):  # written beside the shipped config, which the test rewrites
        config["deepspeed"] = beside_config(str(path), config["deepspeed"])
    config.update({key: value for key, value in CPU_OFF.items() if key in config or key == "report_to"})
    for key in NOT_ON_CPU:
        config.pop(key, None)
    config = {key: value for key, value in config.items() if value is not None}
    config["output_dir"] = str(work / "out")
    if "toy" in path.name:
        config["max_steps"] = TOY_STEPS
    config["record_trained_keys"] = True
    if config.get("matryoshka_dims"):
        config["matryoshka_dims"] = tiny_matryoshka_dims(config["matryoshka_dims"], teacher_model_dir)
    return stage, config


@pytest.mark.parametrize("path", CONFIGS, ids=[path.stem for path in CONFIGS])
def test_shipped_config_runs_on_two_cpu_processes_as_planned(
    path, tmp_path, toy, teacher_model_dir, served_folder, capsys
):
    work = tmp_path / "work"
    work.mkdir()
    stage, config = rehearsal_config(path, toy, teacher_model_dir, work, served_folder)
    rehearsed = work / path.name
    rehearsed.write_text(yaml.safe_dump(config))
    train_main(["plan", "--stage", stage, "--config", str(rehearsed), "--world_size", "2", "--format", "json"])
    planned = json.loads(capsys.readouterr().out)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2"]
    launcher += ["--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "altclip.training.cli"]
    result = subprocess.run(
        [*launcher, stage, "--config", str(rehearsed), "--disable_tqdm", "true"],
        cwd=work,  # the configs' relative paths (data cache, ...) land in the test's folder
        env=torchrun_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    out = work / "out"
    ran = json.loads((out / "plan.json").read_text())
    assert ran["data"] == planned["data"] and ran["total_steps"] == planned["total_steps"]
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["global_step"] == planned["total_steps"]
    if "matryoshka_dims" in config:  # the shipped Matryoshka widths reached the loss and the saved model
        dims = [int(dim) for dim in config["matryoshka_dims"].split(",")]
        assert json.loads((out / "config.json").read_text())["matryoshka_dims"][: len(dims)] == dims
    rows, keys = Counter(), Counter()
    for rank_file in (out / "trained_keys").glob("rank-*.tsv"):
        for line in rank_file.read_text().splitlines():
            step, key = line.split("\t", 1)
            rows[(rank_file.name, step)] += 1
            keys[key] += 1
    batch = planned["data"]["per_device_batch"]
    assert len(rows) == 2 * planned["total_steps"] and max(rows.values()) <= batch["max"] <= batch["asked"]
    epochs, rest = divmod(planned["total_steps"], planned["data"]["batches_per_rank_per_epoch"])
    if "train_file_weights" not in config and rest == 0:  # whole epochs: every sample as often as the plan says
        assert sum(keys.values()) == epochs * planned["data"]["samples_per_epoch"] and set(keys.values()) == {epochs}
