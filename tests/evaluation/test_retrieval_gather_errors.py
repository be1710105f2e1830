"""Under torchrun, an error in one process's share (of any kind) is raised, in one line, by every process."""

import json
import subprocess
import sys

from ports import free_port
from stage_runs import REPO, torchrun_env

SCRIPT = """
import json, os, sys
import torch
from altclip.common.processes import release_processes
from altclip.evaluation.retrieval import _gathered, process_state

state = process_state("cpu")
rank = state.process_index
outcome = {"rank": rank, "processes": state.num_processes, "backend": torch.distributed.get_backend()}
assert _gathered(lambda: [rank]) == [[0], [1]]

def share():
    if rank == 1:
        raise KIND("share of rank 1 broke\\nsecond line")
    return rank

try:
    _gathered(share)
except Exception as error:
    outcome["error"] = [type(error).__name__, str(error)]
with open(os.path.join(sys.argv[1], f"rank-{rank}.json"), "w") as handle:
    json.dump(outcome, handle)
release_processes()  # as altclip-eval does at its end
"""


def run_two(tmp_path, kind: str) -> list[dict]:
    script = tmp_path / f"gather_{kind}.py"
    script.write_text(SCRIPT.replace("KIND", kind))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2"]
    launcher += ["--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script), str(tmp_path)]
    done = subprocess.run(launcher, cwd=REPO, env=torchrun_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in (0, 1)]


def test_a_bug_in_one_process_is_the_same_one_line_error_in_both(tmp_path):
    outcomes = run_two(tmp_path, "TypeError")  # not OSError/ValueError: the old gather let rank 0 wait forever
    assert [(o["rank"], o["processes"], o["backend"]) for o in outcomes] == [(0, 2, "gloo"), (1, 2, "gloo")]
    expected = ["RuntimeError", "process 1 of 2 failed: TypeError: share of rank 1 broke"]
    assert outcomes[0]["error"] == outcomes[1]["error"] == expected


def test_bad_data_in_one_process_is_a_value_error_in_both(tmp_path):
    outcomes = run_two(tmp_path, "FileNotFoundError")
    expected = ["ValueError", "process 1 of 2 failed: FileNotFoundError: share of rank 1 broke"]
    assert outcomes[0]["error"] == outcomes[1]["error"] == expected
