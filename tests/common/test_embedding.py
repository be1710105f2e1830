"""The Embedder's fast paths: reduced-scale JPEG decoding and int8 dynamic quantisation, against the plain path."""

import pytest
import torch
from PIL import Image
from tiny_models import TINY_VISION_CONFIG, random_images

from altclip.common.batching import length_sorted_batches
from altclip.common.embedding import Embedder
from altclip.common.images import open_rgb_image
from modeling_altclip import NonFiniteInputError
from modeling_altclip.cpu_kernels import OneDNNLinear


def test_jpeg_decoded_at_reduced_scale_still_covers_the_model_input(tmp_path):
    random_images(1, size=(800, 600))[0].save(tmp_path / "big.jpg", quality=90)
    assert open_rgb_image(tmp_path / "big.jpg").size == (800, 600)
    assert open_rgb_image(tmp_path / "big.jpg", min_side=224).size == (400, 300)  # 1/2 scale: both sides >= 224
    assert open_rgb_image(tmp_path / "big.jpg", min_side=30).size == (100, 75)  # 1/8 scale
    random_images(1, size=(800, 600))[0].save(tmp_path / "big.png")
    assert open_rgb_image(tmp_path / "big.png", min_side=30).size == (800, 600)  # only JPEG has DCT scales


def test_reduced_decoding_and_int8_stay_close_to_the_plain_path(tmp_path, tiny_model, processor):
    files = []
    for index, image in enumerate(random_images(6, size=(640, 480))):
        image = image.resize((64, 48)).resize((640, 480), Image.Resampling.BILINEAR)  # smooth, photo-like content
        image.save(tmp_path / f"{index}.jpg", quality=92)
        files.append(tmp_path / f"{index}.jpg")
    plain = Embedder(tiny_model, processor, device="cpu", batch_size=4, reduced_decoding=False)
    fast = Embedder(tiny_model, processor, device="cpu", batch_size=4)
    int8 = Embedder(tiny_model, processor, device="cpu", batch_size=4, quantization="int8")
    reference = plain.images(files)[0]
    assert (fast.images(files)[0] * reference).sum(-1).min() > 0.99
    assert (int8.images(files)[0] * reference).sum(-1).min() > 0.9
    texts = ["a cat", "ein Hund, der über eine Wiese rennt", "猫"]
    assert (int8.texts(texts) * plain.texts(texts)).sum(-1).min() > 0.9
    assert int8.fingerprint() != plain.fingerprint()  # cached class embeddings never mix the two
    assert isinstance(tiny_model.text_projection.weight, torch.nn.Parameter)  # quantised a copy, not the model


def test_quantisation_errors(tiny_model, processor):
    with pytest.raises(ValueError, match="Unknown quantization 'int4'"):
        Embedder(tiny_model, processor, device="cpu", quantization="int4")


def test_cls_only_last_layer_equals_the_full_forward(tiny_model):
    import transformers

    from altclip.common.fast_paths import projected_image_features, supports_cls_only

    pixels = torch.randn(3, 3, 30, 30)
    clip = transformers.CLIPModel(
        transformers.CLIPConfig(
            vision_config=dict(TINY_VISION_CONFIG),
            text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4),
            projection_dim=16,
        )
    ).eval()
    for model in (tiny_model, clip):  # ours, and the teacher CLIP of the reproduction
        assert supports_cls_only(model)
        with torch.no_grad():
            full = model.get_image_features(pixel_values=pixels).pooler_output
            assert torch.allclose(projected_image_features(model, pixels), full, atol=1e-5)
    assert not supports_cls_only(torch.nn.Linear(2, 2))


def test_texts_are_batched_longest_first_and_every_index_once():
    texts = ["ab", "a", "abcd", "abc", "abcde"]
    batches = length_sorted_batches(texts, 2)
    assert batches == [[4, 2], [3, 0], [1]]


def test_cpu_fp32_embedder_runs_the_linear_kernel_it_is_told_to(tiny_model, processor):
    fast = Embedder(tiny_model, processor, device="cpu", batch_size=4, linear_kernel="onednn")
    plain = Embedder(tiny_model, processor, device="cpu", batch_size=4, onednn_linear=False)  # the older spelling
    assert (fast.linear_kernel.kernel, plain.linear_kernel.kernel) == ("onednn", "default")
    assert any(isinstance(module, OneDNNLinear) for module in fast.model.modules())
    assert not any(isinstance(module, OneDNNLinear) for module in plain.model.modules())
    assert not any(module.training for module in fast.model.modules())  # the swapped layers keep eval mode
    texts = ["a cat", "ein Hund, der über eine Wiese rennt", "猫"]
    torch.testing.assert_close(fast.texts(texts), plain.texts(texts), atol=1e-5, rtol=1e-4)
    assert fast.fingerprint() == plain.fingerprint()


def test_the_embedder_refuses_non_finite_pixel_values_on_its_fast_path(tiny_model, processor):
    embedder = Embedder(tiny_model, processor, device="cpu")
    assert embedder.cls_only  # the path that does not go through the model's forward
    pixels = torch.randn(2, 3, 30, 30)
    assert torch.isfinite(embedder.image_features(pixels)).all()
    pixels[0, 1, 2, 3] = float("nan")
    with pytest.raises(NonFiniteInputError, match=r"pixel_values hold NaN or infinite values in 1 of 2 rows"):
        embedder.image_features(pixels)
