"""How often a finished two-process gloo job aborts at exit (SIGABRT, "terminate called without an active
exception"), with the process group merely destroyed against `common.processes.release_processes`.

Each run is a real ``torchrun --nproc_per_node 2`` job: a DDP model trains 5 steps and is then held only by a
reference cycle, as a Trainer holds it after ``train()`` returns; rank 0 lingers 0.5 s (as it does while writing
the model). The two ways of ending run alternately, so that both see the same machine load. Prints the abort rate
of each and writes benchmarks/results/gloo_exit_abort.json.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

JOB = """
import sys, time, torch, torch.distributed as dist
dist.init_process_group("gloo")
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(64, 64))
optimizer = torch.optim.SGD(model.parameters(), 0.1)
for _ in range(5):
    model(torch.randn(8, 64)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()

class Trainer:
    pass

trainer = Trainer()
trainer.me, trainer.model = trainer, model  # a cycle holding the DDP model, whose reducer holds the group
del model, optimizer, trainer
rank = dist.get_rank()
if sys.argv[1] == "release":
    from altclip.common.processes import release_processes
    release_processes()
else:
    dist.destroy_process_group()
if rank == 0:
    time.sleep(0.5)
"""

WAYS = ("destroy", "release")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def aborted(script: Path, way: str) -> bool:
    """One two-process run; True when a rank died by SIGABRT (torchrun: exitcode -6)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2"]
    command += ["--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script), way]
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    if done.returncode != 0 and "exitcode: -6" not in done.stderr:
        raise RuntimeError(f"a run failed otherwise: {done.stderr[-2000:]}")
    return done.returncode != 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="runs of each way")
    parser.add_argument("--output", default=str(REPO / "benchmarks/results/gloo_exit_abort.json"))
    args = parser.parse_args()
    aborts = dict.fromkeys(WAYS, 0)
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "job.py"
        script.write_text(JOB)
        for run in range(args.runs):
            for way in WAYS:
                aborts[way] += aborted(script, way)
            print(f"run {run + 1}/{args.runs}: aborts {aborts}", flush=True)
    result = {way: {"runs": args.runs, "aborted": aborts[way]} for way in WAYS}
    for way in WAYS:
        print(f"{way:8s} {aborts[way]:3d} of {args.runs} runs aborted at exit")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
