"""What the end of a run needs is checked before the first step: an evaluation strategy without a held-out set is one
line before any model loads (the Trainer refused it only after loading, as a traceback)."""

import pytest
from stage_runs import run_stage, teacher_flags

from altclip.common.cli_errors import CommandLineError


@pytest.mark.parametrize("flags", [["--eval_strategy", "steps", "--eval_steps", "5"], ["--eval_strategy", "epoch"]])
def test_an_evaluation_strategy_without_validation_files_is_refused_before_models_load(
    capsys, tmp_path, toy, monkeypatch, flags
):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the evaluation set was checked")

    monkeypatch.setattr("altclip.training.stages.load_or_build_model", no_model)
    with pytest.raises(CommandLineError) as refusal:
        run_stage("teacher", tmp_path / "out", *teacher_flags(toy, *flags))
    assert refusal.value.code == 2
    assert str(refusal.value).startswith(f"altclip-train: --eval_strategy {flags[1]} scores the held-out set")
    assert "--validation_files" in str(refusal.value) and not (tmp_path / "out").exists()
