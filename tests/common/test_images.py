"""One image loader: training, evaluation and the demo give identical pixel_values for awkward files, equal to the
processor on the upright, white-composited image (built here from the raw pixels, not by the loader)."""

import numpy as np
import pytest
import torch
from PIL import Image

from altclip.common.embedding import _PreprocessedImages
from altclip.common.images import ImageTooLarge, open_rgb_image
from altclip.demo.engine import as_rgb_image
from altclip.training.data.image_text_data import PairDecoder

ORIENTATION = 0x0112


def upright_pattern(width: int = 48, height: int = 32) -> np.ndarray:
    """An asymmetric RGB pattern: a turned or mirrored copy differs from it."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 3] = (220, 30, 30)
    pixels[: height // 2, width // 3 :] = (30, 30, 220)
    pixels[height // 2 :, width // 3 :] = (30, 200, 60)
    return pixels


def on_white(rgb: np.ndarray, opaque: np.ndarray) -> Image.Image:
    """Composite with a 0/1 alpha: exact, independent of PIL's alpha_composite."""
    return Image.fromarray(np.where(opaque[..., None], rgb, 255).astype(np.uint8))


def exif_rotated_jpeg(path):
    """Stored turned by 90 degrees with EXIF orientation 6 (a phone photo): upright is the stored pixels turned
    back by 270."""
    stored = Image.fromarray(upright_pattern()).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    stored.save(path, quality=95, exif=exif)
    with Image.open(path) as raw:  # decoded pixels, orientation not applied
        return raw.convert("RGB").transpose(Image.Transpose.ROTATE_270)


def rgba_png_with_hidden_colour(path):
    rgb = upright_pattern()
    opaque = np.zeros(rgb.shape[:2], dtype=bool)
    opaque[8:24, 8:40] = True
    hidden = rgb.copy()
    hidden[~opaque] = (255, 0, 255)  # magenta under the transparent pixels: convert("RGB") would show it
    alpha = np.where(opaque, 255, 0).astype(np.uint8)
    Image.fromarray(np.dstack([hidden, alpha]), "RGBA").save(path)
    return on_white(rgb, opaque)


def palette_gif_with_transparency(path):
    indices = np.zeros((32, 48), dtype=np.uint8)
    indices[:, 16:] = 1
    indices[10:20, 20:30] = 2  # the transparent index
    image = Image.fromarray(indices, "P")
    image.putpalette([200, 40, 40, 40, 40, 200, 0, 255, 0] + [0] * (256 - 3) * 3)
    image.save(path, transparency=2)
    palette = np.array([[200, 40, 40], [40, 40, 200], [0, 255, 0]], dtype=np.uint8)
    return on_white(palette[indices], indices != 2)


def cmyk_jpeg(path):
    Image.fromarray(upright_pattern()).convert("CMYK").save(path, quality=95)
    with Image.open(path) as raw:
        return raw.convert("RGB")


CASES = {
    "exif.jpg": exif_rotated_jpeg,
    "hidden.png": rgba_png_with_hidden_colour,
    "palette.gif": palette_gif_with_transparency,
    "cmyk.jpg": cmyk_jpeg,
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_training_evaluation_and_demo_see_the_same_upright_white_composited_pixels(tmp_path, image_processor, name):
    path = tmp_path / name
    expected_image = CASES[name](path)
    expected = image_processor(images=expected_image, return_tensors="pt")["pixel_values"][0]
    training = PairDecoder(image_processor)(str(path), str(path), "a caption")["pixel_values"]
    index, evaluation = _PreprocessedImages([path], image_processor)[0]
    demo = image_processor(images=as_rgb_image(path), return_tensors="pt")["pixel_values"][0]
    assert index == 0 and isinstance(evaluation, torch.Tensor)
    torch.testing.assert_close(training, expected, rtol=0, atol=0)
    torch.testing.assert_close(evaluation, expected, rtol=0, atol=0)
    torch.testing.assert_close(demo, expected, rtol=0, atol=0)


def test_the_loader_turns_a_phone_photo_upright(tmp_path):
    upright = exif_rotated_jpeg(tmp_path / "phone.jpg")
    assert Image.open(tmp_path / "phone.jpg").size == (32, 48)  # stored on its side
    assert open_rgb_image(tmp_path / "phone.jpg").size == upright.size == (48, 32)


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path):
    Image.new("RGB", (3000, 2000)).save(tmp_path / "big.png")
    with pytest.raises(ImageTooLarge, match="3000x2000 pixels is larger than 5,000,000"):
        open_rgb_image(tmp_path / "big.png", max_pixels=5_000_000)
