"""Checkpoints laid out as released: transformers' AltCLIP, BAAI/AltCLIP on the Hub, FlagAI; parity and strictness."""

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from tiny_models import random_images, tiny_config_kwargs

from modeling_altclip import AltCLIPConfig, AltCLIPModel, AltCLIPProcessor, CheckpointMismatchError

REFERENCE_VOCAB = 1000


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory):
    """A small random transformers.AltCLIPModel written by transformers' own save_pretrained."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("reference_altclip")
    transformers.AltCLIPModel(transformers.AltCLIPConfig(**tiny_config_kwargs(REFERENCE_VOCAB))).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def reference_inputs():
    torch.manual_seed(2)
    input_ids = torch.randint(3, REFERENCE_VOCAB, (4, 9))
    input_ids[:, 0], input_ids[:, -1] = 0, 2
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0
    attention_mask[3, 3:] = 0
    return dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values=torch.randn(3, 3, 30, 30))


def outputs_of(model, inputs):
    with torch.no_grad():
        return model.eval()(**inputs)


def assert_same_outputs(reference, ours, inputs):
    expected, actual = outputs_of(reference, inputs), outputs_of(ours, inputs)
    for field in ("image_embeds", "text_embeds", "logits_per_image", "logits_per_text"):
        difference = (getattr(expected, field) - getattr(actual, field)).abs().max().item()
        assert difference <= 1e-5, f"{field} differs by {difference}"


def rewrite_checkpoint(source, target, rename=lambda key: key, extra=None, drop=(), config_edit=None):
    """Copy a saved model folder, renaming/adding/dropping weights and editing config.json on the way."""
    target.mkdir(parents=True, exist_ok=True)
    state = {rename(k): v for k, v in load_file(source / "model.safetensors").items() if k not in drop}
    state.update(extra or {})
    save_file(state, target / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((source / "config.json").read_text())
    if config_edit:
        config_edit(config)
    (target / "config.json").write_text(json.dumps(config))
    return target


def test_transformers_checkpoint_gives_identical_embeddings_and_logits(reference_dir, reference_inputs):
    reference = transformers.AltCLIPModel.from_pretrained(reference_dir)
    ours = AltCLIPModel.from_pretrained(reference_dir)
    assert isinstance(ours.config, AltCLIPConfig) and ours.config.model_type == "altclip_xlmr"
    assert_same_outputs(reference, ours, reference_inputs)


def test_transformers_checkpoint_writes_encoder_layer_names(reference_dir):
    """Documents what transformers itself writes, so the renaming below stays tested against reality."""
    keys = load_file(reference_dir / "model.safetensors").keys()
    assert any(".encoder.layer.0." in key for key in keys)


@pytest.mark.parametrize(
    "text_spelling, vision_spelling",
    [("layer", "layers"), ("layers", "layers"), ("layer", "layer"), ("layers", "layer")],
    ids=["hub-baai", "transformers-module-names", "transformers-5-save", "mixed"],
)
def test_both_block_spellings_load_in_either_tower(
    tmp_path, reference_dir, reference_inputs, text_spelling, vision_spelling
):
    def rename(key):
        for tower, spelling in (
            ("text_model.roberta.encoder.", text_spelling),
            ("vision_model.encoder.", vision_spelling),
        ):
            if key.startswith(tower):
                block = key[len(tower) :].split(".", 1)[1]
                return f"{tower}{spelling}.{block}"
        return key

    path = rewrite_checkpoint(reference_dir, tmp_path / "ckpt", rename=rename)
    assert any(f"text_model.roberta.encoder.{text_spelling}.0." in k for k in load_file(path / "model.safetensors"))
    assert_same_outputs(
        transformers.AltCLIPModel.from_pretrained(reference_dir), AltCLIPModel.from_pretrained(path), reference_inputs
    )


def add_baai_stale_fields(config):
    """The extra fields BAAI/AltCLIP's config.json carries from transformers 4 and FlagAI."""
    config.update(direct_kd=False, num_layers=3, _commit_hash=None, torch_dtype="float32")
    config["text_config"].update(
        pooler_fn="cls",
        learn_encoder=False,
        position_embedding_type="absolute",
        bad_words_ids=None,
        chunk_size_feed_forward=0,
        num_beams=1,
    )
    config["vision_config"].update(dropout=0.0, bad_words_ids=None, num_beams=1)
    config["text_config_dict"] = {"hidden_size": config["text_config"]["hidden_size"], "num_hidden_layers": 2}
    config["vision_config_dict"] = {"hidden_size": config["vision_config"]["hidden_size"], "patch_size": 6}


