"""Losses, the frozen teacher and its feature cache."""

import math

import numpy as np
import pytest
import torch
from transformers import CLIPTextModel

from altclip.training.loop.feature_caches import MANIFEST, compute_sharded_features
from altclip.training.loop.losses import ClipLoss, distillation_loss
from altclip.training.loop.teacher import FrozenTextTeacher, load_teacher, precomputed_teacher_features
from altclip.training.toy_setup import english_word_tokenizer
from modeling_altclip import AltCLIPModel
from modeling_altclip.modeling_altclip import contrastive_loss


def test_clip_loss_on_one_process_is_the_models_symmetric_loss():
    torch.manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    scale = torch.tensor(14.0)
    torch.testing.assert_close(ClipLoss()(images, texts, scale), contrastive_loss(scale * texts @ images.t()))


def test_clip_loss_needs_pairs():
    with pytest.raises(ValueError, match="3 images but 2 texts"):
        ClipLoss()(torch.randn(3, 4), torch.randn(2, 4), torch.tensor(1.0))


def test_distillation_losses():
    student, teacher = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert distillation_loss(student, teacher, "mse").item() == pytest.approx(0.25)
    assert distillation_loss(student, teacher, "cosine").item() == pytest.approx(0.0)
    assert distillation_loss(student, -teacher, "cosine").item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="Unknown distillation loss 'l1'"):
        distillation_loss(student, teacher, "l1")
    with pytest.raises(ValueError, match=r"\(2, 2\) and teacher features \(2, 3\) differ"):
        distillation_loss(student, torch.zeros(2, 3))


