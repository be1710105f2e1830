"""AltCLIPModel and its towers: outputs, loss, save/load, attention backends, dtype, checkpointing, input errors."""

import json
import shutil

import pytest
import torch
from tiny_models import TINY_IMAGE_SIZE, random_images, tiny_config
from transformers import AutoConfig, AutoModel, AutoModelForZeroShotImageClassification, AutoProcessor

from modeling_altclip import (
    AltCLIPConfig,
    AltCLIPModel,
    AltCLIPOutput,
    AltCLIPProcessor,
    AltCLIPTextModel,
    AltCLIPVisionModel,
    NonFiniteInputError,
)


@pytest.fixture()
def batch(processor):
    texts = ["a photo of a cat", "一只猫的照片", "una foto de un perro"]
    return processor(text=texts, images=random_images(3), return_tensors="pt", padding=True)


def test_forward_returns_normalised_embeddings_and_consistent_logits(tiny_model, batch):
    with torch.no_grad():
        out = tiny_model(**batch)
    assert isinstance(out, AltCLIPOutput)
    assert out.logits_per_image.shape == (3, 3) and out.text_embeds.shape == (3, 16)
    torch.testing.assert_close(out.text_embeds.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(out.image_embeds.norm(dim=-1), torch.ones(3))
    expected = out.image_embeds @ out.text_embeds.t() * tiny_model.logit_scale.exp()
    torch.testing.assert_close(out.logits_per_image, expected)
    torch.testing.assert_close(out.logits_per_text, out.logits_per_image.t())


def test_text_feature_is_projected_cls_of_pre_ln_transformation(tiny_model, batch):
    with torch.no_grad():
        hidden = tiny_model.text_model.roberta(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
        expected = tiny_model.text_projection(
            tiny_model.text_model.transformation(tiny_model.text_model.pre_LN(hidden))[:, 0]
        )
        features = tiny_model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    torch.testing.assert_close(features.pooler_output, expected)


def test_image_features_match_forward(tiny_model, batch):
    with torch.no_grad():
        features = tiny_model.get_image_features(pixel_values=batch["pixel_values"]).pooler_output
        out = tiny_model(**batch)
    torch.testing.assert_close(torch.nn.functional.normalize(features, dim=-1), out.image_embeds)


def test_return_loss_is_symmetric_cross_entropy(tiny_model, batch):
    with torch.no_grad():
        out = tiny_model(**batch, return_loss=True)
    labels = torch.arange(3)
    expected = (
        torch.nn.functional.cross_entropy(out.logits_per_text, labels)
        + torch.nn.functional.cross_entropy(out.logits_per_image, labels)
    ) / 2
    torch.testing.assert_close(out.loss, expected)


def test_return_tuple(tiny_model, batch):
    with torch.no_grad():
        out = tiny_model(**batch, return_dict=False)
    assert isinstance(out, tuple)
    torch.testing.assert_close(out[0], tiny_model(**batch).logits_per_image)


def test_save_and_reload_gives_identical_outputs(tiny_model, tiny_model_dir, batch):
    reloaded = AltCLIPModel.from_pretrained(tiny_model_dir).eval()
    assert (tiny_model_dir / "model.safetensors").is_file()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits_per_image, tiny_model(**batch).logits_per_image)


def test_auto_classes_resolve_to_this_package(tiny_model_dir):
    assert isinstance(AutoConfig.from_pretrained(tiny_model_dir), AltCLIPConfig)
    assert type(AutoModel.from_pretrained(tiny_model_dir)) is AltCLIPModel
    assert type(AutoModelForZeroShotImageClassification.from_pretrained(tiny_model_dir)) is AltCLIPModel
    assert type(AutoProcessor.from_pretrained(tiny_model_dir)) is AltCLIPProcessor


def test_towers_save_and_load_on_their_own(tmp_path, tiny_model, batch):
    text_dir, vision_dir = tmp_path / "text", tmp_path / "vision"
    tiny_model.text_model.save_pretrained(text_dir)
    tiny_model.vision_model.save_pretrained(vision_dir)
    text = AltCLIPTextModel.from_pretrained(text_dir).eval()
    vision = AutoModel.from_pretrained(vision_dir).eval()
    assert type(vision) is AltCLIPVisionModel
    with torch.no_grad():
        torch.testing.assert_close(
            text(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).pooler_output,
            tiny_model.text_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).pooler_output,
        )
        torch.testing.assert_close(
            vision(pixel_values=batch["pixel_values"]).pooler_output,
            tiny_model.vision_model(pixel_values=batch["pixel_values"]).pooler_output,
        )


