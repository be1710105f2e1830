"""Tiny random AltCLIP configurations and inputs that the tests build (hidden 32, 2 layers: milliseconds)."""

import numpy as np
from PIL import Image

from modeling_altclip import AltCLIPConfig

TINY_IMAGE_SIZE = 30
XLMR_VOCAB_SIZE = 250002
TINY_TEXT_CONFIG = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=514,
    project_dim=24,
    hidden_dropout_prob=0.0,
)
TINY_VISION_CONFIG = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    image_size=TINY_IMAGE_SIZE,
    patch_size=6,
)


def tiny_config_kwargs(vocab_size: int = XLMR_VOCAB_SIZE) -> dict:
    """Keyword arguments of a tiny AltCLIP config (hidden 32, 2 layers) for ours or transformers' class."""
    return dict(
        text_config={**TINY_TEXT_CONFIG, "vocab_size": vocab_size},
        vision_config=dict(TINY_VISION_CONFIG),
        projection_dim=16,
    )


def tiny_config(vocab_size: int = XLMR_VOCAB_SIZE) -> AltCLIPConfig:
    return AltCLIPConfig(**tiny_config_kwargs(vocab_size))


def random_images(count: int, seed: int = 0, size: tuple[int, int] = (48, 40)) -> list[Image.Image]:
    rng = np.random.RandomState(seed)
    return [Image.fromarray((rng.rand(size[1], size[0], 3) * 255).astype("uint8")) for _ in range(count)]
