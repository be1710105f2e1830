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
