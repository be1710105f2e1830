"""LoRA fine-tuning (peft), WiSE-FT interpolation and before/after scores, on the toy setup with real runs.

What is protected: only the adapters train (every other tensor bit-identical), the adapter files load with
``PeftModel.from_pretrained`` and in ``altclip-eval`` with the same results as the merged checkpoint, 2 processes
train like 1 on the same global batch, a SIGKILLed LoRA run resumes to the uninterrupted result, and interpolation
ends exactly at the start (alpha 0) and fine-tuned (alpha 1) weights.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from stage_runs import (
    kill_after_checkpoint,
    run_stage,
    shapes_image_folder,
    stage_refusal,
    torchrun,
    torchrun_command,
)
from tiny_models import tiny_config

from altclip.common.adapters import is_adapter_folder, load_altclip, processor_source
from altclip.evaluation.cli import main as eval_main
from altclip.training.arguments import FineTuningArguments
from altclip.training.finetune.lora import apply_lora, merged_state_dict, target_module_names
from altclip.training.finetune.new_tokens import WORD_EMBEDDINGS
from altclip.training.finetune.wise_ft import WeightInterpolation
from modeling_altclip import AltCLIPModel, AltCLIPProcessor
from modeling_altclip.modeling_altclip import LOADED_TEXT_LAYER

LORA = ["--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0"]


def lora_flags(start_dir: Path, toy, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", str(start_dir), "--train_files", str(toy["captions"]),
        "--per_device_train_batch_size", "16", "--learning_rate", "1e-2", "--logging_steps", "1", *LORA, *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, toy, start_without_dropout) -> Path:
    """Three LoRA steps on both towers' attention, MLP and projection layers, saved with the merged model."""
    output_dir = tmp_path_factory.mktemp("lora")
    flags = lora_flags(start_without_dropout, toy, "--max_steps", "3", "--save_strategy", "no")
    flags += ["--lora_targets", "both", "--lora_layers", "attention,mlp,projection", "--merge_adapter", "true"]
    run_stage("contrastive", output_dir, *flags)
    return output_dir


def sample_inputs(processor: AltCLIPProcessor, toy) -> dict:
    images = sorted((Path(toy["captions"]).parent / "images").glob("*.png"))[:3]
    from PIL import Image

    return processor(
        text=["a red circle", "ein blaues Quadrat", "un triangle vert"],
        images=[Image.open(path).convert("RGB") for path in images],
        return_tensors="pt",
        padding=True,
    )


def test_only_the_adapters_train_and_the_merged_checkpoint_is_base_plus_adapter(lora_run, start_without_dropout):
    start = AltCLIPModel.from_pretrained(start_without_dropout)
    start_state = start.state_dict()
    args = FineTuningArguments(lora_r=4, lora_targets="both", lora_layers="attention,mlp,projection")
    targets = set(target_module_names(start, args))
    assert any(name.startswith("text_model.") for name in targets)
    assert any(name.startswith("vision_model.") for name in targets)

    adapter = load_file(lora_run / "adapter_model.safetensors")
    tokens = f"base_model.model.{WORD_EMBEDDINGS}.token_adapter.trainable_tokens_delta"  # --lora_trainable_tokens auto
    assert adapter and all(".lora_A." in name or ".lora_B." in name for name in adapter if name != tokens)
    adapted = {name.removeprefix("base_model.model.").split(".lora_")[0] for name in adapter if name != tokens}
    assert adapted == targets
    token_ids = json.loads((lora_run / "adapter_config.json").read_text())["trainable_token_indices"][WORD_EMBEDDINGS]
    assert adapter[tokens].shape[0] == len(token_ids) > 0
    assert not (lora_run / "model.safetensors").exists()
    summary = json.loads((lora_run / "training_summary.json").read_text())
    assert summary["trainable_parameters"] == sum(tensor.numel() for tensor in adapter.values())
    assert summary["lora"]["r"] == 4 and summary["lora"]["targets"] == "both"

    merged = load_file(lora_run / "merged" / "model.safetensors")
    assert any(name.startswith("text_model.roberta.encoder.layers.") for name in merged)  # transformers' names
    merged = {LOADED_TEXT_LAYER.sub(r"\1layer.", name): tensor for name, tensor in merged.items()}
    assert merged.keys() == start_state.keys()
    assert merged["logit_scale"].dim() == 0  # stored as released; the model holds it as a (1,) vector
    merged["logit_scale"] = merged["logit_scale"].reshape(1)
    embeddings = f"{WORD_EMBEDDINGS}.weight"
    moved_rows = (merged[embeddings] != start_state[embeddings]).any(dim=1).nonzero().flatten().tolist()
    assert moved_rows and set(moved_rows) <= set(token_ids)  # only the trained tokens' embedding rows
    for name, tensor in merged.items():
        if name == embeddings:
            continue
        if name.removesuffix(".weight") in targets:
            assert not torch.equal(tensor, start_state[name]), name  # the adapter's update is in it
        else:
            assert torch.equal(tensor, start_state[name]), name  # biases, norms, embeddings, logit_scale, ...

    # The merged file is the start weights plus the saved adapter, bit for bit: the base weights never moved.
    reloaded = PeftModel.from_pretrained(AltCLIPModel.from_pretrained(start_without_dropout), str(lora_run))
    recomputed = merged_state_dict(reloaded)
    assert recomputed.keys() == merged.keys()
    assert [name for name in merged if not torch.equal(recomputed[name], merged[name])] == []


