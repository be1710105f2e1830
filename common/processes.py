"""The end of a torchrun job's process group, shared by every command-line entry point that may run under torchrun."""

import contextlib
import gc
import logging
import sys
import traceback
from collections.abc import Iterator

logger = logging.getLogger(__name__)


def release_processes(after_failure: bool = False) -> None:
    """Frees what still holds the process group, then ends it, before the interpreter exits. Left to interpreter
    exit, gloo's threads can abort a process whose work is done ("terminate called without an active exception",
    SIGABRT, no Python frame), and torchrun then reports the whole run as failed: seen with ``altclip-train`` when a
    rank other than 0 returns while rank 0 still writes the model. Ending the group is not enough: a Trainer is a
    reference cycle, so its DDP model (whose reducer holds the group) outlives ``train()`` until the cyclic garbage
    collector runs — at interpreter exit, if nobody runs it before. Hence ``gc.collect()`` first (measured by
    ``benchmarks/gloo_exit_abort.py``: 6 of 40 two-process runs aborted without it, 0 of 40 with it). Local to
    this process (no collective). A job that never imported torch has no process group, and this does not import
    it. A failure to end it is a warning: the job's own outcome stands. `after_failure`:
    only a gloo group is ended (locally, at once); NCCL's orderly shutdown (``ncclCommDestroy``) waits for peers that
    may be blocked in a collective, so a failed rank would hang there instead of exiting, and torchrun would neither
    see the failure nor restart the group."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return
    if after_failure and torch.distributed.get_backend() != "gloo":
        return
    gc.collect()
    try:
        torch.distributed.destroy_process_group()
    except Exception as error:  # noqa: BLE001 - the work is done; its exit status must not change
        first_line = (str(error).splitlines() or [type(error).__name__])[0]
        logger.warning("the process group was not ended cleanly: %s", first_line)


@contextlib.contextmanager
def processes_released_when_done(clean_exit_statuses: tuple[int, ...] = ()) -> Iterator[None]:
    """Around a command's work: ends the process group (`release_processes`) when the work finished or exited with
    status 0 or one of `clean_exit_statuses` (a preempted run's), and after a failure only where that cannot hang."""
    try:
        yield
    except SystemExit as stop:
        free_frames_of(stop)
        release_processes(after_failure=stop.code not in (None, 0, *clean_exit_statuses))
        raise
    except BaseException as error:
        free_frames_of(error)
        release_processes(after_failure=True)
        raise
    else:
        release_processes()


def free_frames_of(error: BaseException) -> None:
    """Drops the local variables of the finished frames in `error`'s traceback and in those of the exceptions it
    was raised from or during (a one-line error's SystemExit keeps the original as its context): they may hold the
    Trainer, and with it the process group. The traceback's lines stay printable."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)
        error = error.__cause__ or error.__context__
