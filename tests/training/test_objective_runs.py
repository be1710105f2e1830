"""``--loss siglip`` and ``--matryoshka_dims`` through ``altclip-train`` in real processes, and the saved model's
prefixes through ``altclip-eval --dims`` and the Python `Embedder`."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from dataset_layouts import write_caption_table
from stage_runs import torchrun

from altclip.common.embedding import Embedder
from altclip.common.images import open_rgb_image
from altclip.evaluation.cli import main as eval_main
from altclip.evaluation.loaders import load_caption_table
from modeling_altclip import AltCLIPModel, AltCLIPProcessor

# as tests/training/test_distributed.py: plain SGD, sequential order, so that two process counts compare exactly
COMMON = [
    "--dataloader_num_workers", "0", "--max_steps", "2", "--logging_steps", "1", "--save_steps", "2",
    "--train_sampling_strategy", "sequential", "--optim", "sgd", "--learning_rate", "0.1",
]  # fmt: skip


def train(output_dir: Path, processes: int, batch_per_process: int, *flags: str) -> list[dict]:
    torchrun(
        "contrastive", output_dir, processes, *COMMON, "--per_device_train_batch_size", str(batch_per_process), *flags
    )
    state = json.loads((output_dir / "checkpoint-2" / "trainer_state.json").read_text())
    return [entry for entry in state["log_history"] if "loss" in entry]


def assert_same_steps(many: list[dict], one: list[dict]) -> None:
    """Step 1's loss and gradient norm, and step 2's after an SGD step (rel 1e-5: float32 summation order)."""
    assert [entry["step"] for entry in many] == [entry["step"] for entry in one] == [1, 2]
    for a, b in zip(many, one):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), (a, b)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5), (a, b)


@pytest.mark.slow
def test_sigmoid_matryoshka_run_two_processes_equal_one_and_accumulation(tmp_path, toy, start_without_dropout):
    """``--loss siglip --matryoshka_dims 4,8``: 2 processes x 8 rows, and 1 process x 8 rows x 2 accumulated
    micro-batches (GradCache), train like 1 process x 16 rows; the bias was added (-10 in the saved config), trained
    and saved; the widths are recorded in the saved config and the summary."""
    flags = ["--model_name_or_path", str(start_without_dropout), "--train_files", str(toy["captions"])]
    flags += ["--loss", "siglip", "--matryoshka_dims", "4,8"]
    one = train(tmp_path / "one", 1, 16, *flags)
    assert_same_steps(train(tmp_path / "two", 2, 8, *flags), one)
    assert_same_steps(train(tmp_path / "acc", 1, 8, *flags, "--gradient_accumulation_steps", "2"), one)

    saved = json.loads((tmp_path / "one" / "config.json").read_text())
    assert saved["matryoshka_dims"] == [4, 8, 16] and saved["logit_bias_init_value"] == -10.0
    summary = json.loads((tmp_path / "one" / "training_summary.json").read_text())
    assert summary["loss"] == "siglip" and summary["matryoshka_dims"] == [4, 8, 16]
    model = AltCLIPModel.from_pretrained(tmp_path / "one")
    # the bias has a gradient only through the sigmoid loss: moved from -10, it shows that loss was in effect
    assert model.logit_bias is not None and model.logit_bias.item() != -10.0
    assert model.logit_scale.item() == pytest.approx(2.3026, abs=0.05)  # from log 10, not CLIP's log 100


def prefix_recalls(model_dir: Path, dataset, dims: int) -> dict[str, float]:
    """Recall@1/5/10 both ways from the raw projections' first `dims` coordinates, re-normalised, by hand."""
    model, processor = AltCLIPModel.from_pretrained(model_dir).eval(), AltCLIPProcessor.from_pretrained(model_dir)
    with torch.no_grad():
        pixels = processor(images=[open_rgb_image(image) for image in dataset.images], return_tensors="pt")
        images = model.get_image_features(**pixels).pooler_output[:, :dims]
        tokens = processor(text=dataset.captions, padding=True, return_tensors="pt")
        texts = model.get_text_features(**tokens).pooler_output[:, :dims]
    scores = F.normalize(texts, dim=-1) @ F.normalize(images, dim=-1).t()
    owner = torch.tensor(dataset.caption_image)
    texts_ranked = scores.argsort(dim=1, descending=True)  # images per caption
    images_ranked = owner[scores.t().argsort(dim=1, descending=True)]  # the image of each ranked caption
    recalls = {}
    for k in (1, 5, 10):
        hits = (texts_ranked[:, :k] == owner[:, None]).any(dim=1)
        recalls[f"text_to_image_recall@{k}"] = 100 * hits.float().mean().item()
        hits = (images_ranked[:, :k] == torch.arange(len(dataset.images))[:, None]).any(dim=1)
        recalls[f"image_to_text_recall@{k}"] = 100 * hits.float().mean().item()
    return recalls


def test_eval_dims_and_embedder_use_the_first_n_dimensions(tmp_path, tiny_model_dir):
    """``altclip-eval --dims 4`` scores with the first 4 dimensions re-normalised (recall equal to the hand-computed
    one, and the width in results.json); `Embedder(dims=4)` returns those embeddings; out of range is refused."""
    data = write_caption_table(tmp_path / "table", count=24)  # random images and captions: recalls differ by width
    dataset = load_caption_table(data, "de")
    flags = ["--model", str(tiny_model_dir), "--dataset", "captions", "--data_dir", str(data)]
    flags += ["--languages", "de", "--num_workers", "0", "--device", "cpu", "--dtype", "float32", "--cache_dir", ""]
    eval_main(["retrieval", *flags, "--output_dir", str(tmp_path / "four"), "--dims", "4"])
    (result,) = json.loads((tmp_path / "four" / "results.json").read_text())["results"]
    assert result["dims"] == 4
    expected = prefix_recalls(tiny_model_dir, dataset, 4)
    assert {name: result["metrics"][name] for name in expected} == pytest.approx(expected, abs=0.01)
    assert expected != pytest.approx(prefix_recalls(tiny_model_dir, dataset, 16), abs=0.01)  # can fail

    embedder = Embedder.from_pretrained(tiny_model_dir, device="cpu", dtype="float32", dims=4)
    full = Embedder.from_pretrained(tiny_model_dir, device="cpu", dtype="float32")
    texts = ["ein roter Kreis", "a blue square"]
    assert embedder.texts(texts).shape == (2, 4) and embedder.embedding_dim == 4
    torch.testing.assert_close(embedder.texts(texts), F.normalize(full.texts(texts)[:, :4], dim=-1))
    assert embedder.fingerprint() != full.fingerprint()  # cached class embeddings are not shared across widths
    with pytest.raises(ValueError, match="--dims 17 is outside 1..16"):
        Embedder.from_pretrained(tiny_model_dir, device="cpu", dims=17)
