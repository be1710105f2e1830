"""oneDNN Linear for fp32 CPU inference: same parameters and outputs as nn.Linear, the oneDNN op really runs, and
training (gradients on) falls back to nn.Linear."""

import platform

import torch
from tiny_models import random_images

from modeling_altclip.cpu_kernels import OneDNNLinear, onednn_linear_available, use_onednn_linear


def test_onednn_is_available_on_x86_builds():
    if platform.machine() in ("x86_64", "AMD64"):
        assert onednn_linear_available()


def test_swapped_model_shares_parameters_and_gives_the_same_embeddings(tiny_model, processor):
    fast = use_onednn_linear(tiny_model)
    linears = sum(type(module) is torch.nn.Linear for module in tiny_model.modules())
    assert linears > 0 and sum(isinstance(module, OneDNNLinear) for module in fast.modules()) == linears
    assert not any(isinstance(module, OneDNNLinear) for module in tiny_model.modules())  # the caller's model is kept
    assert all(a is b for a, b in zip(tiny_model.parameters(), fast.parameters()))  # shared, not copied
    assert list(fast.state_dict()) == list(tiny_model.state_dict())
    inputs = processor(
        text=["a cat", "ein Hund auf einer Wiese"], images=random_images(2), return_tensors="pt", padding=True
    )
    with torch.no_grad():
        want, got = tiny_model(**inputs), fast(**inputs)
        with torch.profiler.profile() as profile:
            fast.get_image_features(pixel_values=inputs["pixel_values"])
    torch.testing.assert_close(got.image_embeds, want.image_embeds, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.text_embeds, want.text_embeds, atol=1e-5, rtol=1e-4)
    assert any("_linear_pointwise" in event.key for event in profile.key_averages())


def test_gradients_fall_back_to_nn_linear():
    torch.manual_seed(0)
    linear = torch.nn.Linear(8, 4)
    fast = use_onednn_linear(torch.nn.Sequential(linear))
    x = torch.randn(3, 8, requires_grad=True)
    fast(x).square().sum().backward()
    expected = torch.autograd.grad(linear(x).square().sum(), linear.weight)[0]
    torch.testing.assert_close(linear.weight.grad, expected)
    assert x.grad is not None


def test_inplace_swap_and_other_dtypes():
    model = torch.nn.Sequential(torch.nn.Linear(8, 4))
    assert use_onednn_linear(model, inplace=True) is model and isinstance(model[0], OneDNNLinear)
    with torch.no_grad():  # bf16 goes through nn.Linear's own path
        out = model.to(torch.bfloat16)(torch.randn(2, 8, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16
