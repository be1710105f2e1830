"""``altclip-export-onnx``: an AltCLIP checkpoint's two towers as ONNX files, checked against PyTorch.

    altclip-export-onnx --model BAAI/AltCLIP --output_dir altclip-onnx

Writes ``image_encoder.onnx`` (pixel_values -> image_embeds) and ``text_encoder.onnx`` (input_ids, attention_mask
-> text_embeds), both L2-normalised like ``AltCLIPModel``'s outputs, with dynamic batch and sequence axes; the
config and processor files beside them (all an ONNX Runtime user needs); and ``onnx_parity.json``: the largest
difference between ONNX Runtime's and PyTorch's embeddings on batches of other sizes and lengths than the export's.
The export fails (and says by how much) when they differ by more than ``--tolerance``.
Needs ``pip install onnx onnxscript onnxruntime`` (the ``onnx`` extra of this package).
"""

import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from altclip.common.batching import length_sorted_batches
from altclip.common.cli_errors import fail, one_line_parser_errors
from altclip.common.constants import DEFAULT_MAX_TEXT_LENGTH
from altclip.common.errors import UsageError
from altclip.common.model_paths import incomplete_model_folder, unavailable_model
from altclip.common.number_checks import COUNT, POSITIVE, check_fields
from modeling_altclip import AltCLIPModel, AltCLIPProcessor

logger = logging.getLogger(__name__)

IMAGE_FILE, TEXT_FILE, PARITY_FILE = "image_encoder.onnx", "text_encoder.onnx", "onnx_parity.json"
PARITY_SENTENCES = (
    "a photo of a cat",
    "一只猫在红色沙发上睡觉的照片",
    "Ein Foto von zwei Hunden, die an einem sonnigen Nachmittag im Park mit einem blauen Ball spielen.",
    "صورة",
    "фотография горы на закате",
)


class ParityError(RuntimeError):
    """ONNX Runtime's embeddings differ from PyTorch's by more than the tolerance."""


class ImageEncoder(nn.Module):
    """pixel_values -> L2-normalised image embeddings (what ``AltCLIPModel`` returns as ``image_embeds``)."""

    def __init__(self, model: AltCLIPModel):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.get_image_features(pixel_values=pixel_values).pooler_output, dim=-1)


