"""Normalised image and text embeddings of a model, batched, with progress bars and skipped-image counting.

Images are decoded and preprocessed in DataLoader workers; texts are embedded longest-first so that each batch
pads to similar lengths. On a GPU the model runs in half precision unless told otherwise.
"""

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from altclip.common.adapters import load_altclip, processor_source
from altclip.common.constants import DEFAULT_MAX_TEXT_LENGTH
from altclip.common.devices import default_device, default_half_dtype
from altclip.common.images import open_rgb_image
from altclip.common.records import Skipped
from modeling_altclip import AltCLIPModel, AltCLIPProcessor, check_finite_input, check_finite_weights

from .batching import length_sorted_batches
from .fast_paths import (
    KernelChoice,
    apply_linear_kernel,
    choose_linear_kernel,
    projected_image_features,
    supports_cls_only,
)

logger = logging.getLogger(__name__)


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device_and_dtype(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """``auto``: the accelerator if there is one, in bf16 where supported (else fp16); the CPU in fp32."""
    chosen = default_device() if device == "auto" else torch.device(device)
    if dtype == "auto":
        return chosen, default_half_dtype(chosen)
    if dtype not in DTYPES:
        raise ValueError(f"Unknown --dtype {dtype!r}; choose auto, {', '.join(DTYPES)}.")
    return chosen, DTYPES[dtype]


def model_input_side(image_processor) -> int | None:
    """The shortest side the image processor resizes to (224 for CLIP), for reduced-size JPEG decoding."""
    size = getattr(image_processor, "size", None) or {}
    return size.get("shortest_edge") or size.get("height")


class _PreprocessedImages(Dataset):
    def __init__(self, sources: Sequence[Any], image_processor, reduced_decoding: bool = False):
        self.sources, self.image_processor = sources, image_processor
        self.min_side = model_input_side(image_processor) if reduced_decoding else None

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | Skipped]:
        """(index, pixel_values), or (index, `Skipped`) for an image that cannot be read."""
        source = self.sources[index]
        try:
            image = open_rgb_image(source.read() if hasattr(source, "read") else source, self.min_side)
        except Exception as error:  # any decoding failure: the image is left out and counted
            return index, Skipped(str(source), f"{type(error).__name__}: {error}")
        return index, self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]


def _collate(rows) -> tuple[list[int], torch.Tensor | None, list[Skipped]]:
    kept = [row for row in rows if not isinstance(row[1], Skipped)]
    pixels = torch.stack([row[1] for row in kept]) if kept else None
    return [row[0] for row in kept], pixels, [row[1] for row in rows if isinstance(row[1], Skipped)]


def require_finite(embeddings: torch.Tensor, description: str) -> torch.Tensor:
    """Embeddings to score, or ValueError: NaN or Inf rows would still be ranked and give a made-up score."""
    bad = (~torch.isfinite(embeddings)).any(dim=-1)
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} of {len(embeddings)} {description} have NaN or infinite embeddings (first at row "
            f"{int(bad.nonzero()[0])}); refusing to score them."
        )
    return embeddings


