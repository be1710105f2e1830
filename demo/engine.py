"""What the demo computes, without any UI: zero-shot labels, text-to-image search, caption ranking.

Every user input is checked here and refused with a `DemoInputError` whose message the UI shows as it is.
"""

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from altclip.common.adapters import load_altclip, processor_source
from altclip.common.constants import DEFAULT_MAX_TEXT_LENGTH
from altclip.common.devices import default_device
from altclip.common.fast_paths import apply_linear_kernel, choose_linear_kernel
from altclip.common.images import ImageTooLarge, open_rgb_image
from modeling_altclip import AltCLIPProcessor, check_finite_weights

MAX_LABELS = 50
MAX_CAPTIONS = 50
MAX_GALLERY = 200
MAX_LABEL_CHARS = 200
MAX_IMAGE_PIXELS = 50_000_000  # about 7000 x 7000; larger uploads are refused before decoding
MAX_CACHED_EMBEDDINGS = 10_000  # gallery files whose embeddings an engine keeps
WORKING_SIZE = 1024  # search results are shown at most this large
DEFAULT_TEMPLATE = "a photo of {}"


class DemoInputError(ValueError):
    """Input the demo cannot use; the message is written for the person who gave it."""


LABEL_SEPARATORS = r"[,\n，、]"  # commas (also the Chinese ones) or new lines
CAPTION_SEPARATORS = r"\n"  # captions may hold commas: one per line


def split_entries(text: str | None, what: str, limit: int, separators: str = LABEL_SEPARATORS) -> list[str]:
    """Separated entries, stripped and de-duplicated in order; 1 to `limit` of them."""
    entries = list(dict.fromkeys(part.strip() for part in re.split(separators, text or "") if part.strip()))
    if not entries:
        how = "one per line" if separators == CAPTION_SEPARATORS else "separate several by commas or new lines"
        raise DemoInputError(f"Please enter at least one {what} ({how}).")
    if len(entries) > limit:
        raise DemoInputError(f"{len(entries)} {what}s is too many: at most {limit}.")
    too_long = [entry for entry in entries if len(entry) > MAX_LABEL_CHARS]
    if too_long:
        raise DemoInputError(f"A {what} may have at most {MAX_LABEL_CHARS} characters: {too_long[0][:40]}…")
    return entries


def as_rgb_image(image: Any, name: str = "the image") -> Image.Image:
    """A file path, PIL image or numpy array as the upright RGB image the model sees (`common.images`: EXIF
    orientation, transparency on white), refused above MAX_IMAGE_PIXELS before decoding."""
    if image is None:
        raise DemoInputError("Please upload an image first.")
    try:
        return open_rgb_image(image, max_pixels=MAX_IMAGE_PIXELS)
    except ImageTooLarge as error:
        raise DemoInputError(f"{name} is too large: {error} (at most {MAX_IMAGE_PIXELS // 1_000_000} megapixels).")
    except (UnidentifiedImageError, OSError, ValueError, TypeError, Image.DecompressionBombError) as error:
        raise DemoInputError(f"Could not read {name} as an image ({type(error).__name__}).") from error


def for_display(image: Image.Image) -> Image.Image:
    """A copy at most WORKING_SIZE pixels wide and high, for the gallery shown back to the user."""
    shown = image.copy()
    shown.thumbnail((WORKING_SIZE, WORKING_SIZE))
    return shown


def file_key(item: Any) -> tuple | None:
    """(path, size, modification time) of a file, the key under which its embedding is kept; None otherwise."""
    if not isinstance(item, (str, Path)):
        return None
    stat = Path(item).stat()
    return str(Path(item).resolve()), stat.st_size, stat.st_mtime_ns


def fill_template(template: str | None, label: str) -> str:
    template = (template or "").strip() or "{}"
    if template.count("{}") != 1:
        raise DemoInputError("The prompt template needs exactly one {} where the label goes, e.g. 'a photo of {}'.")
    return template.replace("{}", label)