def test_released_config_with_stale_fields_loads_and_saves_clean(tmp_path, reference_dir, reference_inputs):
    path = rewrite_checkpoint(reference_dir, tmp_path / "released", config_edit=add_baai_stale_fields)
    ours = AltCLIPModel.from_pretrained(path)
    assert_same_outputs(transformers.AltCLIPModel.from_pretrained(reference_dir), ours, reference_inputs)
    ours.save_pretrained(tmp_path / "resaved")
    saved = json.loads((tmp_path / "resaved" / "config.json").read_text())
    assert saved["model_type"] == "altclip_xlmr"
    for stale in ("direct_kd", "num_layers", "text_config_dict", "vision_config_dict"):
        assert stale not in saved
    assert "pooler_fn" not in saved["text_config"] and "num_beams" not in saved["vision_config"]


def test_config_dict_entries_override_sub_configs_as_in_transformers_4(tmp_path, reference_dir):
    def edit(config):
        config["text_config_dict"] = {"num_hidden_layers": 1}

    path = rewrite_checkpoint(reference_dir, tmp_path / "override", config_edit=edit)
    assert AltCLIPConfig.from_pretrained(path).text_config.num_hidden_layers == 1


def test_flagai_checkpoint_with_pooler_and_position_ids_loads(tmp_path, reference_dir, reference_inputs):
    """FlagAI keeps XLM-R's pooler and old position_ids buffers in a pytorch_model.bin; both are unused."""
    state = load_file(reference_dir / "model.safetensors")
    state["text_model.roberta.pooler.dense.weight"] = torch.randn(32, 32)
    state["text_model.roberta.pooler.dense.bias"] = torch.randn(32)
    state["text_model.roberta.embeddings.position_ids"] = torch.arange(514)[None]
    state["vision_model.embeddings.position_ids"] = torch.arange(26)[None]
    path = tmp_path / "flagai"
    path.mkdir()
    torch.save(state, path / "pytorch_model.bin")
    config = json.loads((reference_dir / "config.json").read_text())
    add_baai_stale_fields(config)
    (path / "config.json").write_text(json.dumps(config))
    assert_same_outputs(
        transformers.AltCLIPModel.from_pretrained(reference_dir), AltCLIPModel.from_pretrained(path), reference_inputs
    )


def test_unknown_weights_are_an_error_naming_them(tmp_path, reference_dir):
    path = rewrite_checkpoint(reference_dir, tmp_path / "extra", extra={"text_model.adapter.weight": torch.ones(2)})
    with pytest.raises(CheckpointMismatchError, match=r"unexpected_keys: text_model\.adapter\.weight"):
        AltCLIPModel.from_pretrained(path)


def test_missing_weights_are_an_error_naming_them(tmp_path, reference_dir):
    path = rewrite_checkpoint(reference_dir, tmp_path / "missing", drop={"text_model.transformation.weight"})
    with pytest.raises(CheckpointMismatchError, match=r"missing_keys: text_model\.transformation\.weight"):
        AltCLIPModel.from_pretrained(path)


def test_config_that_does_not_fit_the_weights_is_an_error_naming_them(tmp_path, reference_dir):
    def edit(config):
        config["text_config"]["project_dim"] = 40

    path = rewrite_checkpoint(reference_dir, tmp_path / "wrong_dims", config_edit=edit)
    with pytest.raises(CheckpointMismatchError, match=r"mismatched_keys: .*text_model\.transformation\.weight"):
        AltCLIPModel.from_pretrained(path)


