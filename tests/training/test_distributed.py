"""Two processes (torchrun, gloo on CPU) train exactly like one process holding the same global batch.

For the contrastive stage this is the proof that embeddings are gathered across ranks with their gradients:
without the gather each rank would see only its own negatives and the first loss would differ.
"""

import json
import re
from pathlib import Path

import numpy as np
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


def test_teacher_features_precomputed_by_two_processes_equal_one_process(tmp_path, toy):
    """Each rank computes its own shards (every shard written once, by one rank) and no rank waits at a collective;
    the shards equal those of one process."""
    flags = [*toy_teacher_inputs(toy), "--precompute_teacher_features", "true", "--teacher_cache_shard_rows", "4"]
    flags += ["--max_steps", "1", "--per_device_train_batch_size", "4", "--log_level_replica", "info"]
    two = torchrun("teacher", tmp_path / "two", 2, *flags, "--teacher_cache_dir", str(tmp_path / "cache-two"))
    torchrun("teacher", tmp_path / "one", 1, *flags, "--teacher_cache_dir", str(tmp_path / "cache-one"))
    (folder_two,) = (tmp_path / "cache-two").glob("teacher-*")
    (folder_one,) = (tmp_path / "cache-one").glob("teacher-*")
    assert folder_two.name == folder_one.name  # the same key: weights, tokenizer, dtype, length, corpus
    shards = sorted(path.name for path in folder_two.glob("features-*.npy"))
    assert len(shards) >= 3
    written = re.findall(r"Wrote feature shard (features-\d+\.npy)", two.stdout + two.stderr)
    assert sorted(written) == shards  # each shard once
    ranks = set(re.findall(r"Rank (\d) computes", two.stdout + two.stderr))
    assert ranks == {"0", "1"}
    for name in shards:
        np.testing.assert_allclose(np.load(folder_two / name), np.load(folder_one / name), atol=1e-3)


def test_accumulated_micro_batches_train_like_one_big_batch(tmp_path, toy, start_without_dropout):
    """Batch 4 x accumulation 2, and 2 processes x batch 2 x accumulation 2, give per optimizer step the loss and
    gradient norm of batch 8 in one step: the negatives are the whole accumulated (and gathered) batch."""
    flags = ["--model_name_or_path", str(start_without_dropout), "--train_files", str(toy["captions"])]
    one = train("contrastive", tmp_path / "one", 1, 8, *flags)
    accumulated = train("contrastive", tmp_path / "acc", 1, 4, *flags, "--gradient_accumulation_steps", "2")
    assert_same_steps(accumulated, one)
    distributed = train("contrastive", tmp_path / "dist", 2, 2, *flags, "--gradient_accumulation_steps", "2")
    assert_same_steps(distributed, one)


def test_plain_accumulation_has_fewer_negatives(tmp_path, toy, start_without_dropout):
    """Shows the test above can fail: each micro-batch scored alone gives a lower loss (4 candidates, not 8)."""
    flags = ["--model_name_or_path", str(start_without_dropout), "--train_files", str(toy["captions"])]
    one = train("contrastive", tmp_path / "one", 1, 8, *flags)
    plain = train(
        "contrastive",
        tmp_path / "plain",
        1,
        4,
        *flags,
        "--gradient_accumulation_steps",
        "2",
        "--full_batch_negatives",
        "false",
    )
    assert plain[0]["loss"] < one[0]["loss"] - 0.05
