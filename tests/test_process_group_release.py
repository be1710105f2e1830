"""Every command-line entry point that runs under torchrun ends its process group before it returns: left to
interpreter exit, gloo's threads aborted a finished rank (SIGABRT, "terminate called without an active exception")
while rank 0 still wrote the model, and torchrun reported the whole training run as failed."""

import json
import subprocess
import sys

import pytest
from ports import free_port
from stage_runs import REPO, torchrun_env

# The job itself is replaced by one that only proves the process group is up (a barrier over gloo); what is tested
# is what each command line does around it, in real torchrun processes.
SCRIPT = """
import json, os, sys
import torch

torch.distributed.init_process_group("gloo")
rank = torch.distributed.get_rank()

def job(*args, **kwargs):
    torch.distributed.barrier()
    return {}

ENTRY
outcome = {"rank": rank, "initialized_after": torch.distributed.is_initialized()}
with open(os.path.join(sys.argv[1], f"rank-{rank}.json"), "w") as handle:
    json.dump(outcome, handle)
"""

ENTRIES = {
    "altclip-train contrastive": ("import altclip.training.cli as cli\ncli.train = job\ncli.main(['contrastive'])"),
    "altclip-train add-language": (
        "import altclip.training.add_language as add\nadd.add_language = job\n"
        "import altclip.training.cli as cli\ncli.main(['add-language'])"
    ),
    "altclip-eval": "import altclip.evaluation.cli as cli\ncli.evaluate = job\ncli.main(['zeroshot'])",
    "altclip-index build": (
        "import altclip.search.cli as cli\ncli.build_command = job\n"
        "cli.index_main(['build', '--images', 'folder', '--output', 'index'])"
    ),
}


@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_the_process_group_is_ended_before_the_command_returns(tmp_path, entry):
    script = tmp_path / "entry.py"
    script.write_text(SCRIPT.replace("ENTRY", ENTRIES[entry]))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2"]
    launcher += ["--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script), str(tmp_path)]
    done = subprocess.run(launcher, cwd=REPO, env=torchrun_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    outcomes = [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    assert outcomes == [{"rank": 0, "initialized_after": False}, {"rank": 1, "initialized_after": False}]


class FakeGroup:
    """torch.distributed's default group as the release sees it: its backend, and whether it was destroyed."""

    def __init__(self, monkeypatch, backend: str, destroy_error: Exception | None = None):
        import torch

        self.destroyed = 0
        self.error = destroy_error
        monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.distributed, "get_backend", lambda group=None: backend)
        monkeypatch.setattr(torch.distributed, "destroy_process_group", self.destroy)

    def destroy(self, group=None):
        self.destroyed += 1
        if self.error is not None:
            raise self.error


def run_released(work, clean=()):
    from altclip.common.processes import processes_released_when_done

    with processes_released_when_done(clean_exit_statuses=clean):
        work()


def stop(status):
    raise SystemExit(status)


def broken():
    raise RuntimeError("a bug on this rank")


@pytest.mark.parametrize(
    "backend, work, clean, destroyed",
    [
        ("nccl", lambda: None, (), 1),  # finished: ended on every backend
        ("nccl", lambda: stop(0), (), 1),
        ("nccl", lambda: stop(75), (75,), 1),  # preempted after its checkpoint: a clean end
        ("nccl", lambda: stop(2), (75,), 0),  # failed: NCCL's shutdown could wait for blocked peers forever
        ("nccl", broken, (), 0),
        ("gloo", lambda: stop(2), (), 1),  # failed on gloo: ended locally, at once
        ("gloo", broken, (), 1),
    ],
    ids=["done", "exit 0", "preempted", "failed nccl", "bug nccl", "failed gloo", "bug gloo"],
)
def test_the_group_is_ended_after_success_and_only_where_it_cannot_hang_after_failure(
    monkeypatch, backend, work, clean, destroyed
):
    group = FakeGroup(monkeypatch, backend)
    try:
        run_released(work, clean)
    except (SystemExit, RuntimeError):
        pass
    assert group.destroyed == destroyed


def test_an_error_while_ending_the_group_keeps_the_job_s_exit_status(monkeypatch, caplog):
    FakeGroup(monkeypatch, "nccl", destroy_error=RuntimeError("NCCL error: unhandled system error\ndetail"))
    with pytest.raises(SystemExit) as stopped:
        run_released(lambda: stop(75), clean=(75,))
    assert stopped.value.code == 75
    assert "the process group was not ended cleanly: NCCL error: unhandled system error" in caplog.text


def test_an_error_without_a_message_while_ending_the_group_is_named_by_its_type(monkeypatch, caplog):
    FakeGroup(monkeypatch, "gloo", destroy_error=RuntimeError(""))
    run_released(lambda: None)
    assert "the process group was not ended cleanly: RuntimeError" in caplog.text


class Cycle:
    """Like a Trainer: a reference cycle, freed only by the cyclic garbage collector, holding the DDP model whose
    reducer holds the process group."""

    def __init__(self):
        self.me = self


@pytest.fixture
def no_automatic_collection():
    import gc

    gc.disable()
    yield
    gc.enable()


def freed_before_destroy(monkeypatch, backend: str, work) -> bool:
    """Runs `work(holder)` released; True when the holder (a cycle) was freed before the group was destroyed."""
    import weakref

    box = [Cycle()]
    alive = weakref.ref(box[0])
    freed = []
    group = FakeGroup(monkeypatch, backend)
    group.destroy = lambda group=None: freed.append(alive() is None)
    monkeypatch.setattr("torch.distributed.destroy_process_group", group.destroy)

    def run():
        work(box.pop())

    try:
        run_released(run)
    except SystemExit:
        pass
    return freed == [True]


def one_line_error_of(holder):
    """A bug under run_with_one_line_errors: its frame holds the holder, the SystemExit keeps it as context."""

    def job(trainer):
        raise RuntimeError("bad value")

    try:
        job(holder)
    except RuntimeError:
        raise SystemExit(1) from None


def test_what_holds_the_group_is_freed_before_the_group_is_ended(monkeypatch, no_automatic_collection):
    """Ending the group while a Trainer cycle still holds it left its end to interpreter exit, where gloo aborted."""
    assert freed_before_destroy(monkeypatch, "gloo", lambda holder: None)
    assert freed_before_destroy(monkeypatch, "gloo", one_line_error_of)  # the error's frames let go of it too