def test_output_loading_info_is_still_returned_when_asked(reference_dir):
    model, info = AltCLIPModel.from_pretrained(reference_dir, output_loading_info=True)
    assert isinstance(model, AltCLIPModel) and not info["missing_keys"] and not info["unexpected_keys"]


def test_output_loading_info_lets_the_caller_inspect_a_partial_load(tmp_path, reference_dir):
    """Strict by default, but a caller who asks for the loading info gets (model, info), as in transformers."""
    path = rewrite_checkpoint(reference_dir, tmp_path / "missing", drop={"text_model.transformation.weight"})
    model, info = AltCLIPModel.from_pretrained(path, output_loading_info=True)
    assert isinstance(model, AltCLIPModel)
    assert sorted(info["missing_keys"]) == ["text_model.transformation.weight"]
    with pytest.raises(CheckpointMismatchError):
        AltCLIPModel.from_pretrained(path)


def test_transformers_processor_loads_into_ours_with_identical_outputs(tmp_path, xlmr_tokenizer, image_processor):
    transformers.AltCLIPProcessor(image_processor=image_processor, tokenizer=xlmr_tokenizer).save_pretrained(tmp_path)
    reference = transformers.AltCLIPProcessor.from_pretrained(tmp_path)
    ours = AltCLIPProcessor.from_pretrained(tmp_path)
    assert type(ours) is AltCLIPProcessor
    texts = ["a photo of a cat", "一只猫的照片", "фотография собаки", "صورة قطة"]
    images = random_images(3, size=(64, 48))
    expected = reference(text=texts, images=images, return_tensors="pt", padding=True)
    actual = ours(text=texts, images=images, return_tensors="pt", padding=True)
    assert set(expected.keys()) == set(actual.keys()) == {"input_ids", "attention_mask", "pixel_values"}
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


def test_real_xlmr_tokenizer_ids(xlmr_tokenizer):
    assert len(xlmr_tokenizer) == 250002
    assert xlmr_tokenizer("a photo of a cat")["input_ids"] == [0, 10, 16186, 111, 10, 7515, 2]
    assert xlmr_tokenizer.model_max_length == 512


def test_a_truncated_weights_file_is_named(tmp_path, reference_dir):
    import shutil

    shutil.copytree(reference_dir, tmp_path / "model")
    weights = tmp_path / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(OSError, match=rf"{weights}: the weights cannot be read .*truncated or corrupt"):
        AltCLIPModel.from_pretrained(tmp_path / "model")


def test_logit_scale_is_a_vector_in_the_model_and_a_scalar_in_files(tmp_path, reference_dir):
    """FSDP2 and DeepSpeed need the temperature as a (1,) parameter; released files (transformers', BAAI's) and this
    package's saves keep the 0-dim tensor, and both that and a (1,) file load; transformers' own class reads ours."""
    released = load_file(reference_dir / "model.safetensors")["logit_scale"]
    assert released.dim() == 0
    ours = AltCLIPModel.from_pretrained(reference_dir)
    assert ours.logit_scale.shape == (1,) and ours.logit_scale.item() == pytest.approx(released.item())
    with torch.no_grad():
        ours.logit_scale.fill_(2.5)
    ours.save_pretrained(tmp_path / "saved")
    assert load_file(tmp_path / "saved" / "model.safetensors")["logit_scale"].shape == ()
    theirs = transformers.AltCLIPModel.from_pretrained(tmp_path / "saved")
    assert theirs.logit_scale.shape == () and theirs.logit_scale.item() == pytest.approx(2.5)
    assert AltCLIPModel.from_pretrained(tmp_path / "saved").logit_scale.tolist() == [2.5]
    vector_file = rewrite_checkpoint(reference_dir, tmp_path / "vector", extra={"logit_scale": torch.tensor([1.5])})
    assert AltCLIPModel.from_pretrained(vector_file).logit_scale.tolist() == [1.5]
    fresh = AltCLIPModel(ours.config)
    fresh.load_state_dict(load_file(tmp_path / "saved" / "model.safetensors"))  # a Trainer resuming a checkpoint
    assert fresh.logit_scale.tolist() == [2.5]
