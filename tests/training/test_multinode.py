"""Beyond one node, with real processes: two torchrun agents as two nodes (c10d rendezvous on 127.0.0.1), a worker
SIGKILLed under ``--max_restarts 1``, and the shipped ``training/launch/slurm.sbatch`` on a one-node SLURM cluster
preempted by ``scancel --signal=USR1 --batch`` and requeued. Each run ends with the weights and the trained keys of
one uninterrupted run of the same stage-2 job (2 processes, the same global batch)."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import torch
from ports import free_port
from safetensors.torch import load_file
from slurm_cluster import job_field, logs, slurm_cluster, why_no_cluster
from stage_runs import QUIET, REPO, run_stage, stage_refusal, teacher_flags, torchrun, torchrun_env, trained_steps

from altclip.common.errors import UsageError
from altclip.training.loop.preemption import PREEMPTED_EXIT_STATUS, parse_signals
from altclip.training.stages import resume_checkpoint

STEPS, SAVE_EVERY = 12, 4


def stage2_flags(toy, start) -> list[str]:
    return [
        "--model_name_or_path", str(start), "--train_files", str(toy["captions"]), "--per_device_train_batch_size",
        "4", "--max_steps", str(STEPS), "--save_steps", str(SAVE_EVERY), "--logging_steps", "1",
        "--record_trained_keys", "true",
    ]  # fmt: skip


def elastic_command(output_dir: Path, endpoint: str, *launcher: str, flags: list[str]) -> list[str]:
    """torchrun with a c10d rendezvous at `endpoint` (the shipped recipe's launcher), then altclip-train."""
    command = [sys.executable, "-m", "torch.distributed.run", "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint]
    command += [*launcher, "-m", "altclip.training.cli", "contrastive", "--output_dir", str(output_dir), *QUIET]
    return [*command, *flags]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, toy, start_without_dropout) -> Path:
    """One node, 2 processes, no interruption: the run every other one must equal."""
    output_dir = tmp_path_factory.mktemp("uninterrupted")
    torchrun("contrastive", output_dir, 2, *stage2_flags(toy, start_without_dropout))
    return output_dir


def assert_same_run(output_dir: Path, reference: Path) -> None:
    """Final weights bit for bit, and every (step, sample) pair trained exactly as in the reference."""
    weights, expected = load_file(output_dir / "model.safetensors"), load_file(reference / "model.safetensors")
    assert weights.keys() == expected.keys()
    different = [name for name in weights if not torch.equal(weights[name], expected[name])]
    assert not different, different[:5]
    assert trained_steps(output_dir) == trained_steps(reference)
    assert len(trained_steps(reference)) == STEPS * 8


def test_two_torchrun_agents_as_two_nodes_train_like_one_node(tmp_path, toy, start_without_dropout, uninterrupted):
    """--nnodes 2 --node_rank 0/1, one process each, c10d rendezvous on 127.0.0.1, one shared output folder."""
    endpoint = f"127.0.0.1:{free_port()}"
    flags = stage2_flags(toy, start_without_dropout)
    agents = [
        subprocess.Popen(
            elastic_command(
                tmp_path, endpoint, "--nnodes", "2", "--node_rank", str(node), "--nproc_per_node", "1", flags=flags
            ),
            cwd=tmp_path.parent,
            env=torchrun_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node in (0, 1)
    ]
    outputs = [agent.communicate(timeout=600)[0] for agent in agents]
    assert [agent.returncode for agent in agents] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["world_size"] == 2 and plan["nodes"] == 2  # one world of two processes on two agents, not two runs
    assert sorted(path.name for path in (tmp_path / "trained_keys").iterdir()) == ["rank-0.tsv", "rank-1.tsv"]
    assert_same_run(tmp_path, uninterrupted)


def worker_processes(agent: psutil.Process) -> list[psutil.Process]:
    return [child for child in agent.children() if "altclip.training.cli" in " ".join(child.cmdline())]


@pytest.mark.slow
def test_a_sigkilled_worker_is_restarted_by_torchrun_and_the_run_equals_the_uninterrupted_one(
    tmp_path, toy, start_without_dropout, uninterrupted
):
    """--max_restarts 1 with --resume_from_checkpoint auto (the recipe's): the restarted workers resume from the
    newest complete checkpoint; the steps the killed group trained past it are trained again, once."""
    output_dir = tmp_path / "run"
    launcher = ["--nnodes", "1", "--nproc_per_node", "2", "--max_restarts", "1"]
    flags = [*stage2_flags(toy, start_without_dropout), "--resume_from_checkpoint", "auto"]
    command = elastic_command(output_dir, f"127.0.0.1:{free_port()}", *launcher, flags=flags)
    log = open(tmp_path / "torchrun.log", "w+")
    env = {**torchrun_env(), "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}  # as the recipes set it (see slurm.sbatch)
    agent = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not (output_dir / f"checkpoint-{SAVE_EVERY}" / "trainer_state.json").is_file():
        assert agent.poll() is None and time.monotonic() < deadline, (tmp_path / "torchrun.log").read_text()[-3000:]
        time.sleep(0.02)
    victim = worker_processes(psutil.Process(agent.pid))[-1]
    victim.kill()
    assert agent.wait(timeout=600) == 0, (tmp_path / "torchrun.log").read_text()[-5000:]
    text = (tmp_path / "torchrun.log").read_text()
    assert "failed (exitcode: -9)" in text  # torchrun saw the SIGKILL; it then restarted the group, which finished
    resumed = [int(step) for step in re.findall(r"Resuming from checkpoint-(\d+)", text)]
    assert resumed and resumed[0] >= SAVE_EVERY, text[-3000:]
    assert_same_run(output_dir, uninterrupted)


@pytest.fixture
def cluster():
    reason = why_no_cluster()
    if reason:
        pytest.skip(reason)
    with slurm_cluster() as env:
        yield env


def wait_for(condition, what: str, seconds: float, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        text = log.read_text(errors="replace")[-4000:] if log.is_file() else "(no log yet)"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{text}"
        time.sleep(0.1)


@pytest.mark.slow
def test_slurm_job_preempted_by_usr1_saves_requeues_and_ends_like_the_uninterrupted_run(
    tmp_path, cluster, toy, start_without_dropout, uninterrupted
):
    """The shipped sbatch script, as shipped but for what this CPU cluster lacks (GPUs, 64 CPUs, 8 nodes): stage 2
    on the toy data; after checkpoint-4, ``scancel --signal=USR1 --batch``; the run saves a checkpoint after its step
    and the script requeues the job; the requeued job resumes by itself and ends as the uninterrupted run ends.
    SLURM holds a requeued job back for two minutes (its begin time); the test releases it two seconds later."""
    output_dir, log = tmp_path / "run", tmp_path / "job.log"
    env = {**torchrun_env(), **cluster, "NPROC_PER_NODE": "2", "RDZV_PORT": str(free_port()), "MAX_RESTARTS": "0"}
    sbatch = ["sbatch", "--parsable", "--nodes", "1", "--gpus-per-node", "0", "--cpus-per-task", "1"]
    sbatch += ["--output", str(log), str(REPO / "training" / "launch" / "slurm.sbatch")]
    flags = ["contrastive", "--output_dir", str(output_dir), *QUIET, *stage2_flags(toy, start_without_dropout)]
    submitted = subprocess.run([*sbatch, *flags], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]

    wait_for(lambda: (output_dir / f"checkpoint-{SAVE_EVERY}" / "trainer_state.json").is_file(), "checkpoint", 300, log)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=env, check=True)

    def requeued() -> bool:
        return job_field(env, job, "Restarts") == "1" and job_field(env, job, "JobState") == "PENDING"

    wait_for(requeued, "the requeue", 300, log)
    # slurmd revoked the killed job's credential and refuses ("Job credential revoked") a new one created in the same
    # second (it compares whole seconds); SLURM's own two-minute hold avoids that, so wait two seconds instead
    time.sleep(2)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=env, check=True)
    ended = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
    wait_for(lambda: job_field(env, job, "JobState") in ended, "the requeued job to end", 600, log)
    text = log.read_text()
    daemons = logs(Path(cluster["SLURM_CONF"]).parent)  # why SLURM ended the job, where the job log cannot say
    assert job_field(env, job, "JobState") == "COMPLETED", text[-4000:] + daemons
    stopped = re.search(r"preempted by SIGUSR1: stopped after step (\d+) and saved (\S+)checkpoint-\1", text)
    assert stopped, text[-4000:]
    step = int(stopped.group(1))
    assert SAVE_EVERY <= step < STEPS  # stopped mid-run, not at the end
    assert "got SIGUSR1" in text and f"requeueing job {job}" in text and "restart 1)" in text
    assert f"Resuming from checkpoint-{step}" in text  # the requeued job found the preemption's checkpoint
    assert_same_run(output_dir, uninterrupted)


@pytest.mark.slow
def test_sigusr1_in_process_stops_after_a_step_with_a_checkpoint_exit_75_and_auto_resumes_to_the_same_model(
    tmp_path, toy
):
    """One process, stage 1: SIGUSR1 (sent from a thread once checkpoint-2 exists) stops the run after the step in
    flight with that step's checkpoint and no final model, exit status 75; --resume_from_checkpoint auto ends with
    the weights of a run never stopped. The handlers the run installed are gone afterwards."""
    flags = ["--max_steps", "12", "--save_steps", "2", "--resume_from_checkpoint", "auto"]
    stopped, whole = tmp_path / "stopped", tmp_path / "whole"
    before = signal.getsignal(signal.SIGUSR1), signal.getsignal(signal.SIGTERM)

    def signal_after_first_checkpoint():
        while not (stopped / "checkpoint-2" / "trainer_state.json").is_file():
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGUSR1)

    threading.Thread(target=signal_after_first_checkpoint, daemon=True).start()
    with pytest.raises(SystemExit) as ended:
        run_stage("teacher", stopped, *teacher_flags(toy, *flags))
    assert ended.value.code == PREEMPTED_EXIT_STATUS
    assert (signal.getsignal(signal.SIGUSR1), signal.getsignal(signal.SIGTERM)) == before
    step = max(int(path.name.split("-")[1]) for path in stopped.glob("checkpoint-*"))
    assert 2 <= step < 12 and not (stopped / "model.safetensors").exists()
    run_stage("teacher", stopped, *teacher_flags(toy, *flags))
    run_stage("teacher", whole, *teacher_flags(toy, *flags))
    weights, expected = load_file(stopped / "model.safetensors"), load_file(whole / "model.safetensors")
    assert all(torch.equal(weights[name], expected[name]) for name in expected)


@pytest.mark.parametrize(
    "text, message",
    [("SIGUSR3", "SIGUSR3 is not a signal"), ("SIGKILL", "SIGKILL is not a signal a run can catch")],
)
def test_preemption_signals_that_cannot_be_caught_are_refused_in_one_line(text, message):
    with pytest.raises(UsageError, match=message):
        parse_signals(text)


def test_transformers_jit_checkpoint_beside_the_preemption_signals_is_refused_in_one_line(tmp_path, toy, cli):
    flags = teacher_flags(toy, "--enable_jit_checkpoint", "true")
    expected = ["--enable_jit_checkpoint (transformers' SIGTERM checkpoint) would replace"]
    stage_refusal(cli, "teacher", tmp_path, *flags, contains=expected)
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_resume_auto_takes_the_newest_complete_checkpoint_or_starts_fresh(tmp_path):
    """What a requeued job or a restarted worker runs: no checkpoint (or only an interrupted one) starts at step 0,
    where --resume_from_checkpoint true would refuse; otherwise the newest one with its trainer_state.json."""
    args = SimpleNamespace(resume_from_checkpoint="auto", output_dir=str(tmp_path))
    assert resume_checkpoint(args) is None
    (tmp_path / "checkpoint-4").mkdir()
    assert resume_checkpoint(args) is None
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-8").mkdir()  # killed while it was written
    assert resume_checkpoint(args) == str(tmp_path / "checkpoint-4")


def test_preemption_signals_are_read_by_name_with_or_without_sig():
    assert parse_signals("TERM, SIGUSR1") == [parse_signals("SIGTERM")[0], parse_signals("USR1")[0]]
    assert parse_signals("none") == []
