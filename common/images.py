"""The one image loader of training, evaluation, the demo and its Space: any source to the RGB image the model's
processor should see.

- EXIF orientation applied (a phone photo is embedded upright), as transformers' ``load_image`` does;
- transparency composited onto white, as transformers' image processors' ``convert_to_rgb`` does (alpha, palette
  transparency, LA/PA); every other mode (CMYK, grey, 16-bit) converted to RGB through the same path;
- a decompression-bomb cap checked before any pixel is decoded;
- optionally, JPEGs decoded at the smallest DCT scale (1/2..1/8) that still covers the model's input.
"""

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

MAX_IMAGE_PIXELS = 178_956_970  # Pillow's own decompression-bomb limit, applied explicitly


class ImageTooLarge(ValueError):
    """An image beyond the pixel cap, refused before decoding."""


def _open(source: Any) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        return Image.fromarray(source if source.dtype == np.uint8 else source.astype(np.uint8))
    if isinstance(source, (bytes, bytearray)):
        return Image.open(io.BytesIO(source))
    if isinstance(source, dict) and ("bytes" in source or "path" in source):  # datasets' undecoded Image
        return _open(source.get("bytes") or source["path"])
    if isinstance(source, (str, os.PathLike)):
        return Image.open(Path(source))
    if hasattr(source, "read"):
        return Image.open(io.BytesIO(source.read()))
    raise TypeError(f"cannot read an image from a {type(source).__name__}")


def to_rgb(image: Image.Image) -> Image.Image:
    """transformers' ``convert_to_rgb``: RGB as it is, anything else through RGBA onto a white background."""
    if image.mode == "RGB":
        return image
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


def open_rgb_image(source: Any, min_side: int | None = None, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """An upright RGB image from a path, bytes, a file object, a PIL image, a numpy array or a datasets image.

    With `min_side`, a JPEG is decoded at the smallest DCT scale that keeps both sides at least `min_side` pixels.
    Raises `ImageTooLarge` above `max_pixels`, and PIL's own errors for unreadable data.
    """
    image = _open(source)
    if image.width * image.height > max_pixels:
        raise ImageTooLarge(f"image of {image.width}x{image.height} pixels is larger than {max_pixels:,} pixels")
    if min_side and image.format == "JPEG" and min(image.size) >= 2 * min_side:
        image.draft("RGB", (min_side, min_side))
    image.load()
    return to_rgb(ImageOps.exif_transpose(image))
