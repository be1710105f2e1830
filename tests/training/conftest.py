"""Fixtures of the training tests: the toy setup (tiny CLIP, tiny XLM-R, shapes data) and a CLI runner."""

from pathlib import Path

import pytest
from stage_runs import run_stage, teacher_flags

from training.toy_setup import write_toy_setup


@pytest.fixture(scope="session")
def toy(tmp_path_factory) -> dict[str, Path]:
    return write_toy_setup(tmp_path_factory.mktemp("toy"), images_per_class=2)


@pytest.fixture(scope="session")
def teacher_model_dir(tmp_path_factory, toy) -> Path:
    """A stage-1 result on the toy setup, the starting point of the contrastive tests."""
    output_dir = tmp_path_factory.mktemp("stage1")
    run_stage("teacher", output_dir, *teacher_flags(toy, "--max_steps", "20", "--save_strategy", "no"))
    return output_dir
