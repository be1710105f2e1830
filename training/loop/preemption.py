"""Preemption that loses at most the step in flight: on a configured signal (SLURM's ``--signal``, a scheduler's
SIGTERM) every rank finishes its step, the run writes a checkpoint (the Trainer's own, atomic as every checkpoint),
and the program exits with `PREEMPTED_EXIT_STATUS`; the same command with ``--resume_from_checkpoint auto``
continues from it.

Ranks get the signal at different moments (a scheduler signals each node's processes, torchrun forwards it to its
workers), so a rank may see it one step before another: after every optimizer step the ranks agree on it with one
all-reduce of one number, and all of them stop at the same step.
"""

import logging
import os
import signal
import threading
from collections.abc import Sequence

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from altclip.common.errors import UsageError

logger = logging.getLogger(__name__)

# sysexits.h EX_TEMPFAIL: "a temporary failure; the user is invited to retry" (the job script requeues the job).
PREEMPTED_EXIT_STATUS = 75
DEFAULT_PREEMPTION_SIGNALS = "SIGTERM,SIGUSR1"


class TrainingPreempted(Exception):
    """The run stopped on a preemption signal after writing `checkpoint`; not an error, a reason to run again."""

    def __init__(self, signal_name: str, step: int, checkpoint: str):
        super().__init__(
            f"preempted by {signal_name}: stopped after step {step} and saved {checkpoint}; run the same command "
            "with --resume_from_checkpoint auto (or true) to continue from it"
        )
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint


def parse_signals(text: str) -> list[signal.Signals]:
    """``"SIGTERM,SIGUSR1"`` (or ``TERM,USR1``; ``none`` or empty for none) as signals; an unknown name or a signal
    Python cannot handle (SIGKILL, SIGSTOP) is refused in one line."""
    if text.strip().lower() in ("", "none"):
        return []
    signals = []
    for name in (part.strip().upper() for part in text.split(",") if part.strip()):
        full = name if name.startswith("SIG") else f"SIG{name}"
        number = getattr(signal.Signals, full, None)
        if number is None or number in (signal.SIGKILL, signal.SIGSTOP):
            raise UsageError(
                f"--preemption_signals: {name} is not a signal a run can catch; name signals such as SIGTERM,SIGUSR1 "
                "(or none)."
            )
        signals.append(number)
    return signals


def check_no_second_handler(signals: Sequence[signal.Signals], training_args) -> None:
    """transformers' ``--enable_jit_checkpoint`` takes SIGTERM over with a handler of its own, which saves on each
    rank without agreeing on the step and then lets the run end as finished; refused beside ours."""
    if getattr(training_args, "enable_jit_checkpoint", False) and signals:
        raise UsageError(
            "--enable_jit_checkpoint (transformers' SIGTERM checkpoint) would replace --preemption_signals; drop it: "
            "the run already saves a checkpoint on SIGTERM and SIGUSR1, at the same step on every rank."
        )


class PreemptionSignals:
    """Records the first configured signal received. Installed before the model loads, so that a signal that comes
    early is not the default action (SIGUSR1's: end the process at once) but a stop at the first step."""

    def __init__(self, signals: Sequence[signal.Signals]):
        self.signals = list(signals)
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}
        self._owner = os.getpid()
        if threading.current_thread() is threading.main_thread():  # Python only handles signals there
            for number in self.signals:
                self._previous[number] = signal.signal(number, self._handle)

    def restore(self) -> None:
        """Puts back the handlers there were before (a run inside another Python program leaves them as found)."""
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous = {}

    def _handle(self, number: int, frame) -> None:
        if os.getpid() != self._owner:
            # a forked child (a datasets table-build worker; DataLoader workers install PyTorch's own SIGTERM
            # handler) inherits this one: it must die as it would without it, or the parent's Pool.terminate()
            # waits for it forever
            signal.signal(number, signal.SIG_DFL)
            os.kill(os.getpid(), number)
            return
        if self.received is None:
            self.received = signal.Signals(number)
            logger.warning("Received %s: the run stops after this step and saves a checkpoint", self.received.name)


class PreemptionCallback(TrainerCallback):
    """After every optimizer step, all ranks learn whether any received a preemption signal (one all-reduce of one
    number); if so, each saves its part of the checkpoint of this step and training stops."""

    def __init__(self, received: PreemptionSignals):
        self.received = received
        self.stopped_by: signal.Signals | None = None
        self.step: int | None = None

    def _agreed_signal(self, device: torch.device) -> int:
        number = int(self.received.received or 0)
        if not (dist.is_available() and dist.is_initialized()):
            return number
        flag = torch.tensor([number], dtype=torch.int64, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def on_step_end(self, args, state, control, **kwargs):
        if not self.received.signals or self.stopped_by is not None:
            return
        number = self._agreed_signal(args.device)
        if number:
            self.stopped_by, self.step = signal.Signals(number), state.global_step
            control.should_save = True
            control.should_training_stop = True