class DemoEngine:
    """One loaded AltCLIP model and its processor, with the three demo tasks."""

    def __init__(self, model_name_or_path: str | Path, device: str | None = None):
        self.name = str(model_name_or_path)
        self.device = torch.device(device) if device else default_device()
        self.model = load_altclip(model_name_or_path).to(self.device).eval()  # a checkpoint or a LoRA adapter
        check_finite_weights(self.model, model_name_or_path)
        if self.device.type == "cpu":  # fp32 Linear layers on the kernel measured fastest here (oneDNN: ~2x on AMD)
            self.linear_kernel = choose_linear_kernel(self.model)
            self.model = apply_linear_kernel(self.model, self.linear_kernel.kernel, inplace=True)
        self.processor = AltCLIPProcessor.from_pretrained(processor_source(model_name_or_path))
        self.gallery_cache: dict[tuple, torch.Tensor] = {}

    @torch.no_grad()
    def image_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"].to(self.device)
        return F.normalize(self.model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.processor.tokenizer(
            list(texts), padding=True, truncation=True, max_length=DEFAULT_MAX_TEXT_LENGTH, return_tensors="pt"
        ).to(self.device)
        return F.normalize(self.model.get_text_features(**tokens).pooler_output, dim=-1)

    def gallery_embeddings(self, images: list[Image.Image], keys: list[tuple | None]) -> torch.Tensor:
        """Image embeddings, each file embedded once per engine: a gallery is searched again and again."""
        missing = [i for i, key in enumerate(keys) if key is None or key not in self.gallery_cache]
        fresh = dict(zip(missing, self.image_embeddings([images[i] for i in missing]))) if missing else {}
        if len(self.gallery_cache) + len(fresh) > MAX_CACHED_EMBEDDINGS:
            self.gallery_cache.clear()
        self.gallery_cache.update({keys[i]: embedding for i, embedding in fresh.items() if keys[i] is not None})
        return torch.stack([fresh[i] if i in fresh else self.gallery_cache[key] for i, key in enumerate(keys)])

    def probabilities(self, image_embedding: torch.Tensor, text_embeddings: torch.Tensor) -> list[float]:
        scale = self.model.logit_scale.exp()
        return (scale * image_embedding @ text_embeddings.t()).softmax(dim=-1).flatten().tolist()

    def classify(self, image: Any, labels_text: str, template: str = DEFAULT_TEMPLATE) -> dict[str, float]:
        """{label: probability} over the given labels, best first."""
        labels = split_entries(labels_text, "label", MAX_LABELS)
        prompts = [fill_template(template, label) for label in labels]
        image = as_rgb_image(image)
        probabilities = self.probabilities(self.image_embeddings([image]), self.text_embeddings(prompts))
        return dict(sorted(zip(labels, probabilities), key=lambda pair: -pair[1]))

    def rank_captions(self, image: Any, captions_text: str) -> dict[str, float]:
        """{caption: probability} of the captions for the image, best first."""
        captions = split_entries(captions_text, "caption", MAX_CAPTIONS, CAPTION_SEPARATORS)
        image = as_rgb_image(image)
        probabilities = self.probabilities(self.image_embeddings([image]), self.text_embeddings(captions))
        return dict(sorted(zip(captions, probabilities), key=lambda pair: -pair[1]))

    def search(self, query: str, gallery: Sequence[Any], top_k: int = 8) -> tuple[list[tuple[Image.Image, str]], str]:
        """The gallery images most similar to `query`, with their scores, and a note on unreadable files."""
        query = (query or "").strip()
        if not query:
            raise DemoInputError("Please type what to search for.")
        if not gallery:
            raise DemoInputError("The gallery is empty: upload images or use the bundled examples.")
        if len(gallery) > MAX_GALLERY:
            raise DemoInputError(f"{len(gallery)} images is too many for the gallery: at most {MAX_GALLERY}.")
        images, keys, skipped = [], [], []
        for index, item in enumerate(gallery):
            try:
                images.append(as_rgb_image(item, f"gallery image {index + 1}"))
                keys.append(file_key(item))
            except DemoInputError as error:
                skipped.append(str(error))
        if not images:
            raise DemoInputError(f"None of the {len(gallery)} gallery files could be read: {skipped[0]}")
        similarities = (self.gallery_embeddings(images, keys) @ self.text_embeddings([query]).t()).flatten()
        order = similarities.argsort(descending=True)[:top_k].tolist()
        note = f"Left out {len(skipped)} unreadable file(s): {'; '.join(skipped[:3])}" if skipped else ""
        return [(for_display(images[i]), f"{similarities[i].item():.3f}") for i in order], note
