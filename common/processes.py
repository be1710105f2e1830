"""The end of a torchrun job's process group, shared by every command-line entry point that may run under torchrun."""

import sys


def release_processes() -> None:
    """Ends the process group (if any) before the interpreter exits. Left to interpreter exit, gloo's threads can
    abort a process whose work is done ("terminate called without an active exception", SIGABRT), and torchrun then
    reports the whole run as failed: seen with ``altclip-train`` when a rank other than 0 returns while rank 0 still
    writes the model. Local to this process (no collective), so it is safe after an error as well. A job that never
    imported torch has no process group, and this does not import it."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