def test_teacher_is_frozen_and_stays_in_eval_mode(toy):
    teacher = load_teacher(str(toy["clip"]))
    teacher.train()
    assert not teacher.training and not teacher.text_model.training
    assert not any(p.requires_grad for p in teacher.parameters())
    tokenizer = english_word_tokenizer()
    batch = tokenizer(["a red circle", "a blue square"], return_tensors="pt", padding=True)
    reference = CLIPTextModel.from_pretrained(str(toy["clip"])).eval()
    with torch.no_grad():
        expected = reference(**batch).pooler_output
    features = teacher(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(features, expected)
    assert not features.requires_grad and teacher.width == 32


def test_teacher_must_be_a_clip_text_tower(toy):
    with pytest.raises(ValueError, match="is not a usable CLIP text tower"):
        load_teacher(str(toy["xlmr"]))


def test_teacher_features_are_sharded_cached_and_reused(tmp_path, toy, monkeypatch):
    teacher, tokenizer = load_teacher(str(toy["clip"])), english_word_tokenizer()
    texts = ["a red circle", "a blue square", "a black triangle"]
    features = precomputed_teacher_features(teacher, tokenizer, texts, tmp_path, "corpus-1", batch_size=2, shard_rows=2)
    assert len(features) == 3 and features[[0, 1, 2]].dtype == np.float16
    with torch.no_grad():
        direct = teacher(**tokenizer(texts[2:3], return_tensors="pt"))
    np.testing.assert_allclose(features[[2]][0], direct[0].numpy(), rtol=2e-3, atol=2e-3)
    (folder,) = tmp_path.glob("teacher-*")
    assert sorted(path.name for path in folder.iterdir()) == ["features-00000.npy", "features-00001.npy", MANIFEST]

    def fail(*args, **kwargs):
        raise AssertionError("the teacher ran although its features were cached")

    monkeypatch.setattr(FrozenTextTeacher, "forward", fail)
    again = precomputed_teacher_features(teacher, tokenizer, texts, tmp_path, "corpus-1", shard_rows=2)
    np.testing.assert_array_equal(again[[0, 1, 2]], features[[0, 1, 2]])
    monkeypatch.undo()
    precomputed_teacher_features(teacher, tokenizer, texts, tmp_path, "corpus-2")  # another corpus
    with torch.no_grad():
        teacher.text_model.final_layer_norm.bias.add_(1.0)  # other weights, same config and path
    precomputed_teacher_features(teacher, tokenizer, texts, tmp_path, "corpus-2")
    precomputed_teacher_features(teacher.to(torch.float16), tokenizer, texts, tmp_path, "corpus-2")
    assert len(list(tmp_path.glob("teacher-*"))) == 4


def test_a_killed_precompute_keeps_its_finished_shards(tmp_path):
    calls = []

    def encode(start, stop):
        calls.append(start)
        if start == 4:
            raise KeyboardInterrupt  # the run dies while computing the third shard
        return np.full((stop - start, 2), start, dtype=np.float32)

    with pytest.raises(KeyboardInterrupt):
        compute_sharded_features(tmp_path, 5, 2, encode, shard_rows=2)
    calls.clear()
    features = compute_sharded_features(
        tmp_path, 5, 2, lambda a, b: calls.append(a) or np.full((b - a, 2), a), shard_rows=2
    )
    assert calls == [4] and features[[0, 3, 4]][:, 0].tolist() == [0, 2, 4]
    assert features[[4, 0, 4, 3]][:, 0].tolist() == [4, 0, 4, 2]  # any order, repeats, rows of several shards
    assert not list(tmp_path.glob("*.partial"))


def test_weight_decay_spares_biases_norms_embeddings_and_logit_scale(tmp_path, teacher_model_dir):
    from transformers import TrainingArguments

    from altclip.training.loop.trainers import ContrastiveTrainer

    model = AltCLIPModel.from_pretrained(teacher_model_dir)
    args = TrainingArguments(output_dir=str(tmp_path), weight_decay=0.1, use_cpu=True, report_to="none")
    trainer = ContrastiveTrainer(model=model, args=args)
    trainer.create_optimizer()
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    spared = {
        names[id(parameter)]
        for group in trainer.optimizer.param_groups
        if group["weight_decay"] == 0
        for parameter in group["params"]
    }
    assert "logit_scale" in spared and "text_model.pre_LN.weight" in spared
    assert "text_model.roberta.embeddings.word_embeddings.weight" in spared
    assert "vision_model.embeddings.patch_embedding.weight" in spared
    assert "text_model.roberta.encoder.layer.0.output.LayerNorm.weight" in spared
    assert "vision_model.encoder.layers.0.layer_norm1.weight" in spared
    assert "text_model.roberta.encoder.layer.0.attention.self.query.bias" in spared
    decayed = set(names.values()) - spared
    assert decayed and all(name.endswith("weight") and "norm" not in name.lower() for name in decayed)
    assert "text_model.roberta.encoder.layer.0.attention.self.query.weight" in decayed
    assert "text_projection.weight" in decayed


def test_the_temperature_has_a_gradient_at_its_bound_and_is_clamped_in_place(tmp_path, teacher_model_dir):
    """The loss uses the temperature the forward applied, with its gradient also at the bound (a clamp inside the loss
    would cut it off there); the bound is kept by clamping the parameter in place (`clamp_logit_scale_`)."""
    from transformers import TrainingArguments

    from altclip.training.data.image_text_data import ContrastiveCollator
    from altclip.training.loop.temperature import clamp_logit_scale_
    from altclip.training.loop.trainers import ContrastiveTrainer
    from modeling_altclip import AltCLIPProcessor

    model = AltCLIPModel.from_pretrained(teacher_model_dir).eval()
    processor = AltCLIPProcessor.from_pretrained(teacher_model_dir)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = ContrastiveTrainer(model=model, args=args, max_logit_scale=20.0)
    rows = [{"pixel_values": torch.rand(3, 32, 32) * (i + 1), "caption": f"shape {i}"} for i in range(4)]
    batch = ContrastiveCollator(processor.tokenizer, image_shape=(3, 32, 32))(rows)
    with torch.no_grad():
        model.logit_scale.fill_(9.0)
    clamp_logit_scale_(trainer, 0.0, math.log(20.0))
    assert model.logit_scale.item() == pytest.approx(math.log(20.0))
    trainer.compute_loss(model, dict(batch)).backward()
    assert model.logit_scale.grad.abs().item() > 1e-6