class TextEncoder(nn.Module):
    """input_ids, attention_mask -> L2-normalised text embeddings (``AltCLIPModel``'s ``text_embeds``)."""

    def __init__(self, model: AltCLIPModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        features = self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return F.normalize(features, dim=-1)


def _require(module: str) -> None:
    try:
        __import__(module)
    except ImportError as error:
        raise ImportError(
            f"ONNX export needs the {module!r} package: pip install onnx onnxscript onnxruntime "
            "(or pip install 'altclip[onnx]')."
        ) from error


def sample_inputs(processor: AltCLIPProcessor, image_size: int, batch: int, texts: Sequence[str], seed: int = 0):
    """Pixel values of `batch` random images and the padded tokens of `texts`."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(batch, 3, image_size, image_size, generator=generator)
    tokens = processor.tokenizer(
        list(texts), padding=True, truncation=True, max_length=DEFAULT_MAX_TEXT_LENGTH, return_tensors="pt"
    )
    return pixels, tokens["input_ids"], tokens["attention_mask"]


def _export(module: nn.Module, inputs: dict[str, torch.Tensor], dynamic: dict, output: str, path: Path, opset: int):
    program = torch.onnx.export(
        module,
        kwargs=inputs,
        dynamic_shapes=dynamic,
        input_names=list(inputs),
        output_names=[output],
        opset_version=opset,
        dynamo=True,
        optimize=True,
        external_data=True,
        verbose=False,
    )
    program.save(str(path))


class OnnxEncoders:
    """The exported towers under ONNX Runtime, with the folder's processor: images or texts in, normalised
    embeddings (numpy, float32) out."""

    def __init__(self, folder: str | Path, threads: int | None = None, batch_size: int = 32):
        _require("onnxruntime")
        import onnxruntime

        self.folder, self.batch_size = Path(folder), batch_size
        for name in (IMAGE_FILE, TEXT_FILE):
            if not (self.folder / name).is_file():
                raise FileNotFoundError(f"{self.folder} has no {name}; make it with altclip-export-onnx.")
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        self.image_session = onnxruntime.InferenceSession(str(self.folder / IMAGE_FILE), options, providers=providers)
        self.text_session = onnxruntime.InferenceSession(str(self.folder / TEXT_FILE), options, providers=providers)
        self._processor = None

    @property
    def processor(self) -> AltCLIPProcessor:
        if self._processor is None:
            self._processor = AltCLIPProcessor.from_pretrained(self.folder)
        return self._processor

    def image_embeds(self, pixel_values: np.ndarray | torch.Tensor) -> np.ndarray:
        pixels = np.asarray(pixel_values, dtype=np.float32)
        return self.image_session.run(None, {"pixel_values": pixels})[0]

    def text_embeds(
        self, input_ids: np.ndarray | torch.Tensor, attention_mask: np.ndarray | torch.Tensor
    ) -> np.ndarray:
        feeds = {"input_ids": np.asarray(input_ids, np.int64), "attention_mask": np.asarray(attention_mask, np.int64)}
        return self.text_session.run(None, feeds)[0]

    def images(self, images: Sequence) -> np.ndarray:
        """Embeddings of PIL images, in batches of `batch_size`."""
        out = []
        for start in range(0, len(images), self.batch_size):
            pixels = self.processor(images=list(images[start : start + self.batch_size]), return_tensors="np")
            out.append(self.image_embeds(pixels["pixel_values"]))
        return np.concatenate(out)

    def texts(self, texts: Sequence[str], max_length: int = DEFAULT_MAX_TEXT_LENGTH) -> np.ndarray:
        """Embeddings of `texts`, in their order; batched longest-first so that each batch pads little."""
        out = np.empty((len(texts), self.text_session.get_outputs()[0].shape[-1] or 0), np.float32)
        for batch in length_sorted_batches(texts, self.batch_size):
            tokens = self.processor.tokenizer(
                [texts[i] for i in batch], padding=True, truncation=True, max_length=max_length, return_tensors="np"
            )
            out[batch] = self.text_embeds(tokens["input_ids"], tokens["attention_mask"])
        return out


def check_parity(model: AltCLIPModel, processor: AltCLIPProcessor, folder: Path) -> dict:
    """ONNX Runtime against PyTorch on inputs of other batch sizes and lengths than the export's."""
    encoders = OnnxEncoders(folder)
    image_size = model.config.vision_config.image_size
    pixels, input_ids, attention_mask = sample_inputs(processor, image_size, 3, PARITY_SENTENCES, seed=1)
    with torch.no_grad():
        want_images = ImageEncoder(model).eval()(pixels).numpy()
        want_texts = TextEncoder(model).eval()(input_ids, attention_mask).numpy()
    got_images = encoders.image_embeds(pixels.numpy())
    got_texts = encoders.text_embeds(input_ids.numpy(), attention_mask.numpy())

    def compare(got: np.ndarray, want: np.ndarray) -> dict:
        cosine = (got * want).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(want, axis=-1)
        return {
            "batch": int(want.shape[0]),
            "max_abs_diff": float(np.abs(got - want).max()),
            "min_cosine": float(cosine.min()),
        }

    texts = compare(got_texts, want_texts)
    texts["sequence_lengths"] = attention_mask.sum(-1).tolist()
    return {"image_encoder": compare(got_images, want_images), "text_encoder": texts}


def export_onnx(
    model_name_or_path: str | Path,
    output_dir: str | Path,
    opset: int = 18,
    check: bool = True,
    tolerance: float = 1e-4,
) -> dict:
    """Exports both towers to `output_dir` (files replaced only once all are written) and returns the parity
    report (empty without `check`); raises `ParityError` when a tower differs from PyTorch by more than
    `tolerance`."""
    _require("onnx")
    _require("onnxscript")
    if check:
        _require("onnxruntime")
    model = AltCLIPModel.from_pretrained(model_name_or_path, dtype=torch.float32).eval()
    processor = AltCLIPProcessor.from_pretrained(model_name_or_path)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    image_size = model.config.vision_config.image_size
    pixels, input_ids, attention_mask = sample_inputs(processor, image_size, 2, PARITY_SENTENCES[:2])
    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence", max=model.config.text_config.max_position_embeddings - 2)
    staging = Path(tempfile.mkdtemp(prefix=".onnx-export-", dir=output_dir))
    try:
        with torch.no_grad():
            logger.info("Exporting the image tower to %s", IMAGE_FILE)
            _export(
                ImageEncoder(model).eval(),
                {"pixel_values": pixels},
                {"pixel_values": {0: batch}},
                "image_embeds",
                staging / IMAGE_FILE,
                opset,
            )
            logger.info("Exporting the text tower to %s", TEXT_FILE)
            _export(
                TextEncoder(model).eval(),
                {"input_ids": input_ids, "attention_mask": attention_mask},
                {"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}},
                "text_embeds",
                staging / TEXT_FILE,
                opset,
            )
        model.config.save_pretrained(staging)
        processor.save_pretrained(staging)
        report = check_parity(model, processor, staging) if check else {}
        report = {"model": str(model_name_or_path), "opset": opset, "tolerance": tolerance, **report}
        (staging / PARITY_FILE).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        for path in staging.iterdir():
            os.replace(path, output_dir / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    worst = {name: report[name]["max_abs_diff"] for name in ("image_encoder", "text_encoder") if name in report}
    failing = {name: diff for name, diff in worst.items() if not diff <= tolerance}
    if failing:
        raise ParityError(
            "ONNX Runtime differs from PyTorch by more than "
            + f"{tolerance:g}: "
            + ", ".join(f"{name} max |diff| {diff:.2e}" for name, diff in failing.items())
            + f" (details in {output_dir / PARITY_FILE})."
        )
    return report


@dataclass
class ExportArguments:
    model: str = field(metadata={"help": "AltCLIP checkpoint: a folder or a Hub id (BAAI/AltCLIP, BAAI/AltCLIP-m18)."})
    output_dir: str = field(metadata={"help": "Where the .onnx files, config, processor and parity report go."})
    opset: int = field(default=18, metadata={"help": "ONNX opset version."})
    check: bool = field(default=True, metadata={"help": "Compare ONNX Runtime with PyTorch after the export."})
    tolerance: float = field(default=1e-4, metadata={"help": "Largest allowed |difference| of normalised embeddings."})


def main(argv: Sequence[str] | None = None) -> None:
    from transformers import HfArgumentParser

    parser = HfArgumentParser(ExportArguments)
    parser.prog = "altclip-export-onnx"
    one_line_parser_errors(parser, parser.prog)
    (args,) = parser.parse_args_into_dataclasses(args=list(sys.argv[1:] if argv is None else argv))
    try:
        check_fields([args], {"opset": COUNT, "tolerance": POSITIVE})
    except UsageError as error:
        raise fail(f"altclip-export-onnx: {error}") from None
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    problem = unavailable_model(args.model) or incomplete_model_folder(args.model)
    if problem:
        raise fail(f"altclip-export-onnx: --model {problem}")
    try:
        report = export_onnx(args.model, args.output_dir, args.opset, args.check, args.tolerance)
    except (ImportError, OSError, ParityError, ValueError) as error:
        raise fail(f"altclip-export-onnx: {str(error).splitlines()[0]}") from None
    for name in ("image_encoder", "text_encoder"):
        if name in report:
            print(f"{name}: max |diff| {report[name]['max_abs_diff']:.2e}, min cosine {report[name]['min_cosine']:.6f}")
    print(f"Wrote {args.output_dir}/{IMAGE_FILE}, {TEXT_FILE}, config, processor and {PARITY_FILE}")


if __name__ == "__main__":
    main()
