"""The fp32 CPU Linear kernel: forced by the caller or $ALTCLIP_CPU_LINEAR_KERNEL, else measured once per CPU model,
thread count, torch version and layer shape, kept in the cache folder, and oneDNN only where it is clearly faster."""

import json

import pytest
import torch

import altclip.common.fast_paths as fast_paths
from altclip.common.embedding import Embedder
from altclip.common.errors import UsageError
from altclip.common.fast_paths import (
    LINEAR_KERNEL_CACHE_FILE,
    LINEAR_KERNEL_ENVIRONMENT,
    choose_linear_kernel,
    cpu_model_name,
    linear_kernel_key,
    measure_linear_kernels,
)
from modeling_altclip.cpu_kernels import OneDNNLinear, onednn_linear_available

pytestmark = pytest.mark.skipif(not onednn_linear_available(), reason="needs oneDNN's Linear kernel (x86 builds)")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALTCLIP_CACHE", str(tmp_path))
    monkeypatch.delenv(LINEAR_KERNEL_ENVIRONMENT, raising=False)
    return tmp_path / LINEAR_KERNEL_CACHE_FILE


@pytest.fixture
def measured(monkeypatch):
    """Replaces the timing with given seconds, counting the measurements made."""
    calls = []

    def install(default: float, onednn: float):
        def measure(model, repeats=5):
            calls.append(model)
            return {"default": default, "onednn": onednn}

        monkeypatch.setattr(fast_paths, "measure_linear_kernels", measure)
        return calls

    return install


def uses_onednn(embedder: Embedder) -> bool:
    return any(isinstance(module, OneDNNLinear) for module in embedder.model.modules())


def test_a_measured_choice_is_kept_per_cpu_and_thread_count_and_reused(cache, measured, tiny_model, processor):
    calls = measured(default=1.0, onednn=0.5)
    first = Embedder(tiny_model, processor, device="cpu", batch_size=4)
    assert (
        first.linear_kernel.kernel == "onednn" and first.linear_kernel.reason == "measured now" and uses_onednn(first)
    )
    stored = json.loads(cache.read_text())
    (key,) = stored
    assert key == linear_kernel_key(tiny_model) and cpu_model_name() in key
    assert f"{torch.get_num_threads()} threads" in key and stored[key]["kernel"] == "onednn"
    again = Embedder(tiny_model, processor, device="cpu", batch_size=4)
    assert len(calls) == 1 and again.linear_kernel.reason.startswith("measured before") and uses_onednn(again)
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if threads != 1 else 2)
    try:  # another thread count is another measurement
        choose_linear_kernel(tiny_model)
    finally:
        torch.set_num_threads(threads)
    assert len(calls) == 2 and len(json.loads(cache.read_text())) == 2


def test_on_a_tie_the_reference_kernel_stays(cache, measured, tiny_model, processor):
    measured(default=1.0, onednn=0.97)  # 3% faster: within the margin, so not worth leaving the reference's kernel
    embedder = Embedder(tiny_model, processor, device="cpu", batch_size=4)
    assert embedder.linear_kernel.kernel == "default" and not uses_onednn(embedder)
    measured(default=1.0, onednn=1.4)
    assert choose_linear_kernel(tiny_model, cache_file=cache.with_name("other.json")).kernel == "default"


@pytest.mark.parametrize("forced", ["onednn", "default"])
def test_the_caller_or_the_environment_forces_any_choice_without_measuring(
    cache, measured, monkeypatch, tiny_model, processor, forced
):
    calls = measured(default=1.0, onednn=0.5 if forced == "default" else 2.0)  # the opposite of what is forced
    by_flag = Embedder(tiny_model, processor, device="cpu", batch_size=4, linear_kernel=forced)
    monkeypatch.setenv(LINEAR_KERNEL_ENVIRONMENT, forced)
    by_environment = Embedder(tiny_model, processor, device="cpu", batch_size=4)
    assert uses_onednn(by_flag) == uses_onednn(by_environment) == (forced == "onednn")
    assert by_environment.linear_kernel.reason == f"forced by ${LINEAR_KERNEL_ENVIRONMENT}"
    assert not calls and not cache.exists()


def test_an_unknown_kernel_is_a_one_line_usage_error(cache, monkeypatch, tiny_model):
    monkeypatch.setenv(LINEAR_KERNEL_ENVIRONMENT, "mkl")
    with pytest.raises(UsageError, match=r"'mkl' \(from \$ALTCLIP_CPU_LINEAR_KERNEL\) is not one of auto, onednn"):
        choose_linear_kernel(tiny_model)


def test_a_damaged_choice_file_is_measured_again_and_rewritten(cache, measured, tiny_model):
    cache.write_text("{not json")
    calls = measured(default=1.0, onednn=0.5)
    assert choose_linear_kernel(tiny_model).reason == "measured now" and len(calls) == 1
    assert json.loads(cache.read_text())[linear_kernel_key(tiny_model)]["kernel"] == "onednn"


def test_the_measurement_times_the_models_own_layer_with_both_kernels(tiny_model):
    seconds = measure_linear_kernels(tiny_model, repeats=2)
    assert set(seconds) == {"default", "onednn"} and all(value > 0 for value in seconds.values())
    assert "vision layer" in linear_kernel_key(tiny_model)
    assert "linear 8x4" in linear_kernel_key(torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Linear(2, 3)))
