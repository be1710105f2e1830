"""SigLIP's sigmoid loss and Matryoshka prefixes: the formulas, and exactness across real processes."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from ports import free_port
from stage_runs import stage_refusal, torchrun_env

from altclip.common.errors import UsageError
from altclip.training.loop.contrastive_objective import (
    add_logit_bias,
    contrastive_objective,
    matryoshka_weights,
    matryoshka_widths,
    parse_dims,
)
from altclip.training.loop.losses import ClipLoss
from altclip.training.loop.sigmoid_loss import SigLipLoss


def paper_sigmoid_loss(images, texts, t_prime: float, b: float) -> float:
    """SigLIP (arXiv 2303.15343, Algorithm 1 / eq. 1): -1/|B| sum_i sum_j log 1 / (1 + exp(z_ij (-t x_i.y_j - b))),
    t = exp(t'), z_ij = 1 for i == j else -1; written pair by pair in plain Python."""
    t, total = math.exp(t_prime), 0.0
    for i, x in enumerate(images.tolist()):
        for j, y in enumerate(texts.tolist()):
            z = 1.0 if i == j else -1.0
            dot = sum(a * c for a, c in zip(x, y))
            total += math.log(1.0 / (1.0 + math.exp(z * (-t * dot - b))))
    return -total / len(images)


def unit_rows(rows: int, width: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(rows, width, generator=generator, dtype=torch.float64), dim=-1)


@pytest.mark.parametrize(("t_prime", "b"), [(math.log(10.0), -10.0), (1.3, 0.7)])
def test_sigmoid_loss_is_the_papers_formula(t_prime, b):
    images, texts = unit_rows(5, 6, 0), unit_rows(5, 6, 1)
    scale, bias = torch.tensor([t_prime], dtype=torch.float64).exp(), torch.tensor([b], dtype=torch.float64)
    loss = SigLipLoss()(images, texts, scale, bias)
    assert loss.item() == pytest.approx(paper_sigmoid_loss(images, texts, t_prime, b), rel=1e-12)


def test_matryoshka_sums_the_weighted_losses_of_renormalised_prefixes():
    """Written out: the loss of each prefix, re-normalised, times its weight; the full width is the plain loss."""
    images, texts = unit_rows(6, 8, 2), unit_rows(6, 8, 3)
    scale = torch.tensor([10.0], dtype=torch.float64)
    clip = ClipLoss()
    expected = sum(
        weight * clip(F.normalize(images[:, :width], dim=-1), F.normalize(texts[:, :width], dim=-1), scale)
        for width, weight in ((2, 0.5), (4, 2.0), (8, 1.0))
    )
    objective = contrastive_objective("infonce", widths=[2, 4, 8], weights=[0.5, 2.0, 1.0])
    assert objective(images, texts, scale, None).item() == pytest.approx(expected.item(), rel=1e-12)
    assert contrastive_objective("infonce", widths=[8])(images, texts, scale, None).item() == pytest.approx(
        clip(images, texts, scale).item(), rel=1e-12
    )


def test_matryoshka_flags_are_checked():
    assert parse_dims("64, 128,256") == [64, 128, 256]
    assert matryoshka_widths([256, 64, 64], 768) == [64, 256, 768]
    assert matryoshka_widths([64, 768], 768) == [64, 768]
    assert matryoshka_weights(None, [64, 768]) == [1.0, 1.0]
    for bad in ("64,abc", "0,64", "-8"):
        with pytest.raises(UsageError, match="--matryoshka_dims"):
            parse_dims(bad)
    with pytest.raises(UsageError, match="wider than the model's embeddings"):
        matryoshka_widths([1024], 768)
    with pytest.raises(UsageError, match="give 2 non-negative weights"):
        matryoshka_weights("1,1,1", [64, 768])


@pytest.mark.parametrize("processes", [2, 3])
def test_sigmoid_loss_several_processes_equal_one_process(tmp_path, processes):
    """2 gloo processes holding 3 and 4 rows (3: 3, 2 and 2, so the ring has a middle rank): after DDP's
    averaging, the loss and every gradient (towers, temperature, bias) equal one process holding all 7 rows, for
    SigLIP alone and on Matryoshka prefixes (InfoNCE too, with and without the gradient through its gather), in
    float64. Scoring each rank's own pairs only (no
    exchange) does not: the comparison can fail. Every exchange is one batched send-and-receive (a lone blocking
    receive deadlocks a ring of 3 or more NCCL ranks)."""
    output = tmp_path / "sigmoid.json"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(processes)]
    launcher += ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    worker = Path(__file__).with_name("sigmoid_loss_worker.py")
    result = subprocess.run(
        [*launcher, str(worker), str(output)], env=torchrun_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    for name in ("siglip", "siglip_matryoshka", "infonce_matryoshka", "infonce_matryoshka_no_gather_grad"):
        two, one = report[name]["loss"]
        assert two == pytest.approx(one, rel=1e-12), report[name]
        assert report[name]["gradient_scale"] > 1e-3, report[name]
        assert report[name]["max_abs_difference"] < 1e-12, report[name]
    assert report["local_only"]["max_abs_difference"] > 1e-3, report["local_only"]
    # rank 0's exchanges, forward and backward: (processes - 1) per loss call and as many back, all batched
    assert report["p2p_calls"]["recv"] == 0, report["p2p_calls"]
    assert report["p2p_calls"]["batch_isend_irecv"] >= 2 * (processes - 1), report["p2p_calls"]
    # InfoNCE on three Matryoshka widths exchanges what the full width alone does: one gather per tower
    gathers = report["gathers"]
    assert gathers["infonce_matryoshka"] == gathers["infonce"], gathers
    assert gathers["infonce"]["all_gather_with_grad"] == 2, gathers


def test_logit_bias_is_added_once_recorded_and_saved(tmp_path, tiny_model):
    """`add_logit_bias`: -10 and log 10 (the paper's init), the bias in the config; a second call keeps the
    trained values; the saved model loads it back, and a model without one has none."""
    import copy

    from modeling_altclip import AltCLIPModel

    model = copy.deepcopy(tiny_model)
    assert model.logit_bias is None
    assert add_logit_bias(model)
    assert model.logit_bias.item() == -10.0 and model.logit_scale.item() == pytest.approx(math.log(10.0))
    assert model.config.logit_bias_init_value == -10.0
    with torch.no_grad():
        model.logit_bias.fill_(-3.0)
    assert not add_logit_bias(model) and model.logit_bias.item() == -3.0
    model.save_pretrained(tmp_path / "siglip")
    assert AltCLIPModel.from_pretrained(tmp_path / "siglip").logit_bias.item() == -3.0
    tiny_model.save_pretrained(tmp_path / "plain")
    assert AltCLIPModel.from_pretrained(tmp_path / "plain").logit_bias is None


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--loss", "softmax"), "invalid choice: 'softmax'"),
        (("--loss", "siglip", "--gather_with_grad", "false"), "--gather_with_grad false applies to --loss infonce"),
        (("--matryoshka_dims", "64,x"), "--matryoshka_dims '64,x': give comma-separated whole numbers"),
        (("--matryoshka_weights", "1,1"), "--matryoshka_weights needs --matryoshka_dims"),
        (("--language_sampling_alpha", "2"), "--language_sampling_alpha 2.0 is too large; give a number in [0, 1]"),
    ],
)
def test_objective_and_balancing_flags_are_one_line_before_loading(cli, tmp_path, toy, monkeypatch, flags, message):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the flags were checked")

    monkeypatch.setattr("altclip.training.stages.load_or_build_model", no_model)
    models = ("--clip_model_name_or_path", str(toy["clip"]), "--text_encoder_name_or_path", str(toy["xlmr"]))
    flags = (*models, "--train_files", str(toy["captions"]), *flags)
    assert message in stage_refusal(cli, "contrastive", tmp_path / "out", *flags)