def quantize_int8(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Dynamic int8 quantisation of every Linear layer (weights int8, activations quantised on the fly): a CPU
    inference speed-up whose accuracy change `benchmarks/embedding_throughput.py` measures."""
    if device.type != "cpu":
        raise ValueError("int8 dynamic quantisation runs on the CPU only; on a GPU use --dtype bfloat16.")
    return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def check_dims(dims: int | None, projection_dim: int) -> int | None:
    """`dims` as the prefix width to embed with (None or the full width: all), or a ValueError naming the range."""
    if dims is None or dims == projection_dim:
        return None
    if not 1 <= dims <= projection_dim:
        raise ValueError(f"--dims {dims} is outside 1..{projection_dim}, the model's embedding width (projection_dim).")
    return int(dims)


class Embedder:
    """Embeds images and texts with one AltCLIP model; ``fingerprint`` identifies its text side for caching.

    On the CPU in fp32 the Linear layers run the kernel `linear_kernel` names: "auto" (default) measures once per
    machine whether oneDNN's kernel beats PyTorch's default and keeps the faster (the default on a tie: it is what a
    plain transformers model runs), "onednn" or "default" force one (`common.fast_paths.choose_linear_kernel`;
    oneDNN runs on a module copy that shares the model's parameters, fp32 results within ~1e-6). The older
    `onednn_linear=True/False` still forces "onednn"/"default"."""

    def __init__(
        self,
        model: AltCLIPModel,
        processor: AltCLIPProcessor,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 64,
        num_workers: int = 0,
        max_text_length: int = DEFAULT_MAX_TEXT_LENGTH,
        quantization: str | None = None,
        reduced_decoding: bool = False,
        onednn_linear: bool | None = None,
        linear_kernel: str = "auto",
        dims: int | None = None,
    ):
        """`dims`: embed with the first `dims` dimensions of the projections only, re-normalised (any model; one
        trained with ``--matryoshka_dims`` keeps most of its quality there); None: all of them."""
        self.dims = check_dims(dims, model.config.projection_dim)
        self.device, self.dtype = resolve_device_and_dtype(device, dtype)
        self.model = model.to(self.device, self.dtype).eval()
        self.processor = processor
        limit = getattr(processor.tokenizer, "model_max_length", 512)
        if not 1 <= max_text_length <= limit:
            raise ValueError(f"--max_text_length {max_text_length} is outside 1..{limit}, the text tower's positions.")
        self.batch_size, self.num_workers, self.max_text_length = batch_size, num_workers, max_text_length
        self.quantization, self.reduced_decoding = quantization, reduced_decoding
        # computed when first asked for (it reads every text weight), except before quantisation packs them away
        self._fingerprint = self._text_side_checksum() if quantization else None
        if quantization == "int8":
            self.model = quantize_int8(self.model, self.device)
        elif quantization is not None:
            raise ValueError(f"Unknown quantization {quantization!r}; the CPU offers 'int8'.")
        self.linear_kernel: KernelChoice | None = None  # set where it applies: the CPU in fp32, not quantised
        if quantization is None and self.device.type == "cpu" and self.dtype == torch.float32:
            if onednn_linear is not None:
                linear_kernel = "onednn" if onednn_linear else "default"
            self.linear_kernel = choose_linear_kernel(self.model, linear_kernel)
            self.model = apply_linear_kernel(self.model, self.linear_kernel.kernel)
        self.cls_only = supports_cls_only(self.model)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, **kwargs) -> "Embedder":
        """A checkpoint, or a LoRA adapter folder applied to (merged into) its base model."""
        model = load_altclip(name_or_path)
        check_finite_weights(model, name_or_path)  # a NaN model would still rank classes, meaninglessly
        return cls(model, AltCLIPProcessor.from_pretrained(processor_source(name_or_path)), **kwargs)

    @torch.no_grad()
    def images(
        self, sources: Sequence[Any], description: str = "images", allow_none: bool = False
    ) -> tuple[torch.Tensor, list[int], list[Skipped]]:
        """(embeddings of the readable images, their indices in `sources`, the unreadable ones as `Skipped`).

        No readable image is a ValueError, unless `allow_none` (one process's share of a set may hold none)."""
        loader = DataLoader(
            _PreprocessedImages(sources, self.processor.image_processor, self.reduced_decoding),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=_collate,
        )
        embeddings, kept, failures = [], [], []
        for indices, pixels, problems in tqdm(loader, desc=f"Embedding {description}", unit="batch"):
            failures += problems
            if pixels is None:
                continue
            features = self.image_features(pixels.to(self.device, self.dtype))
            embeddings.append(F.normalize(features[:, : self.embedding_dim].float(), dim=-1).cpu())
            kept += indices
        for skipped in failures[:5]:
            logger.warning("Leaving out unreadable image %s (%s)", skipped.where, skipped.reason)
        if not embeddings and allow_none:
            return torch.empty(0, self.embedding_dim), [], failures
        if not embeddings:
            example = f"{failures[0].where}: {failures[0].reason}" if failures else "none"
            raise ValueError(f"None of the {len(sources)} {description} could be read, e.g. {example}.")
        return require_finite(torch.cat(embeddings), description), kept, failures

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected image features; the last layer runs for [CLS] only where the tower has CLIP's layout. NaN or
        infinite `pixel_values` are a `NonFiniteInputError` (the fast path skips the model's own check)."""
        check_finite_input("pixel_values", pixel_values)
        if self.cls_only:
            return projected_image_features(self.model, pixel_values)
        return self.model.get_image_features(pixel_values=pixel_values).pooler_output

    @torch.no_grad()
    def texts(self, texts: Sequence[str], description: str = "texts") -> torch.Tensor:
        """Normalised embeddings of `texts`, in their order."""
        embeddings = torch.empty(len(texts), self.embedding_dim)
        tokenizer = self.processor.tokenizer
        for batch in tqdm(length_sorted_batches(texts, self.batch_size), desc=f"Embedding {description}", unit="batch"):
            tokens = tokenizer(
                [texts[i] for i in batch],
                padding=True,
                truncation=True,
                max_length=self.max_text_length,
                return_tensors="pt",
            ).to(self.device)
            features = self.model.get_text_features(**tokens).pooler_output
            embeddings[batch] = F.normalize(features[:, : self.embedding_dim].float(), dim=-1).cpu()
        return require_finite(embeddings, description)

    @property
    def embedding_dim(self) -> int:
        """Width of the embeddings this Embedder returns (``dims``, else the model's ``projection_dim``)."""
        return self.dims or self.model.config.projection_dim

    def fingerprint(self) -> str:
        """A checksum of the text side's weights, tokenizer, precision and quantisation: equal fingerprints, equal
        text embeddings."""
        if self._fingerprint is None:
            self._fingerprint = self._text_side_checksum()
        return self._fingerprint

    def _text_side_checksum(self) -> str:
        digest = hashlib.sha256()
        text_side = [*self.model.text_model.named_parameters(), ("text_projection", self.model.text_projection.weight)]
        for name, parameter in text_side:
            flat = parameter.detach().flatten()  # a view: no copy of a 250k-row embedding matrix
            total = sum(chunk.sum(dtype=torch.float64).item() for chunk in flat.split(1 << 20))  # no float64 copy
            digest.update(f"{name}{tuple(parameter.shape)}{total:.10e}".encode())
            digest.update(flat[:: max(1, flat.numel() // 64)].float().cpu().numpy().tobytes())
        digest.update(f"{len(self.processor.tokenizer)}{self.max_text_length}{self.dtype}{self.quantization}".encode())
        if self.dims:  # a prefix is another embedding: cached class embeddings must not be shared with the full one
            digest.update(f"dims{self.dims}".encode())
        return digest.hexdigest()[:20]
