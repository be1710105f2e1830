"""Fixtures shared by the whole suite: tiny random AltCLIP models built here, the real XLM-R tokenizer."""

import pytest
import torch
from tiny_models import TINY_IMAGE_SIZE, tiny_config
from transformers import CLIPImageProcessorPil

from modeling_altclip import AltCLIPModel, AltCLIPProcessor
from modeling_altclip.assets import load_xlmr_tokenizer


@pytest.fixture(scope="session")
def xlmr_tokenizer():
    return load_xlmr_tokenizer()


@pytest.fixture(scope="session")
def image_processor():
    size = TINY_IMAGE_SIZE
    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


@pytest.fixture(scope="session")
def processor(xlmr_tokenizer, image_processor):
    return AltCLIPProcessor(image_processor=image_processor, tokenizer=xlmr_tokenizer)


@pytest.fixture(scope="session")
def tiny_model():
    torch.manual_seed(0)
    return AltCLIPModel(tiny_config()).eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_model, processor):
    """A complete saved model folder: weights, config (with auto_map), code files, processor files."""
    path = tmp_path_factory.mktemp("tiny_altclip")
    tiny_model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
