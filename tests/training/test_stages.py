"""Both stages end to end through the CLI on the toy setup: loss falls, outputs load, options do what they say."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from stage_runs import logged_losses, run_stage, shapes_image_folder, stage_refusal, teacher_flags
from transformers import AutoModel, CLIPModel

from altclip.common.config_files import config_file_to_flags, expand_config
from altclip.common.errors import InputDataError
from altclip.training.arguments import parse
from altclip.training.toy_setup import write_tiny_clip
from modeling_altclip import AltCLIPModel, AltCLIPProcessor

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "training" / "configs"


def test_teacher_learning_loss_falls_and_the_result_is_a_complete_model(tmp_path, toy):
    summary = run_stage("teacher", tmp_path, *teacher_flags(toy, "--max_steps", "30", "--save_steps", "30"))
    assert summary["last_loss"] < 0.7 * summary["first_loss"], summary
    model = AutoModel.from_pretrained(tmp_path)
    assert isinstance(model, AltCLIPModel)
    assert isinstance(AltCLIPProcessor.from_pretrained(tmp_path), AltCLIPProcessor)
    clip = CLIPModel.from_pretrained(toy["clip"])
    for name, tensor in clip.vision_model.state_dict().items():  # stage 1 leaves CLIP's image side untouched
        torch.testing.assert_close(model.vision_model.state_dict()[name], tensor)
    torch.testing.assert_close(model.text_projection.weight, clip.text_projection.weight)
    assert (tmp_path / "loss_curve.png").read_bytes().startswith(PNG_SIGNATURE)
    checkpoint = load_file(tmp_path / "checkpoint-30" / "model.safetensors")
    assert not any(key.startswith(("teacher", "text_model.teacher")) for key in checkpoint)  # teacher not saved


def test_precomputed_teacher_features_give_the_same_losses(tmp_path, toy):
    common = (
        "--max_steps",
        "4",
        "--logging_steps",
        "1",
        "--train_sampling_strategy",
        "sequential",
        "--save_steps",
        "4",
    )
    run_stage("teacher", tmp_path / "live", *teacher_flags(toy, *common))
    summary = run_stage(
        "teacher", tmp_path / "cached", *teacher_flags(toy, *common, "--precompute_teacher_features", "true")
    )
    assert list((tmp_path / "cached" / "teacher_cache").glob("teacher-*/features-*.npy"))
    live, cached = logged_losses(tmp_path / "live"), logged_losses(tmp_path / "cached")
    assert live.keys() == cached.keys() == {1, 2, 3, 4}
    for step in live:  # rel 1e-4: the cached targets are the live ones rounded to float16 (relative step 1e-3)
        assert cached[step] == pytest.approx(live[step], rel=1e-4), step
    assert summary["global_step"] == 4


def test_cosine_distillation(tmp_path, toy):
    summary = run_stage(
        "teacher",
        tmp_path,
        *teacher_flags(toy, "--max_steps", "25", "--distillation_loss", "cosine", "--save_strategy", "no"),
    )
    assert summary["distillation_loss"] == "cosine" and summary["last_loss"] < summary["first_loss"]


def test_teacher_wider_than_the_students_project_dim_is_refused(tmp_path, toy, teacher_model_dir):
    wide_clip = write_tiny_clip(tmp_path / "wide_clip", text_width=40)
    with pytest.raises(SystemExit, match=r"text width 40, but the student's transformation maps to project_dim=32"):
        run_stage(
            "teacher",
            tmp_path / "out",
            "--model_name_or_path",
            str(teacher_model_dir),
            "--clip_model_name_or_path",
            str(wide_clip),
            "--train_files",
            str(toy["parallel"]),
            "--max_steps",
            "1",
        )


def test_missing_column_is_reported_with_file_and_row(tmp_path, toy):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"en": "a red circle", "fr": "un cercle rouge"}\n')
    with pytest.raises(SystemExit, match=r"bad\.jsonl:1: missing column\(s\) english, translation"):
        run_stage("teacher", tmp_path / "out", *teacher_flags(toy, "--max_steps", "1"), "--train_files", str(bad))


def contrastive_flags(start_dir, toy, *extra):
    return (
        "--model_name_or_path",
        str(start_dir),
        "--train_files",
        str(toy["captions"]),
        "--per_device_train_batch_size",
        "24",
        "--learning_rate",
        "2e-3",
        "--logging_steps",
        "5",
        *extra,
    )


def test_contrastive_loss_falls_with_the_image_tower_frozen(tmp_path, toy, teacher_model_dir):
    summary = run_stage(
        "contrastive",
        tmp_path,
        *contrastive_flags(teacher_model_dir, toy, "--max_steps", "60", "--save_strategy", "no"),
    )
    assert summary["last_loss"] < 0.85 * summary["first_loss"], summary
    assert summary["image_tower_frozen"] is True
    start, trained = AltCLIPModel.from_pretrained(teacher_model_dir), AltCLIPModel.from_pretrained(tmp_path)
    for name, tensor in start.vision_model.state_dict().items():
        torch.testing.assert_close(trained.vision_model.state_dict()[name], tensor)
    torch.testing.assert_close(trained.visual_projection.weight, start.visual_projection.weight)
    assert not torch.equal(trained.text_model.transformation.weight, start.text_model.transformation.weight)
    assert (tmp_path / "loss_curve.png").read_bytes().startswith(PNG_SIGNATURE)


def test_unfreezing_the_image_tower_trains_it(tmp_path, toy, teacher_model_dir):
    run_stage(
        "contrastive",
        tmp_path,
        *contrastive_flags(
            teacher_model_dir, toy, "--max_steps", "3", "--unfreeze_vision", "true", "--save_strategy", "no"
        ),
    )
    start, trained = AltCLIPModel.from_pretrained(teacher_model_dir), AltCLIPModel.from_pretrained(tmp_path)
    assert not torch.equal(
        trained.vision_model.encoder.layers[0].mlp.fc1.weight, start.vision_model.encoder.layers[0].mlp.fc1.weight
    )


def test_bad_rows_are_skipped_and_counted(tmp_path, toy, teacher_model_dir):
    rows = toy["captions"].read_text().splitlines()[:40]
    (tmp_path / "corrupt.png").write_bytes(b"not a png")
    rows += [
        json.dumps({"image": str(tmp_path / "corrupt.png"), "caption": "broken"}),
        json.dumps({"image": "images/none.png", "caption": "missing"}),
        json.dumps({"image": "images/red_circle_0.png", "caption": ""}),
        "{not json",
    ]
    table = toy["captions"].parent / "with_bad_rows.jsonl"
    table.write_text("\n".join(rows) + "\n")
    summary = run_stage(
        "contrastive",
        tmp_path / "out",
        *contrastive_flags(teacher_model_dir, toy, "--max_steps", "4", "--save_strategy", "no"),
        "--train_files",
        str(table),
    )
    assert summary["skipped_records"] >= 4
    assert set(summary["skipped_by_reason_on_rank0"]) == {
        "unreadable image",
        "image file not found",
        "empty caption",
        "not valid JSON",
    }


def test_logit_scale_is_clamped_in_place_and_comes_back_down(tmp_path, toy, teacher_model_dir):
    """A temperature beyond the bound (log 500 > log 100) is clamped in place when training starts and after every
    step, so every checkpoint holds at most the bound; at the bound its gradient is not cut off, so when the loss
    wants it lower (random toy towers: the loss prefers a cooler softmax) it comes back down. A clamp inside the loss
    alone would leave it at log 500 with gradient 0."""
    start = AltCLIPModel.from_pretrained(teacher_model_dir)
    with torch.no_grad():
        start.logit_scale.fill_(math.log(500.0))
    start.save_pretrained(tmp_path / "hot")
    AltCLIPProcessor.from_pretrained(teacher_model_dir).save_pretrained(tmp_path / "hot")
    flags = ("--max_steps", "3", "--learning_rate", "1e-2", "--save_steps", "1", "--logging_steps", "1")
    run_stage("contrastive", tmp_path / "out", *contrastive_flags(tmp_path / "hot", toy, *flags))
    bound = math.log(100.0)
    saved = [
        load_file(tmp_path / "out" / f"checkpoint-{step}" / "model.safetensors")["logit_scale"] for step in (1, 2, 3)
    ]
    assert all(value.shape == () and value.item() <= bound + 1e-6 for value in saved), saved
    assert saved[2].item() < saved[0].item() < bound - 1e-3, saved  # each step takes it further down
    final = AltCLIPModel.from_pretrained(tmp_path / "out").logit_scale.item()
    assert final == pytest.approx(saved[2].item())


def test_an_output_folder_with_checkpoints_is_not_overwritten(tmp_path, toy):
    run_stage("teacher", tmp_path, *teacher_flags(toy, "--max_steps", "2", "--save_steps", "2"))
    with pytest.raises(SystemExit, match="already holds checkpoint-2. Pass --resume_from_checkpoint true"):
        run_stage("teacher", tmp_path, *teacher_flags(toy, "--max_steps", "4"))


def test_resuming_gives_the_losses_of_an_uninterrupted_run(tmp_path, toy, teacher_model_dir):
    flags = contrastive_flags(teacher_model_dir, toy, "--max_steps", "6", "--logging_steps", "1", "--save_steps", "3")
    run_stage("contrastive", tmp_path / "whole", *flags)
    # A run interrupted after step 3 leaves exactly what the whole run had at that point: checkpoint-3.
    shutil.copytree(tmp_path / "whole" / "checkpoint-3", tmp_path / "broken" / "checkpoint-3")
    run_stage("contrastive", tmp_path / "broken", *flags, "--resume_from_checkpoint", "true")
    whole, resumed = logged_losses(tmp_path / "whole"), logged_losses(tmp_path / "broken")
    assert set(whole) == {1, 2, 3, 4, 5, 6} and {4, 5, 6} <= set(resumed)
    for step in (4, 5, 6):
        assert resumed[step] == pytest.approx(whole[step], rel=1e-5), step


def test_config_file_supplies_flags_and_later_flags_win(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("train_files: [a.jsonl, b.jsonl]\nbf16: true\nlearning_rate: 0.001\nseed: null\n")
    assert config_file_to_flags(str(config)) == [
        "--train_files",
        "a.jsonl",
        "b.jsonl",
        "--bf16",
        "--learning_rate",
        "0.001",
    ]
    assert expand_config(["--config", str(config), "--learning_rate", "0.5"])[-2:] == ["--learning_rate", "0.5"]
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(InputDataError, match="must map flag names to values"):
        config_file_to_flags(str(tmp_path / "list.yaml"))
    (tmp_path / "bom.json").write_bytes(b'\xef\xbb\xbf{"seed": 3}')  # a byte-order mark (Windows editors)
    assert config_file_to_flags(str(tmp_path / "bom.json")) == ["--seed", "3"]


def test_cached_image_features_same_first_epoch_and_no_tower_in_the_second(tmp_path, toy, start_without_dropout):
    """Epoch 1 trains exactly as without the cache; epoch 2 reads every image embedding from it (DataLoader workers
    included), so the image tower runs on no image and the losses stay those of the float16-stored embeddings."""
    flags = contrastive_flags(start_without_dropout, toy, "--num_train_epochs", "2", "--logging_steps", "1")
    flags += ("--save_strategy", "epoch", "--dataloader_num_workers", "2")
    run_stage("contrastive", tmp_path / "plain", *flags)
    run_stage("contrastive", tmp_path / "cached", *flags, "--cache_image_features", "true")
    plain, cached = logged_losses(tmp_path / "plain"), logged_losses(tmp_path / "cached")
    steps_per_epoch = math.ceil(180 / 24)
    assert sorted(plain) == sorted(cached) == list(range(1, 2 * steps_per_epoch + 1))
    for step in range(1, steps_per_epoch + 1):
        assert cached[step] == pytest.approx(plain[step], rel=1e-5), step
    for step in range(steps_per_epoch + 1, 2 * steps_per_epoch + 1):
        assert cached[step] == pytest.approx(plain[step], rel=1e-2), step
    state = json.loads((tmp_path / "cached" / f"checkpoint-{2 * steps_per_epoch}" / "trainer_state.json").read_text())
    tower_rows = {entry["step"]: entry["image_tower_rows"] for entry in state["log_history"] if "loss" in entry}
    assert tower_rows[steps_per_epoch] == 180 and tower_rows[2 * steps_per_epoch] == 180
    (cache,) = (tmp_path / "cached" / "image_feature_cache").glob("images-*")
    assert json.loads((cache / "manifest.json").read_text())["rows"] == 180


def test_cached_image_features_refused_with_a_trainable_tower(tmp_path, toy, teacher_model_dir):
    with pytest.raises(SystemExit, match="--cache_image_features needs a frozen image tower"):
        run_stage(
            "contrastive",
            tmp_path,
            *contrastive_flags(teacher_model_dir, toy, "--cache_image_features", "true", "--unfreeze_vision", "true"),
        )
    assert not (tmp_path / "image_feature_cache").exists()


@pytest.mark.parametrize("config", sorted(path.name for path in CONFIGS.glob("*.yaml")))
def test_shipped_configs_parse_and_leave_optimizer_and_scheduler_to_the_trainer(config):
    """Every shipped YAML parses into the stage's arguments; a DeepSpeed file it names exists and defines neither
    optimizer nor scheduler (TrainingArguments' cosine schedule and no-decay groups stay in force). DeepSpeed
    itself is not installed here, so its flag is checked and then left out of the parse."""
    flags = expand_config(["--config", str(CONFIGS / config)])
    if "--deepspeed" in flags:
        position = flags.index("--deepspeed")
        deepspeed = json.loads((REPO / flags[position + 1]).read_text())
        assert "optimizer" not in deepspeed and "scheduler" not in deepspeed
        del flags[position : position + 2]
    stage = "teacher" if config.startswith("teacher") else "contrastive"
    parse(stage, flags)


def test_zero_shot_scores_are_logged_during_training(tmp_path, toy, teacher_model_dir):
    folder = shapes_image_folder(toy, tmp_path / "shapes")
    flags = contrastive_flags(teacher_model_dir, toy, "--max_steps", "4", "--save_steps", "4", "--logging_steps", "1")
    flags += ("--zeroshot_steps", "2", "--zeroshot_data_dir", str(folder), "--zeroshot_languages", "en,de")
    flags += ("--zeroshot_eval_flags", "--num_workers 0 --templates 'a {c}'")
    run_stage("contrastive", tmp_path / "run", *flags)
    state = json.loads((tmp_path / "run" / "checkpoint-4" / "trainer_state.json").read_text())
    scored = {entry["step"]: entry for entry in state["log_history"] if "zeroshot/image_folder/en/top1" in entry}
    assert sorted(scored) == [2, 4]
    for entry in scored.values():
        assert (
            0 <= entry["zeroshot/image_folder/de/top1"] <= 100
            and "zeroshot/image_folder/en/mean_per_class_recall" in entry
        )
    for step in (2, 4):  # the results files (altclip-eval's format) of each scoring
        results = json.loads((tmp_path / "run" / "zeroshot" / f"step-{step}" / "results.json").read_text())
        assert results["results"][0]["metrics"]["top1"] == scored[step]["zeroshot/image_folder/en/top1"]
    assert not (tmp_path / "run" / "zeroshot" / "model").exists()  # scored in memory: no model written


def test_zero_shot_out_of_memory_is_named_and_training_goes_on(tmp_path, toy, teacher_model_dir, monkeypatch, caplog):
    from altclip.training.loop.zeroshot_monitor import ZeroShotMonitor

    def out_of_memory(self, texts):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(ZeroShotMonitor, "_local_share", out_of_memory)
    folder = shapes_image_folder(toy, tmp_path / "shapes")
    flags = contrastive_flags(teacher_model_dir, toy, "--max_steps", "2", "--save_strategy", "no")
    flags += ("--zeroshot_steps", "1", "--zeroshot_data_dir", str(folder))
    summary = run_stage("contrastive", tmp_path / "run", *flags)
    assert summary["global_step"] == 2
    warnings = [record.getMessage() for record in caplog.records if "Zero-shot scoring" in record.getMessage()]
    assert len(warnings) == 2 and "failed (training goes on): out of memory (CUDA out of memory." in warnings[0]
    assert "lower --batch_size in --zeroshot_eval_flags" in warnings[0]


# One-line refusals of the zero-shot flags, each its own case (peft's TEST_CASES style): (flags, message).
ZERO_SHOT_REFUSALS = [
    (["--zeroshot_data_dir", "nowhere"], "--zeroshot_steps needs --zeroshot_data_dir, a folder"),
    (["--zeroshot_dataset", "imagenet1k"], "--zeroshot_dataset imagenet1k: during training the live model scores a"),
    (["--zeroshot_languages", "en,fr"], r"classnames.json has no 'fr' names; it has en, de"),
    (["--zeroshot_eval_flags", "--dtype bfloat16"], r"--zeroshot_eval_flags --dtype bfloat16: scoring during training"),
]


@pytest.mark.parametrize(
    "flags, message", ZERO_SHOT_REFUSALS, ids=["no-folder", "other-dataset", "missing-language", "eval-flag"]
)
def test_zero_shot_during_training_refuses_what_it_cannot_score_before_models_load(
    tmp_path, toy, teacher_model_dir, cli, flags, message
):
    folder = shapes_image_folder(toy, tmp_path / "shapes")
    given = contrastive_flags(teacher_model_dir, toy, "--zeroshot_steps", "2", "--zeroshot_data_dir", str(folder))
    stage_refusal(cli, "contrastive", tmp_path / "out", *given, *flags, match=message)
    assert not (tmp_path / "out").exists()