def test_sdpa_and_eager_attention_agree_on_padded_batches(tiny_model_dir, batch):
    assert batch["attention_mask"].min() == 0, "the batch must contain padding for this test to mean anything"
    sdpa = AltCLIPModel.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()
    eager = AltCLIPModel.from_pretrained(tiny_model_dir, attn_implementation="eager").eval()
    assert sdpa.text_model.config._attn_implementation == "sdpa"
    assert sdpa.vision_model.config._attn_implementation == "sdpa"
    assert eager.text_model.config._attn_implementation == "eager"
    with torch.no_grad():
        torch.testing.assert_close(
            sdpa(**batch).logits_per_image, eager(**batch).logits_per_image, atol=1e-5, rtol=1e-5
        )


def test_dtype_argument_loads_half_precision_weights(tiny_model_dir, batch):
    model = AltCLIPModel.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).eval()
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        out = model(**{**batch, "pixel_values": batch["pixel_values"].to(torch.bfloat16)})
    assert out.logits_per_image.dtype == torch.bfloat16 and torch.isfinite(out.logits_per_image.float()).all()


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model_dir, batch):
    def gradients(checkpointing: bool) -> dict[str, torch.Tensor]:
        model = AltCLIPModel.from_pretrained(tiny_model_dir)
        if checkpointing:  # transformers renamed the method to activation_checkpointing_enable in 5.x
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable()
        model.train()
        model(**batch, return_loss=True).loss.backward()
        return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = gradients(False), gradients(True)
    assert AltCLIPModel.supports_gradient_checkpointing
    assert plain.keys() == checkpointed.keys() and len(plain) > 50
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], atol=1e-6, rtol=1e-5, msg=name)


# --- bad input --------------------------------------------------------------------------------------------------


def test_return_loss_with_mismatched_batch_sizes_names_both_sizes(tiny_model, processor):
    inputs = processor(text=["a", "b", "c"], images=random_images(2), return_tensors="pt", padding=True)
    with pytest.raises(ValueError, match="3 texts and 2 images"):
        tiny_model(**inputs, return_loss=True)
    assert tiny_model(**inputs).logits_per_image.shape == (2, 3)  # scoring needs no pairing


def test_wrong_number_of_channels_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match="1 channels but the vision tower expects 3"):
        tiny_model.get_image_features(pixel_values=torch.randn(1, 1, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE))


def test_wrong_image_size_is_a_clear_error_unless_interpolating(tiny_model):
    pixels = torch.randn(1, 3, 36, 36)
    with pytest.raises(ValueError, match="36x36 but the vision tower expects 30x30"):
        tiny_model.get_image_features(pixel_values=pixels)
    assert tiny_model.get_image_features(pixel_values=pixels, interpolate_pos_encoding=True).pooler_output.shape == (
        1,
        16,
    )


def test_pixel_values_of_wrong_rank_are_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match=r"\(batch, channels, height, width\)"):
        tiny_model.get_image_features(pixel_values=torch.randn(3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE))


def test_token_ids_outside_the_vocabulary_are_a_clear_error():
    model = AltCLIPModel(tiny_config(vocab_size=100)).eval()
    with pytest.raises(ValueError, match=r"outside \[0, 100\).*tokenizer does not belong"):
        model.get_text_features(input_ids=torch.tensor([[0, 7515, 2]]))


def test_attention_mask_of_another_shape_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match="attention_mask has shape"):
        tiny_model.get_text_features(input_ids=torch.tensor([[0, 10, 2]]), attention_mask=torch.ones(1, 4))


def test_forward_without_one_modality_points_to_the_feature_methods(tiny_model):
    with pytest.raises(ValueError, match="get_text_features / get_image_features"):
        tiny_model(input_ids=torch.tensor([[0, 10, 2]]))


def test_processor_rejects_empty_and_non_string_text(processor):
    with pytest.raises(ValueError, match="empty list"):
        processor(text=[], return_tensors="pt")
    with pytest.raises(TypeError, match="item 1 is int"):
        processor(text=["ok", 3], return_tensors="pt")
    with pytest.raises(ValueError, match="needs `text`, `images` or both"):
        processor()


