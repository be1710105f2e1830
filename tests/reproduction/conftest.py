"""One tiny reproduction (seed 0, one thread, the default model cache untouched) shared by the tests that only read
it: each tiny reproduction costs about half a minute, most of it loading XLM-R's real 250k-piece tokenizer."""

from pathlib import Path

import pytest
import torch

from altclip.reproduction.run import PRESETS, reproduce


@pytest.fixture(scope="session")
def tiny_reproduction(tmp_path_factory) -> tuple[Path, dict]:
    """(folder, report) of ``reproduce(..., PRESETS["tiny"], cache_default=False, seed=0)`` at one thread. Read it;
    never write into it."""
    folder = tmp_path_factory.mktemp("tiny_reproduction") / "seed-0"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = reproduce(folder, PRESETS["tiny"], cache_default=False, seed=0)
    finally:
        torch.set_num_threads(threads)
    return folder, report
