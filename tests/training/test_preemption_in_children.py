"""The preemption handler is the training process's alone: a forked child (a datasets table-build worker, a DataLoader
worker) that inherits it dies of SIGTERM as it would without it. Before, the child logged "Received SIGTERM" and
went on waiting, and datasets' ``Pool.terminate()`` in the parent waited for it forever (a rehearsal run hung in its
table build)."""

import multiprocessing
import signal
import time

from altclip.training.loop.preemption import PreemptionSignals


def wait_forever() -> None:
    while True:
        time.sleep(0.05)


def test_a_forked_child_dies_of_sigterm_and_the_parent_still_records_it():
    handler = PreemptionSignals([signal.SIGTERM, signal.SIGUSR1])
    try:
        child = multiprocessing.get_context("fork").Process(target=wait_forever)
        child.start()
        time.sleep(0.3)
        child.terminate()  # SIGTERM, as Pool.terminate() sends it
        child.join(timeout=10)
        alive = child.is_alive()
        if alive:
            child.kill()
            child.join()
        assert not alive and child.exitcode == -signal.SIGTERM
        signal.raise_signal(signal.SIGUSR1)  # the training process itself still records, and does not die
        assert handler.received == signal.SIGUSR1
    finally:
        handler.restore()
