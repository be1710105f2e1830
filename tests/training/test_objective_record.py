"""A resumed stage-2 run keeps its objective: every checkpoint records --loss, --matryoshka_dims/_weights and
--gather_with_grad, and a resumption (a requeued job re-reading a changed config) that changes them is refused in
one line before any model loads, naming the difference; a checkpoint written before the record existed is compared
on the Matryoshka widths its config.json holds."""

import json
from types import SimpleNamespace

import pytest
from stage_runs import run_stage, stage_refusal

from altclip.common.errors import UsageError
from altclip.training.loop.objective_record import OBJECTIVE_FILE, check_resumed_objective


def stage_args(loss="infonce", dims=None, weights=None, gather_with_grad=True) -> SimpleNamespace:
    return SimpleNamespace(
        loss=loss, matryoshka_dims=dims, matryoshka_weights=weights, gather_with_grad=gather_with_grad
    )


def checkpoint(tmp_path, record: dict | None, config_dims=None, projection_dim=768):
    folder = tmp_path / "checkpoint-4"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"projection_dim": projection_dim, "matryoshka_dims": config_dims}))
    if record is not None:
        (folder / OBJECTIVE_FILE).write_text(json.dumps(record))
    return str(folder)


RECORD = {"loss": "infonce", "matryoshka_dims": [], "matryoshka_weights": None, "gather_with_grad": True}


@pytest.mark.parametrize(
    "record, config_dims, now, difference",
    [
        (RECORD, None, stage_args(dims="192,384"), "matryoshka_dims [] -> [192, 384]"),
        (RECORD, None, stage_args(loss="siglip"), "loss 'infonce' -> 'siglip'"),
        (RECORD, None, stage_args(gather_with_grad=False), "gather_with_grad True -> False"),
        ({**RECORD, "matryoshka_dims": [192, 384]}, None, stage_args(dims="192,384", weights="1,1,2"), "weights"),
        (None, None, stage_args(dims="192,384"), "matryoshka_dims [] -> [192, 384]"),  # an older checkpoint
        (None, [192, 384, 768], stage_args(), "matryoshka_dims [192, 384] -> []"),
    ],
    ids=["widths added", "loss", "gather", "weights", "old checkpoint, widths added", "old checkpoint, widths dropped"],
)
def test_another_objective_is_refused_naming_the_difference(tmp_path, record, config_dims, now, difference):
    folder = checkpoint(tmp_path, record, config_dims)
    with pytest.raises(UsageError, match="was trained with another objective") as refused:
        check_resumed_objective(folder, now)
    assert difference in str(refused.value)


@pytest.mark.parametrize(
    "record, config_dims, now",
    [
        (RECORD, None, stage_args()),
        (
            {**RECORD, "matryoshka_dims": [192, 384]},
            [192, 384, 768],
            stage_args(dims="192,384,768"),
        ),  # full width named
        (None, [192, 384, 768], stage_args(dims="384,192")),
        (None, None, stage_args(loss="siglip")),  # an older checkpoint knows its widths only
    ],
    ids=["same", "full width named", "old checkpoint, same widths", "old checkpoint, loss unknown"],
)
def test_the_same_objective_resumes(tmp_path, record, config_dims, now):
    check_resumed_objective(checkpoint(tmp_path, record, config_dims), now)


def test_a_real_checkpoint_records_the_objective_and_a_changed_config_is_refused_before_loading(
    tmp_path, cli, toy, start_without_dropout, monkeypatch
):
    flags = ["--model_name_or_path", str(start_without_dropout), "--train_files", str(toy["captions"])]
    flags += ["--per_device_train_batch_size", "4", "--max_steps", "2", "--save_steps", "2"]
    run_stage("contrastive", tmp_path, *flags, "--matryoshka_dims", "4")
    record = json.loads((tmp_path / "checkpoint-2" / OBJECTIVE_FILE).read_text())
    assert record == {
        "loss": "infonce",
        "matryoshka_dims": [4],
        "matryoshka_weights": None,
        "gather_with_grad": True,
        "anchors": None,
    }

    import altclip.training.stages as stages

    monkeypatch.setattr(stages, "load_or_build_model", lambda *a, **k: pytest.fail("a model was loaded"))
    resumed = [*flags, "--resume_from_checkpoint", "true", "--overwrite_output_dir", "false"]
    line = stage_refusal(cli, "contrastive", tmp_path, *resumed, "--max_steps", "4", "--matryoshka_dims", "4,8")
    assert "checkpoint-2 was trained with another objective (matryoshka_dims [4] -> [4, 8])" in line


def teacher_args(teacher="clip", loss="mse", english=True) -> SimpleNamespace:
    return SimpleNamespace(teacher=teacher, distillation_loss=loss, include_english_pairs=english)


@pytest.mark.parametrize(
    "record, now, difference",
    [
        (
            {"teacher": "clip", "distillation_loss": "mse", "include_english_pairs": True},
            teacher_args("self"),
            "teacher",
        ),
        (
            {"teacher": "self", "distillation_loss": "mse", "include_english_pairs": True},
            teacher_args("self", "cosine"),
            "distillation_loss",
        ),
        (None, teacher_args("self"), "teacher 'clip' -> 'self'"),  # written before --teacher existed: CLIP's
    ],
    ids=["teacher", "loss", "old checkpoint"],
)
def test_stage_1_resumed_with_another_teacher_is_refused(tmp_path, record, now, difference):
    """A stage-1 run requeued after add-language's default became the model's own teacher would have continued
    toward other targets without a word (a helper's review: loss 0.96 -> 8e-6 at the resumed step)."""
    with pytest.raises(UsageError, match="--teacher, --distillation_loss and --include_english_pairs") as refused:
        check_resumed_objective(checkpoint(tmp_path, record), now, "teacher")
    assert difference in str(refused.value)


def test_stage_1_resumed_with_the_same_teacher_continues(tmp_path):
    record = {"teacher": "self", "distillation_loss": "mse", "include_english_pairs": True}
    check_resumed_objective(checkpoint(tmp_path, record), teacher_args("self"), "teacher")
    (tmp_path / "old").mkdir()
    check_resumed_objective(checkpoint(tmp_path / "old", None), teacher_args("clip", "cosine"), "teacher")
