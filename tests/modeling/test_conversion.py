"""Building a new AltCLIP from a CLIP checkpoint and an XLM-R-family checkpoint."""

import pytest
import torch
from tiny_models import TINY_VISION_CONFIG, random_images
from transformers import BertConfig, BertModel, CLIPConfig, CLIPModel, XLMRobertaConfig, XLMRobertaModel

from modeling_altclip import AltCLIPModel, AltCLIPProcessor
from modeling_altclip.conversion_altclip import build_altclip

CLIP_TEXT_WIDTH = 40


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory, image_processor):
    torch.manual_seed(3)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=99,
            hidden_size=CLIP_TEXT_WIDTH,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            max_position_embeddings=20,
        ),
        vision_config=dict(TINY_VISION_CONFIG),
        projection_dim=12,
    )
    model = CLIPModel(config)
    with torch.no_grad():
        model.logit_scale.fill_(3.3)
    path = tmp_path_factory.mktemp("clip")
    model.save_pretrained(path)
    image_processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def xlmr_dir(tmp_path_factory, xlmr_tokenizer):
    torch.manual_seed(4)
    config = XLMRobertaConfig(
        vocab_size=250002,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=514,
        type_vocab_size=1,
    )
    path = tmp_path_factory.mktemp("xlmr")
    XLMRobertaModel(config).save_pretrained(path)  # saved with its pooler, as released encoders are
    xlmr_tokenizer.save_pretrained(path)
    return path


def test_builder_copies_clip_and_encoder_weights(clip_dir, xlmr_dir):
    model, processor = build_altclip(clip_dir, xlmr_dir)
    clip, encoder = CLIPModel.from_pretrained(clip_dir), XLMRobertaModel.from_pretrained(xlmr_dir)
    assert isinstance(model, AltCLIPModel) and isinstance(processor, AltCLIPProcessor)
    assert model.config.text_config.project_dim == CLIP_TEXT_WIDTH
    assert model.text_model.transformation.weight.shape == (CLIP_TEXT_WIDTH, 32)
    assert model.config.projection_dim == 12
    torch.testing.assert_close(model.logit_scale, clip.logit_scale.reshape(1))
    torch.testing.assert_close(model.visual_projection.weight, clip.visual_projection.weight)
    torch.testing.assert_close(model.text_projection.weight, clip.text_projection.weight)
    for name, tensor in clip.vision_model.state_dict().items():
        torch.testing.assert_close(model.vision_model.state_dict()[name], tensor, msg=name)
    for name, tensor in encoder.state_dict().items():
        if not name.startswith("pooler."):
            torch.testing.assert_close(model.text_model.roberta.state_dict()[name], tensor, msg=name)


def test_built_model_reproduces_clip_image_features_and_encoder_states(clip_dir, xlmr_dir):
    model, processor = build_altclip(clip_dir, xlmr_dir)
    clip, encoder = CLIPModel.from_pretrained(clip_dir).eval(), XLMRobertaModel.from_pretrained(xlmr_dir).eval()
    inputs = processor(text=["a photo of a cat", "一只猫"], images=random_images(2), return_tensors="pt", padding=True)
    assert inputs["input_ids"][0].tolist() == [0, 10, 16186, 111, 10, 7515, 2]
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output,
            clip.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output,
        )
        torch.testing.assert_close(
            model.text_model.roberta(
                input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
            ).last_hidden_state,
            encoder(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state,
        )


def test_built_model_saves_and_reloads(tmp_path, clip_dir, xlmr_dir):
    model, processor = build_altclip(clip_dir, xlmr_dir)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded = AltCLIPModel.from_pretrained(tmp_path)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], tensor, msg=name)
    assert AltCLIPProcessor.from_pretrained(tmp_path).tokenizer.model_max_length == 512


def test_builder_rejects_an_encoder_of_another_family(tmp_path, clip_dir):
    BertModel(
        BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37)
    ).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'bert' model; AltCLIP's text tower takes an XLM-R-family encoder"):
        build_altclip(clip_dir, tmp_path)


def test_builder_rejects_a_non_clip_vision_checkpoint(xlmr_dir):
    with pytest.raises(ValueError, match="Expected a CLIP checkpoint"):
        build_altclip(xlmr_dir, xlmr_dir)
