"""Fixtures of the training tests: the toy setup (tiny CLIP, tiny XLM-R, shapes data) and a CLI runner."""

from pathlib import Path

import pytest
from stage_runs import run_stage

from training.toy_setup import write_toy_setup


@pytest.fixture(scope="session")
def toy(tmp_path_factory) -> dict[str, Path]:
    return write_toy_setup(tmp_path_factory.mktemp("toy"), images_per_class=2)


@pytest.fixture(scope="session")
def teacher_model_dir(tmp_path_factory, toy) -> Path:
    """A stage-1 result on the toy setup, the starting point of the contrastive tests."""
    output_dir = tmp_path_factory.mktemp("stage1")
    run_stage(
        "teacher",
        output_dir,
        "--clip_model_name_or_path",
        str(toy["clip"]),
        "--text_encoder_name_or_path",
        str(toy["xlmr"]),
        "--train_files",
        str(toy["parallel"]),
        "--max_steps",
        "20",
        "--per_device_train_batch_size",
        "16",
        "--learning_rate",
        "1e-3",
        "--logging_steps",
        "5",
        "--save_strategy",
        "no",
    )
    return output_dir
