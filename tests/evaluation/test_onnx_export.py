"""altclip-export-onnx: both towers exported with dynamic batch and sequence axes, checked against PyTorch under
ONNX Runtime; the folder alone embeds images and texts like the Embedder; failures name their cause."""

import json
import sys

import numpy as np
import pytest
import torch
from huggingface_hub import constants
from tiny_models import random_images

from altclip.common.embedding import Embedder
from altclip.evaluation.onnx_export import (
    IMAGE_FILE,
    PARITY_FILE,
    TEXT_FILE,
    OnnxEncoders,
    ParityError,
    export_onnx,
    main,
)


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("onnx")
    main(["--model", str(tiny_model_dir), "--output_dir", str(folder)])
    return folder


def test_export_writes_a_self_contained_folder_and_a_passing_parity_report(onnx_dir):
    names = {path.name for path in onnx_dir.iterdir()}
    assert {IMAGE_FILE, TEXT_FILE, PARITY_FILE, "config.json", "processor_config.json", "tokenizer.json"} <= names
    assert not [name for name in names if name.startswith(".onnx-export-")]  # the staging folder is gone
    report = json.loads((onnx_dir / PARITY_FILE).read_text())
    for tower in ("image_encoder", "text_encoder"):
        assert report[tower]["max_abs_diff"] <= report["tolerance"] == 1e-4
        assert report[tower]["min_cosine"] > 0.9999
    assert report["image_encoder"]["batch"] != 2 and len(set(report["text_encoder"]["sequence_lengths"])) > 1


def test_onnx_runtime_embeds_like_the_embedder(onnx_dir, tiny_model, processor):
    encoders = OnnxEncoders(onnx_dir, batch_size=3)
    embedder = Embedder(tiny_model, processor, device="cpu", batch_size=3)
    texts = ["a cat", "ein Hund, der an einem sonnigen Tag über eine Wiese rennt", "猫", "un chien", "a b c d e f g"]
    got, want = encoders.texts(texts), embedder.texts(texts).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    images = random_images(4)
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        want_images = torch.nn.functional.normalize(embedder.image_features(pixels), dim=-1).numpy()
    np.testing.assert_allclose(encoders.images(images), want_images, atol=1e-5)
    assert encoders.image_embeds(pixels[:1]).shape == (1, tiny_model.config.projection_dim)


def test_parity_failure_names_the_tower_and_keeps_the_report(tmp_path, tiny_model_dir):
    with pytest.raises(ParityError, match=r"by more than 1e-12: image_encoder max \|diff\| .*onnx_parity.json"):
        export_onnx(tiny_model_dir, tmp_path / "out", tolerance=1e-12)
    assert json.loads((tmp_path / "out" / PARITY_FILE).read_text())["tolerance"] == 1e-12


# altclip-export-onnx's one-line refusals: each case prepares and returns the --model and what the line holds.
def a_missing_model_folder(tmp_path, monkeypatch, tiny_model_dir):
    return tmp_path / "no-model-here", dict(match="altclip-export-onnx: .*no-model-here")


def a_mistyped_hub_name(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    line = (
        "altclip-export-onnx: --model altclipp: no such local folder, and not in the Hub cache (HF_HUB_OFFLINE is "
        "set). Check the name."
    )
    return "altclipp", dict(line=line)


def no_onnxruntime(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    return tiny_model_dir, dict(match="needs the 'onnxruntime' package: pip install")


REFUSED_EXPORTS = [a_missing_model_folder, a_mistyped_hub_name, no_onnxruntime]


@pytest.mark.parametrize("case", REFUSED_EXPORTS, ids=[case.__name__ for case in REFUSED_EXPORTS])
def test_clear_errors(case, tmp_path, monkeypatch, tiny_model_dir, cli):
    model, expected = case(tmp_path, monkeypatch, tiny_model_dir)
    cli.refusal(main, "--model", model, "--output_dir", tmp_path / "out", **expected)


def test_a_folder_without_the_exported_files_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no image_encoder.onnx; make it with altclip-export-onnx"):
        OnnxEncoders(tmp_path)
