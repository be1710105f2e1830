"""Two processes (torchrun, gloo on CPU) train exactly like one process holding the same global batch.

For the contrastive stage this is the proof that embeddings are gathered across ranks with their gradients:
without the gather each rank would see only its own negatives and the first loss would differ.
"""

import json
from pathlib import Path

import pytest
from stage_runs import torchrun, toy_teacher_inputs

COMMON = [
    "--dataloader_num_workers",
    "0",
    "--max_steps",
    "2",
    "--logging_steps",
    "1",
    "--save_steps",
    "2",
    "--train_sampling_strategy",
    "sequential",
    "--learning_rate",
    "1e-3",
]


def train(stage: str, output_dir: Path, processes: int, batch_per_process: int, *flags: str) -> list[dict]:
    torchrun(stage, output_dir, processes, *COMMON, "--per_device_train_batch_size", str(batch_per_process), *flags)
    state = json.loads((output_dir / "checkpoint-2" / "trainer_state.json").read_text())
    return [entry for entry in state["log_history"] if "loss" in entry]


def assert_same_steps(two_processes: list[dict], one_process: list[dict]) -> None:
    assert [entry["step"] for entry in two_processes] == [entry["step"] for entry in one_process] == [1, 2]
    for many, one in zip(two_processes, one_process):
        assert many["loss"] == pytest.approx(one["loss"], rel=1e-5), (many, one)
        assert many["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-4), (many, one)


def test_contrastive_two_processes_equal_one_process_on_the_global_batch(tmp_path, toy, start_without_dropout):
    flags = ["--model_name_or_path", str(start_without_dropout), "--train_files", str(toy["captions"])]
    two = train("contrastive", tmp_path / "two", 2, 8, *flags)
    one = train("contrastive", tmp_path / "one", 1, 16, *flags)
    assert_same_steps(two, one)


def test_contrastive_without_gradient_through_the_gather_differs(tmp_path, toy, start_without_dropout):
    """The same first loss (the negatives are still global) but another update: shows the test above can fail."""
    flags = ["--model_name_or_path", str(start_without_dropout), "--train_files", str(toy["captions"])]
    two = train("contrastive", tmp_path / "two", 2, 8, *flags, "--gather_with_grad", "false")
    one = train("contrastive", tmp_path / "one", 1, 16, *flags)
    assert two[0]["loss"] == pytest.approx(one[0]["loss"], rel=1e-5)
    assert two[0]["grad_norm"] != pytest.approx(one[0]["grad_norm"], rel=1e-3)


def test_teacher_learning_two_processes_equal_one_process(tmp_path, toy):
    flags = toy_teacher_inputs(toy)
    assert_same_steps(
        train("teacher", tmp_path / "two", 2, 8, *flags), train("teacher", tmp_path / "one", 1, 16, *flags)
    )


def test_contrastive_ranks_with_unequal_rows_equal_one_process(tmp_path, toy, start_without_dropout):
    """One image of the first global batch is missing: rank 0 holds 7 usable rows, rank 1 holds 8. Weighting
    each rank's loss by its share of the global batch keeps the update equal to one process on the 15 rows."""
    rows = Path(toy["captions"]).read_text().splitlines()
    first = json.loads(rows[0])
    first["image"] = str(Path(toy["captions"]).parent / first["image"]).replace(".png", "-missing.png")
    table = tmp_path / "captions.jsonl"
    table.write_text("\n".join([json.dumps(first), *rows[1:]]) + "\n")
    (tmp_path / "images").symlink_to(Path(toy["captions"]).parent / "images")
    flags = ["--model_name_or_path", str(start_without_dropout), "--train_files", str(table)]
    two = train("contrastive", tmp_path / "two", 2, 8, *flags)
    one = train("contrastive", tmp_path / "one", 1, 16, *flags)
    assert one[0]["skipped_records"] == 1
    assert_same_steps(two, one)