def test_merged_model_equals_the_unmerged_adapter(lora_run, start_without_dropout, toy):
    processor = AltCLIPProcessor.from_pretrained(lora_run)
    inputs = sample_inputs(processor, toy)
    with torch.no_grad():
        unmerged = PeftModel.from_pretrained(AltCLIPModel.from_pretrained(start_without_dropout), str(lora_run))
        expected = unmerged.eval()(**inputs).logits_per_image
        merged = AltCLIPModel.from_pretrained(lora_run / "merged").eval()(**inputs).logits_per_image
        helper = load_altclip(lora_run).eval()(**inputs).logits_per_image
        start = AltCLIPModel.from_pretrained(start_without_dropout).eval()(**inputs).logits_per_image
    torch.testing.assert_close(merged, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(helper, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(start, expected, atol=1e-4)  # the adapter does change the outputs
    assert is_adapter_folder(lora_run) and not is_adapter_folder(lora_run / "merged")
    assert processor_source(lora_run) == str(lora_run)  # training saved the processor beside the adapter


def test_altclip_eval_scores_an_adapter_folder_like_its_merged_checkpoint(lora_run, tmp_path, toy):
    folder = shapes_image_folder(toy, tmp_path / "shapes")
    results = {}
    for name, model in (("adapter", lora_run), ("merged", lora_run / "merged")):
        eval_main([
            "zeroshot", "--model", str(model), "--dataset", "image_folder", "--data_dir", str(folder),
            "--languages", "en,de", "--templates", "a {c}", "--num_workers", "0", "--cache_dir", "",
            "--output_dir", str(tmp_path / name),
        ])  # fmt: skip
        rows = json.loads((tmp_path / name / "results.json").read_text())["results"]
        results[name] = {row["language"]: row["metrics"] for row in rows}
    assert set(results["adapter"]) == {"en", "de"}
    assert results["adapter"] == results["merged"]


def interpolation_endpoints(model: torch.nn.Module, tune) -> None:
    """WeightInterpolation at 0 gives the start weights and at 1 the tuned ones, bit for bit; 0.5 lies between."""
    interpolation = WeightInterpolation(model)
    start = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    tune(model)
    tuned = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    interpolation.keep_finetuned()
    for alpha, expected in ((0.0, start), (1.0, tuned)):
        interpolation.apply(alpha)
        merged = merged_state_dict(model)
        reference = merged_state_dict_of(model, expected)
        assert all(torch.equal(merged[name], reference[name]) for name in merged), alpha
    interpolation.apply(0.5)
    halfway, ends = merged_state_dict(model), [merged_state_dict_of(model, state) for state in (start, tuned)]
    changed = [name for name in halfway if not torch.equal(ends[0][name], ends[1][name])]
    assert changed
    for name in changed:
        torch.testing.assert_close(halfway[name], (ends[0][name] + ends[1][name]) / 2, rtol=1e-5, atol=1e-6)


def merged_state_dict_of(model: torch.nn.Module, state: dict) -> dict:
    current = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    model.load_state_dict(state)
    merged = {name: tensor.clone() for name, tensor in merged_state_dict(model).items()}
    model.load_state_dict(current)
    return merged


def perturb_trainable(model: torch.nn.Module) -> None:
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)


def test_wise_ft_alpha_0_is_the_start_model_and_1_the_fine_tuned_one():
    full = AltCLIPModel(tiny_config(1000))
    full.vision_model.requires_grad_(False)
    interpolation_endpoints(full, perturb_trainable)
    lora = AltCLIPModel(tiny_config(1000))
    adapter = apply_lora(lora, FineTuningArguments(lora_r=4, lora_targets="both"), None)
    interpolation_endpoints(adapter, perturb_trainable)


def test_wise_ft_sweep_scores_each_alpha_before_and_after(tmp_path, toy, start_without_dropout):
    """A full fine-tune swept over alpha 0 and 1 on the validation and zero-shot sets: alpha 0 scores exactly as
    the start model did before the first step; the best alpha by eval_loss is saved; the chart is drawn."""
    validation = tmp_path / "validation.jsonl"
    rows = Path(toy["captions"]).read_text().splitlines()[:32]
    validation.write_text("\n".join(rows) + "\n")
    (tmp_path / "images").symlink_to(Path(toy["captions"]).parent / "images")
    folder = shapes_image_folder(toy, tmp_path / "shapes")
    flags = [
        "--model_name_or_path", str(start_without_dropout), "--train_files", str(toy["captions"]),
        "--validation_files", str(validation), "--per_device_train_batch_size", "16", "--learning_rate", "2e-3",
        "--max_steps", "4", "--save_strategy", "no", "--before_after", "true", "--wise_ft_sweep", "0,1",
        "--zeroshot_data_dir", str(folder), "--zeroshot_eval_flags", "--num_workers 0 --templates 'a {c}'",
    ]  # fmt: skip
    summary = run_stage("contrastive", tmp_path / "run", *flags)
    before, after = summary["before_after"]["before"], summary["before_after"]["after"]
    sweep = summary["wise_ft"]["sweep"]
    assert set(sweep) == {"0.0", "1.0"} and summary["wise_ft"]["metric"] == "eval_loss"
    assert "zeroshot/image_folder/en/top1" in before and "eval_loss" in before
    assert sweep["0.0"] == pytest.approx(before, rel=1e-6)
    assert sweep["1.0"]["eval_loss"] != pytest.approx(before["eval_loss"], rel=1e-4)
    best = min(sweep, key=lambda alpha: sweep[alpha]["eval_loss"])
    assert summary["wise_ft"]["alpha"] == float(best) and after == sweep[best]
    assert (tmp_path / "run" / "before_after.png").stat().st_size > 1000
    saved = load_file(tmp_path / "run" / "model.safetensors")
    start = load_file(Path(start_without_dropout) / "model.safetensors")
    text_weights = [name for name in start if name.startswith("text_model.roberta.encoder")]
    same = all(torch.equal(saved[name], start[name]) for name in text_weights)
    assert same == (best == "0.0")


def test_stage_one_lora_adapts_the_text_tower_of_an_altclip(tmp_path, toy, start_without_dropout):
    flags = [
        "--model_name_or_path", str(start_without_dropout), "--clip_model_name_or_path", str(toy["clip"]),
        "--train_files", str(toy["parallel"]), "--per_device_train_batch_size", "16", "--learning_rate", "1e-2",
        "--max_steps", "2", "--save_strategy", "no", *LORA,
    ]  # fmt: skip
    summary = run_stage("teacher", tmp_path, *flags)
    adapter = load_file(tmp_path / "adapter_model.safetensors")
    assert adapter and all(name.startswith("base_model.model.text_model.") for name in adapter)
    assert summary["trainable_parameters"] == sum(tensor.numel() for tensor in adapter.values())
    assert any(torch.count_nonzero(tensor) for name, tensor in adapter.items() if ".lora_B." in name)
    PeftModel.from_pretrained(AltCLIPModel.from_pretrained(start_without_dropout), str(tmp_path))


def checkpoint_log(output_dir: Path, step: int) -> list[dict]:
    state = json.loads((output_dir / f"checkpoint-{step}" / "trainer_state.json").read_text())
    return [entry for entry in state["log_history"] if "loss" in entry]


def test_lora_two_processes_equal_one_process_on_the_global_batch(tmp_path, toy, start_without_dropout):
    """Under SGD (Adam's first steps amplify float-order noise) both steps' losses and gradient norms agree; the
    checkpoints hold adapters only, so the runs really trained LoRA."""
    flags = lora_flags(start_without_dropout, toy, "--max_steps", "2", "--save_steps", "2", "--optim", "sgd")
    flags += ["--train_sampling_strategy", "sequential"]
    two = tmp_path / "two"
    torchrun("contrastive", two, 2, *flags, "--per_device_train_batch_size", "8")
    one = tmp_path / "one"
    torchrun("contrastive", one, 1, *flags)
    for run in (two, one):
        assert (run / "checkpoint-2" / "adapter_model.safetensors").is_file()
        assert not (run / "checkpoint-2" / "model.safetensors").exists()
    many, single = checkpoint_log(two, 2), checkpoint_log(one, 2)
    assert [entry["step"] for entry in many] == [entry["step"] for entry in single] == [1, 2]
    for a, b in zip(many, single):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["grad_norm"] == pytest.approx(
            b["grad_norm"], rel=1e-4
        )
    adapters = [load_file(run / "adapter_model.safetensors") for run in (two, one)]
    for name in adapters[1]:
        torch.testing.assert_close(adapters[0][name], adapters[1][name], rtol=1e-4, atol=1e-6)


def test_lora_with_full_batch_negatives_trains_like_one_big_batch(tmp_path, toy, start_without_dropout):
    """GradCache with LoRA: 2 accumulated micro-batches of 8 log the losses and gradient norms of batches of 16."""
    flags = lora_flags(start_without_dropout, toy, "--max_steps", "2", "--save_steps", "2", "--optim", "sgd")
    flags += ["--train_sampling_strategy", "sequential"]
    accumulated, big = tmp_path / "accumulated", tmp_path / "big"
    run_stage(
        "contrastive", accumulated, *flags, "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "2"
    )
    run_stage("contrastive", big, *flags)
    for a, b in zip(checkpoint_log(accumulated, 2), checkpoint_log(big, 2), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["grad_norm"] == pytest.approx(
            b["grad_norm"], rel=1e-4
        )


def test_lora_resumed_after_sigkill_equals_the_uninterrupted_run(tmp_path, toy, start_without_dropout):
    flags = lora_flags(
        start_without_dropout, toy, "--max_steps", "8", "--save_steps", "2", "--per_device_train_batch_size", "8"
    )
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    torchrun("contrastive", whole, 2, *flags)
    kill_after_checkpoint(torchrun_command("contrastive", killed, 2, *flags), killed, 4)
    for newer in [path for path in killed.glob("checkpoint-*") if int(path.name.split("-")[1]) > 4]:
        shutil.rmtree(newer)  # resume from checkpoint-4 whatever the kill left after it
    assert sorted(path.name for path in killed.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    torchrun("contrastive", killed, 2, *flags, "--resume_from_checkpoint", "true")  # the newest complete one: 4
    whole_losses = {entry["step"]: entry["loss"] for entry in checkpoint_log(whole, 8)}
    resumed_losses = {entry["step"]: entry["loss"] for entry in checkpoint_log(killed, 8)}
    assert whole_losses.keys() == resumed_losses.keys() == set(range(1, 9))
    for step in range(5, 9):
        assert resumed_losses[step] == pytest.approx(whole_losses[step], rel=1e-5), step
    finals = [load_file(run / "adapter_model.safetensors") for run in (whole, killed)]
    for name in finals[0]:
        torch.testing.assert_close(finals[1][name], finals[0][name], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--unfreeze_vision", "true"], "drop --unfreeze_vision and use --lora_targets both"),
        (["--lora_layers", "attention,ffn"], "--lora_layers 'attention,ffn': choose a comma-separated list"),
        (["--lora_r", "-1"], "--lora_r -1 is too small"),
        (["--wise_ft_sweep", "0,2"], "2.0 is outside"),
        (["--before_after", "true"], "scores the model on --validation_files and/or --zeroshot_data_dir"),
        (["--wise_ft_alpha", "0.5", "--wise_ft_sweep", "0,1"], "not both"),
    ],
)
def test_fine_tuning_flags_that_cannot_work_are_refused_before_loading(tmp_path, toy, cli, extra, message):
    flags = lora_flags(tmp_path / "nowhere-yet", toy, "--max_steps", "1", *extra)
    stage_refusal(cli, "contrastive", tmp_path / "out", *flags, match=message)


def test_merge_adapter_without_an_adapter_is_refused(tmp_path, toy, cli):
    flags = ["--model_name_or_path", "x/y", "--train_files", str(toy["captions"]), "--merge_adapter", "true"]
    stage_refusal(cli, "contrastive", tmp_path / "out", *flags, match="--merge_adapter true needs an adapter")
