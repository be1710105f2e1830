"""LoRA adapter folders as models: told from full checkpoints, loaded onto the base model they name, and served
by evaluation's Embedder and the demo with the same numbers as the merged checkpoint; pushed as adapter repos."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from tiny_models import random_images

from altclip.common.adapters import AdapterError, is_adapter_folder, load_altclip, processor_source
from altclip.common.embedding import Embedder
from altclip.demo.engine import DemoEngine
from altclip.hub.cli import main as push_main
from altclip.training.finetune.new_tokens import WORD_EMBEDDINGS
from modeling_altclip import AltCLIPModel, AltCLIPProcessor

ADAPTER_FILES = {
    "configuration_altclip.py",  # processing_altclip.py imports it (remote code)
    "README.md",
    "adapter_config.json",
    "adapter_model.safetensors",
    "processing_altclip.py",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
}


TOKENS = {WORD_EMBEDDINGS: [5, 17, 99]}


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """A LoRA adapter with random (non-zero) B matrices on both towers of the tiny model and three trained token
    embeddings (`--lora_trainable_tokens`; rows moved at random), saved alone."""
    torch.manual_seed(0)
    base = AltCLIPModel.from_pretrained(tiny_model_dir)
    targets = ["query", "value", "q_proj", "v_proj"]
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False, trainable_token_indices=TOKENS
    )
    adapted = get_peft_model(base, config)
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "trainable_tokens_delta" in name:
                parameter.add_(torch.randn_like(parameter))
    folder = tmp_path_factory.mktemp("adapter")
    adapted.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def merged_dir(tmp_path_factory, adapter_dir, tiny_model_dir) -> Path:
    folder = tmp_path_factory.mktemp("merged")
    base = AltCLIPModel.from_pretrained(tiny_model_dir)
    PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload().save_pretrained(folder)
    AltCLIPProcessor.from_pretrained(tiny_model_dir).save_pretrained(folder)
    return folder


def test_an_adapter_folder_loads_onto_its_base_model(adapter_dir, merged_dir, tiny_model_dir, processor):
    assert is_adapter_folder(adapter_dir) and not is_adapter_folder(tiny_model_dir)
    assert processor_source(adapter_dir) == str(tiny_model_dir)  # no tokenizer beside the adapter: the base's
    inputs = processor(text=["ein Hund", "a cat"], images=random_images(2), return_tensors="pt", padding=True)
    with torch.no_grad():
        merged = load_altclip(adapter_dir).eval()(**inputs).logits_per_image
        unmerged = load_altclip(adapter_dir, merge=False).eval()(**inputs).logits_per_image
        saved = AltCLIPModel.from_pretrained(merged_dir).eval()(**inputs).logits_per_image
        base = AltCLIPModel.from_pretrained(tiny_model_dir).eval()(**inputs).logits_per_image
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(saved, unmerged, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(base, unmerged, atol=1e-4)


def test_a_relative_base_path_is_read_from_the_adapter_folder_and_a_missing_one_is_named(tmp_path, adapter_dir):
    moved = tmp_path / "project" / "adapter"
    shutil.copytree(adapter_dir, moved)
    config = json.loads((moved / "adapter_config.json").read_text())
    shutil.copytree(config["base_model_name_or_path"], tmp_path / "project" / "base")
    config["base_model_name_or_path"] = "../base"
    (moved / "adapter_config.json").write_text(json.dumps(config))
    assert isinstance(load_altclip(moved), AltCLIPModel)
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    (moved / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterError, match=r"its base model .*gone .* does not exist"):
        load_altclip(moved)


def test_embedder_and_demo_serve_an_adapter_like_its_merged_checkpoint(adapter_dir, merged_dir):
    images = random_images(3, seed=1)
    texts = ["ein Hund", "a cat", "一只猫"]
    embedded = {}
    for name, folder in (("adapter", adapter_dir), ("merged", merged_dir)):
        embedder = Embedder.from_pretrained(folder, device="cpu", dtype="float32", onednn_linear=False)
        embedded[name] = (embedder.images(images)[0], embedder.texts(texts))
    for adapter_side, merged_side in zip(embedded["adapter"], embedded["merged"]):
        torch.testing.assert_close(adapter_side, merged_side, rtol=1e-5, atol=1e-5)
    labels = "dog, cat, bird"
    adapter_engine, merged_engine = DemoEngine(adapter_dir, device="cpu"), DemoEngine(merged_dir, device="cpu")
    adapter_scores = adapter_engine.classify(images[0], labels)
    merged_scores = merged_engine.classify(images[0], labels)
    assert adapter_scores.keys() == merged_scores.keys()
    assert all(adapter_scores[key] == pytest.approx(merged_scores[key], abs=1e-5) for key in adapter_scores)


def test_push_publishes_the_adapter_with_a_card_naming_its_base_model(tmp_path, adapter_dir, cli):
    cli.refusal(push_main, adapter_dir, "someone/tiny-lora", "--dry-run", tmp_path / "a")  # no --base-model
    assert not (tmp_path / "a").exists()
    target = tmp_path / "upload"
    push_main([str(adapter_dir), "someone/tiny-lora", "--base-model", "someone/tiny-altclip", "--dry-run", str(target)])
    assert {str(path.relative_to(target)) for path in target.rglob("*") if path.is_file()} == ADAPTER_FILES
    pushed_config = json.loads((target / "adapter_config.json").read_text())
    assert pushed_config["base_model_name_or_path"] == "someone/tiny-altclip"
    assert pushed_config["trainable_token_indices"] == TOKENS  # the trained token rows travel with the adapter
    pushed, saved = (load_file(folder / "adapter_model.safetensors") for folder in (target, adapter_dir))
    assert pushed.keys() == saved.keys() and any("trainable_tokens_delta" in key for key in pushed)
    assert all(torch.equal(pushed[key], saved[key]) for key in saved)
    card = ModelCard.load(target / "README.md")
    assert card.data.base_model == "someone/tiny-altclip" and card.data.library_name == "peft"
    assert 'PeftModel.from_pretrained(base, "someone/tiny-lora")' in card.text
    assert "rank 4" in card.text and "text and vision towers" in card.text


@pytest.mark.parametrize("keep", [0.5, 0.01])  # cut inside the tensors, and inside the header
def test_a_cut_adapter_weights_file_is_named_in_one_line_by_every_job(tmp_path, adapter_dir, cli, keep):
    cut = tmp_path / "adapter"
    shutil.copytree(adapter_dir, cut)
    weights = cut / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(AdapterError, match=rf"{weights} is unreadable \(cut short or damaged: .*download the adapter"):
        load_altclip(cut)
    with pytest.raises(AdapterError, match="is unreadable"):
        Embedder.from_pretrained(cut, device="cpu")
    argv = [cut, "me/cut-adapter", "--dry-run", tmp_path / "upload", "--base-model", "org/base"]
    cli.refusal(push_main, *argv, only_line=True, contains=[f"{weights} is unreadable"])
