"""Fixtures of the training tests: the toy setup (tiny CLIP, tiny XLM-R, shapes data) and the stage-1 models trained
on it. (Stage runs are in stage_runs.py; the command runner of the one-line-error tests is conftest.py's `cli`.)"""

from pathlib import Path

import pytest
from stage_runs import run_stage, teacher_flags

from altclip.training.toy_setup import write_toy_setup
from modeling_altclip import AltCLIPModel, AltCLIPProcessor


@pytest.fixture(scope="session")
def toy(tmp_path_factory) -> dict[str, Path]:
    return write_toy_setup(tmp_path_factory.mktemp("toy"), images_per_class=2)


@pytest.fixture(scope="session")
def teacher_model_dir(tmp_path_factory, toy) -> Path:
    """A stage-1 result on the toy setup, the starting point of the contrastive tests."""
    output_dir = tmp_path_factory.mktemp("stage1")
    run_stage("teacher", output_dir, *teacher_flags(toy, "--max_steps", "20", "--save_strategy", "no"))
    return output_dir


@pytest.fixture(scope="session")
def start_without_dropout(tmp_path_factory, teacher_model_dir) -> Path:
    """The stage-1 model with dropout off, so that every process (and a resumed run) computes the same thing."""
    model = AltCLIPModel.from_pretrained(teacher_model_dir)
    model.config.text_config.hidden_dropout_prob = 0.0
    model.config.text_config.attention_probs_dropout_prob = 0.0
    path = tmp_path_factory.mktemp("no_dropout")
    model.save_pretrained(path)
    AltCLIPProcessor.from_pretrained(teacher_model_dir).save_pretrained(path)
    return path
