"""Two processes (torchrun, gloo on CPU) train exactly like one process holding the same global batch.

For the contrastive stage this is the proof that embeddings are gathered across ranks with their gradients:
without the gather each rank would see only its own negatives and the first loss would differ.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from ports import free_port
from stage_runs import shapes_image_folder, torchrun, torchrun_env, toy_teacher_inputs

from modeling_altclip import AltCLIPModel

# Plain SGD, so that step 2 compares exactly what step 1 did. Another process count sums the same float32 numbers in
# another order (measured: step-1 loss and gradient norm within 5e-7, gradient coordinates within 1e-7). SGD moves
# the weights by lr x gradient, so step 2 stays as close (4e-7). AdamW's first update is lr x g / (|g| + eps) per
# coordinate: gradient coordinates near zero (|g| < 1e-7: hundreds here) whose float noise is as large as
# themselves move by up to +-lr whatever their size, so step 2 depends on the machine's summation order (AdamW here:
# weights 100x further apart after step 1 than SGD with a 100x larger rate, step-2 gradient norm 2.6e-6 apart;
# 1.1e-3 on another machine, issue 27). lr 0.1: SGD's step moves the loss about as far as AdamW's at 1e-3.
COMMON = [
    "--dataloader_num_workers", "0", "--max_steps", "2", "--logging_steps", "1", "--save_steps", "2",
    "--train_sampling_strategy", "sequential", "--optim", "sgd", "--learning_rate", "0.1",
]  # fmt: skip


def train(stage: str, output_dir: Path, processes: int, batch_per_process: int, *flags: str) -> list[dict]:
    torchrun(stage, output_dir, processes, *COMMON, "--per_device_train_batch_size", str(batch_per_process), *flags)
    state = json.loads((output_dir / "checkpoint-2" / "trainer_state.json").read_text())
    return [entry for entry in state["log_history"] if "loss" in entry]


def assert_same_steps(two_processes: list[dict], one_process: list[dict]) -> None:
    """Step 1: the same loss and gradient; step 2 (after an SGD step): the same update. rel 1e-5: 20x the float32
    summation-order difference measured between process counts (see COMMON); a real difference in what is
    computed (negatives, weights, rows) moves them by 1e-3 or more."""
    assert [entry["step"] for entry in two_processes] == [entry["step"] for entry in one_process] == [1, 2]
    for many, one in zip(two_processes, one_process):
        assert many["loss"] == pytest.approx(one["loss"], rel=1e-5), (many, one)
        assert many["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-5), (many, one)


def contrastive_flags(toy, start_without_dropout) -> list[str]:
    return ["--model_name_or_path", str(start_without_dropout), "--train_files", str(toy["captions"])]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, toy, start_without_dropout) -> dict[int, list[dict]]:
    """The one-process reference steps of stage 2 on the toy captions, per batch size (each run once for the
    module's tests that compare with it)."""
    root = tmp_path_factory.mktemp("one_process")
    flags = contrastive_flags(toy, start_without_dropout)
    return {batch: train("contrastive", root / f"batch-{batch}", 1, batch, *flags) for batch in (8, 16)}


def test_contrastive_two_processes_equal_one_process_on_the_global_batch(
    tmp_path, toy, start_without_dropout, one_process
):
    two = train("contrastive", tmp_path / "two", 2, 8, *contrastive_flags(toy, start_without_dropout))
    assert_same_steps(two, one_process[16])


def test_contrastive_without_gradient_through_the_gather_equals_one_process(
    tmp_path, toy, start_without_dropout, one_process
):
    """open_clip's no-grad gather (every rank scores the whole global batch through its own rows' gradients) gives
    the one-process update too, through the CLI and DDP."""
    flags = contrastive_flags(toy, start_without_dropout)
    two = train("contrastive", tmp_path / "two", 2, 8, *flags, "--gather_with_grad", "false")
    assert_same_steps(two, one_process[16])


def test_gather_modes_give_the_one_process_gradient(tmp_path):
    """Both gather modes of `ClipLoss` under 2 real processes (3 and 4 rows) give, after DDP's averaging, the
    one-process gradient of the 7 rows: direction and size (float64; the tolerance is summation order only). The
    scheme they replace, a local loss over detached remote features, does not: shows the comparison can fail."""
    output = tmp_path / "gradients.json"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2"]
    launcher += ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    worker = Path(__file__).with_name("gather_gradients_worker.py")
    result = subprocess.run(
        [*launcher, str(worker), str(output)], env=torchrun_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    for mode in ("gather_with_grad", "gather_without_grad"):
        assert report[mode]["cosine"] == pytest.approx(1.0, abs=1e-12), report
        assert report[mode]["norm_ratio"] == pytest.approx(1.0, abs=1e-12), report
        assert report[mode]["max_abs_difference"] < 1e-12, report
    assert report["detached_local_loss"]["cosine"] < 0.99, report


def test_teacher_learning_two_processes_equal_one_process(tmp_path, toy):
    flags = toy_teacher_inputs(toy)
    assert_same_steps(
        train("teacher", tmp_path / "two", 2, 8, *flags), train("teacher", tmp_path / "one", 1, 16, *flags)
    )
    record = json.loads((tmp_path / "two" / "checkpoint-2" / "objective.json").read_text())
    assert record == {"teacher": "clip", "distillation_loss": "mse", "include_english_pairs": True}  # resumes check it


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
    for name in shards:  # float16 shards: another summation order may round to the neighbouring float16 (1e-3 at 1)
        np.testing.assert_allclose(np.load(folder_two / name), np.load(folder_one / name), atol=1e-3)


def test_accumulated_micro_batches_train_like_one_big_batch(tmp_path, toy, start_without_dropout, one_process):
    """Batch 4 x accumulation 2, and 2 processes x batch 2 x accumulation 2, give per optimizer step the loss and
    gradient norm of batch 8 in one step: the negatives are the whole accumulated (and gathered) batch."""
    flags = contrastive_flags(toy, start_without_dropout)
    one = one_process[8]
    accumulated = train("contrastive", tmp_path / "acc", 1, 4, *flags, "--gradient_accumulation_steps", "2")
    assert_same_steps(accumulated, one)
    distributed = train("contrastive", tmp_path / "dist", 2, 2, *flags, "--gradient_accumulation_steps", "2")
    assert_same_steps(distributed, one)


def test_plain_accumulation_has_fewer_negatives(tmp_path, toy, start_without_dropout, one_process):
    """Shows the test above can fail: each micro-batch scored alone gives a lower loss (4 candidates, not 8)."""
    flags = contrastive_flags(toy, start_without_dropout)
    one = one_process[8]
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


def test_zero_shot_during_training_spreads_the_live_model_scoring_over_the_ranks(tmp_path, toy, start_without_dropout):
    """2 processes: each embeds its share of the images and prompts with the model being trained (no model written),
    and the scores equal those of the saved final model (the one scored at the last step) computed in one process."""
    from altclip.common.zero_shot_scoring import class_embeddings, prompts, read_class_folder, zero_shot_result
    from modeling_altclip import AltCLIPProcessor

    folder = shapes_image_folder(toy, tmp_path / "shapes")
    flags = ["--model_name_or_path", str(start_without_dropout), "--train_files", str(toy["captions"])]
    flags += ["--zeroshot_steps", "2", "--zeroshot_data_dir", str(folder), "--zeroshot_languages", "en,de"]
    flags += ["--zeroshot_eval_flags", "--templates 'a {c}' --batch_size 4", "--log_level_replica", "info"]
    output = tmp_path / "run"
    result = torchrun("contrastive", output, 2, *COMMON, "--per_device_train_batch_size", "8", *flags)
    shares = dict(re.findall(r"Rank (\d) embedded (\d+ images and \d+ prompts) for zero-shot", result.stdout))
    assert shares == {"0": "18 images and 3 prompts", "1": "18 images and 3 prompts"}, result.stdout[-2000:]
    state = json.loads((output / "checkpoint-2" / "trainer_state.json").read_text())
    (logged,) = [entry for entry in state["log_history"] if "zeroshot/image_folder/en/top1" in entry]
    assert logged["step"] == 2 and logged["zeroshot/seconds"] > 0
    written = json.loads((output / "zeroshot" / "step-2" / "results.json").read_text())["results"]
    assert not (output / "zeroshot" / "model").exists()  # scored in memory

    model, processor = AltCLIPModel.from_pretrained(output).eval(), AltCLIPProcessor.from_pretrained(output)
    data = read_class_folder(folder)
    with torch.no_grad():
        pixels = processor(images=[Image.open(path).convert("RGB") for path in data.images], return_tensors="pt")
        images = model.get_image_features(**pixels).pooler_output
        for entry, (language, names) in zip(written, {"en": data.class_names("en", True), "de": None}.items()):
            names = names or data.class_names("de", True)
            tokens = processor.tokenizer(prompts(names, ["a {c}"]), padding=True, return_tensors="pt")
            classes = class_embeddings(model.get_text_features(**tokens).pooler_output, len(names), 1)
            expected = zero_shot_result("image_folder", language, images, torch.tensor(data.labels), classes, 1)
            assert entry["metrics"] == expected["metrics"], (language, entry, expected)
            for metric, value in expected["metrics"].items():
                assert logged[f"zeroshot/image_folder/{language}/{metric}"] == value


def test_image_feature_cache_of_two_processes_is_written_per_rank_and_read_by_both(
    tmp_path, toy, start_without_dropout
):
    """Epoch 1: each rank stores the embeddings of the images it trains in its own shards; epoch 2: every image comes
    from the cache, also those the other rank stored (rank 0's tower count stops growing), with 2 DataLoader workers."""
    from altclip.training.loop.feature_caches import ImageEmbeddingCache

    flags = ["--model_name_or_path", str(start_without_dropout), "--train_files", str(toy["captions"])]
    flags += ["--per_device_train_batch_size", "8", "--num_train_epochs", "2", "--logging_steps", "1"]
    flags += ["--save_strategy", "epoch", "--dataloader_num_workers", "2", "--cache_image_features", "true"]
    output = tmp_path / "run"
    torchrun("contrastive", output, 2, *flags)
    (cache,) = (output / "image_feature_cache").glob("images-*")
    assert {path.name.split("-")[1] for path in cache.glob("rank-*.rows.npy")} == {"0", "1"}
    width = json.loads((cache / "manifest.json").read_text())["width"]
    assert ImageEmbeddingCache(cache, 180, width).filled_rows() == 180
    last = max(output.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    history = json.loads((last / "trainer_state.json").read_text())["log_history"]
    counts = [(entry["epoch"], entry["image_tower_rows"]) for entry in history if "loss" in entry]
    first_epoch = [rows for epoch, rows in counts if epoch <= 1.0 + 1e-9]
    second_epoch = [rows for epoch, rows in counts if epoch > 1.0 + 1e-9]
    assert second_epoch and set(second_epoch) == {first_epoch[-1]}, counts
    assert 80 <= first_epoch[-1] <= 100, counts  # rank 0 ran about half of the 180 images through the tower, once