def test_forward_takes_precomputed_image_embeddings(tiny_model, batch):
    """What training with a frozen (or cached) image tower feeds the trained forward."""
    full = tiny_model(**batch)
    cached = tiny_model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], image_embeds=full.image_embeds
    )
    torch.testing.assert_close(cached.logits_per_image, full.logits_per_image)
    assert cached.vision_model_output is None
    with pytest.raises(ValueError, match="one of pixel_values or image_embeds"):
        tiny_model(**batch, image_embeds=full.image_embeds)


def test_processor_cuts_long_texts_at_the_position_limit(tiny_model, processor):
    """The README's own processor call on a 1,600-token text: cut at XLM-R's 512 positions, so the model runs."""
    long_text = " ".join(["multilingual"] * 1600)
    inputs = processor(text=[long_text, "a cat"], return_tensors="pt", padding=True)
    assert inputs["input_ids"].shape[1] == 512
    with torch.no_grad():
        assert tiny_model.get_text_features(**inputs).pooler_output.shape[0] == 2
    assert processor(text=[long_text], return_tensors="pt", max_length=20)["input_ids"].shape[1] == 20
    with pytest.raises(ValueError, match="max_length=600 is beyond the text tower's 512 positions"):
        processor(text=["a cat"], return_tensors="pt", max_length=600)


def test_from_pretrained_on_a_missing_folder_names_it(tmp_path):
    missing = tmp_path / "no" / "such-model"
    for load in (AltCLIPModel.from_pretrained, AltCLIPProcessor.from_pretrained, AltCLIPConfig.from_pretrained):
        with pytest.raises(
            OSError, match=rf"^{missing}: no such folder \(a local path; a Hub id looks like owner/name\)"
        ):
            load(missing)
    with pytest.raises(OSError, match=r"^\./no-model-here: no such folder"):
        AltCLIPModel.from_pretrained("./no-model-here")


@pytest.mark.parametrize(
    ("section", "field", "value", "message"),
    [
        ("text_config", "num_hidden_layers", "2", "text_config.num_hidden_layers must be an integer, not str '2'."),
        (None, "projection_dim", "16", "projection_dim must be an integer, not str '16'."),
        (None, "logit_scale_init_value", "2.6", "logit_scale_init_value must be a number, not str '2.6'."),
        ("vision_config", "image_size", "224", "Field 'image_size' with value '224' doesn't match any type"),
    ],
)
def test_a_config_with_a_string_where_a_number_belongs_names_file_and_field(
    tmp_path, tiny_model_dir, section, field, value, message
):
    """A hand-edited config.json: the error names the file and the field, not a TypeError deep in a constructor."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (config[section] if section else config)[field] = value
    (folder / "config.json").write_text(json.dumps(config))
    for load in (AltCLIPModel.from_pretrained, AltCLIPConfig.from_pretrained):
        with pytest.raises(ValueError) as error:
            load(folder)
        assert str(error.value).startswith(f"{folder / 'config.json'}: {message}")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_inputs_are_one_clear_error_not_nan_logits(tiny_model, batch, bad):
    pixels = batch["pixel_values"].clone()
    pixels[1, 0, 3, 4] = bad
    with pytest.raises(NonFiniteInputError, match=r"pixel_values hold NaN or infinite values in 1 of 3 rows \(row 1\)"):
        tiny_model(**{**batch, "pixel_values": pixels})
    with pytest.raises(NonFiniteInputError, match="pixel_values"):
        tiny_model.get_image_features(pixel_values=pixels)
    embeds = tiny_model(**batch).image_embeds.clone()
    embeds[0, 0] = bad
    with pytest.raises(NonFiniteInputError, match=r"image_embeds hold NaN or infinite values in 1 of 3 rows \(row 0\)"):
        tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], image_embeds=embeds)
    inputs_embeds = tiny_model.text_model.get_input_embeddings()(batch["input_ids"]).detach()
    inputs_embeds[0, 1, 2] = bad
    with pytest.raises(NonFiniteInputError, match="inputs_embeds"):
        tiny_model.text_model(inputs_embeds=inputs_embeds, attention_mask=batch["attention_mask"])
    assert torch.isfinite(tiny_model(**batch).logits_per_image).all()  # finite inputs still pass
