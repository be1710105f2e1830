"""Fast paths for embedding on the CPU: an exact [CLS]-only last image layer, and the fp32 Linear kernel chosen by
measurement on the machine that runs it.

The image embedding reads only the [CLS] position of the last layer, so the last layer's attention is computed for
the [CLS] query alone (over all keys and values) and its MLP for [CLS] alone: the same numbers as the full forward
(up to float rounding), one layer's worth of work less per image outside the attention keys and values.
"""

import json
import logging
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from altclip.common.errors import UsageError
from altclip.common.files import replace_atomically
from modeling_altclip.assets import cache_dir
from modeling_altclip.cpu_kernels import onednn_linear_available, use_onednn_linear

logger = logging.getLogger(__name__)


def supports_cls_only(model: torch.nn.Module) -> bool:
    """Whether `model` has the CLIP vision layout this shortcut composes (ours, transformers' CLIP and AltCLIP)."""
    vision = getattr(model, "vision_model", None)
    layers = getattr(getattr(vision, "encoder", None), "layers", None)
    return (
        layers is not None
        and len(layers) > 0
        and all(hasattr(vision, name) for name in ("embeddings", "pre_layrnorm", "post_layernorm"))
        and all(hasattr(layers[-1], name) for name in ("self_attn", "layer_norm1", "layer_norm2", "mlp"))
        and hasattr(model, "visual_projection")
    )


def cls_only_layer(layer: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """A CLIP encoder layer evaluated for the first position only: [batch, 1, width]."""
    attention = layer.self_attn
    batch, length, width = hidden.shape
    heads, head_dim = attention.num_heads, attention.head_dim
    normed = layer.layer_norm1(hidden)
    query = attention.q_proj(normed[:, :1]).view(batch, 1, heads, head_dim).transpose(1, 2)
    key = attention.k_proj(normed).view(batch, length, heads, head_dim).transpose(1, 2)
    value = attention.v_proj(normed).view(batch, length, heads, head_dim).transpose(1, 2)
    attended = F.scaled_dot_product_attention(query, key, value, scale=attention.scale)
    cls = hidden[:, :1] + attention.out_proj(attended.transpose(1, 2).reshape(batch, 1, width))
    return cls + layer.mlp(layer.layer_norm2(cls))


def projected_image_features(model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """`model.get_image_features(pixel_values).pooler_output`, with the last layer run for [CLS] only."""
    vision = model.vision_model
    hidden = vision.pre_layrnorm(vision.embeddings(pixel_values))
    for layer in vision.encoder.layers[:-1]:
        hidden = layer(hidden, attention_mask=None)
    cls = cls_only_layer(vision.encoder.layers[-1], hidden)[:, 0]
    return model.visual_projection(vision.post_layernorm(cls))


# The fp32 Linear kernel on the CPU, chosen by measurement.
#
# PyTorch runs fp32 nn.Linear through MKL's sgemm; oneDNN's kernel (modeling_altclip.cpu_kernels) is more than twice
# as fast on AMD EPYC, and was reported slower on an Intel Xeon (issue 39: 0.94x model only). No vendor rule was
# measured on both, so the choice is measured once per CPU model, thread count, torch version and layer shape, on
# one of the model's own encoder layers, and kept in the cache folder. oneDNN replaces the default kernel only when
# it is clearly faster: on a tie the default stays, and the default is the reference's own kernel.
LINEAR_KERNELS = ("auto", "onednn", "default")
LINEAR_KERNEL_ENVIRONMENT = "ALTCLIP_CPU_LINEAR_KERNEL"
LINEAR_KERNEL_CACHE_FILE = "cpu_linear_kernel.json"
ONEDNN_MARGIN = 1.05  # oneDNN's median layer time must beat the default's by this factor to be chosen


@dataclass
class KernelChoice:
    """The fp32 CPU Linear kernel in use and why: forced (flag or environment), measured now, or measured before."""

    kernel: str
    reason: str
    seconds: dict[str, float] | None = None


def cpu_model_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what the platform reports)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def _timed_layer(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.Tensor, str]:
    """A layer of `model` to time both kernels on, an input of its real shape, and that shape in words: the first
    vision encoder layer at the tower's token count (batch 4), else the largest Linear layer (512 rows)."""
    generator = torch.Generator().manual_seed(0)
    if supports_cls_only(model):
        layer = model.vision_model.encoder.layers[0]
        tokens = model.vision_model.embeddings.num_positions
        width = model.config.vision_config.hidden_size
        return layer, torch.randn(4, tokens, width, generator=generator), f"vision layer {tokens}x{width}"
    linears = [module for module in model.modules() if type(module) is torch.nn.Linear]
    if not linears:
        raise ValueError("The model has no nn.Linear layer to choose a kernel for.")
    linear = max(linears, key=lambda module: module.in_features * module.out_features)
    shape = f"linear {linear.in_features}x{linear.out_features}"
    return linear, torch.randn(512, linear.in_features, generator=generator), shape


def _call(layer: torch.nn.Module, inputs: torch.Tensor) -> None:
    layer(inputs, attention_mask=None) if inputs.dim() == 3 else layer(inputs)


@torch.no_grad()
def measure_linear_kernels(model: torch.nn.Module, repeats: int = 5) -> dict[str, float]:
    """Median seconds of one of `model`'s layers with each kernel, runs interleaved (so a burst of load elsewhere on
    a shared machine falls on both) after a warm-up of each."""
    layer, inputs, _ = _timed_layer(model)
    kernels = {"default": layer, "onednn": use_onednn_linear(layer)}
    for run in kernels.values():
        _call(run, inputs)
    times: dict[str, list[float]] = {name: [] for name in kernels}
    for repeat in range(repeats):
        for name in sorted(kernels, reverse=repeat % 2 == 1):  # alternate which kernel runs first
            start = time.perf_counter()
            _call(kernels[name], inputs)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def linear_kernel_key(model: torch.nn.Module) -> str:
    """What a measured choice holds for: this CPU model, thread count, torch version and the timed layer's shape."""
    shape = _timed_layer(model)[2]
    return f"{cpu_model_name()} | {torch.get_num_threads()} threads | torch {torch.__version__} | {shape}"


def _read_choices(path: Path) -> dict:
    try:
        choices = json.loads(path.read_text(encoding="utf-8"))
        return choices if isinstance(choices, dict) else {}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:  # a damaged cache is measured again, not trusted
        logger.warning("Ignoring the unreadable kernel choices in %s (%s); measuring again.", path, error)
        return {}


def choose_linear_kernel(
    model: torch.nn.Module, requested: str = "auto", cache_file: Path | None = None
) -> KernelChoice:
    """The fp32 CPU Linear kernel for `model`: `requested` if forced ("onednn" or "default"), else the
    $ALTCLIP_CPU_LINEAR_KERNEL environment variable if set, else the choice measured on this machine (kept in
    `cache_file`, by default in the package's cache folder; measured once per key of `linear_kernel_key`)."""
    if requested == "auto" and os.environ.get(LINEAR_KERNEL_ENVIRONMENT):
        requested, forced_by = os.environ[LINEAR_KERNEL_ENVIRONMENT], f"${LINEAR_KERNEL_ENVIRONMENT}"
    else:
        forced_by = "the caller"
    if requested not in LINEAR_KERNELS:
        raise UsageError(
            f"CPU linear kernel {requested!r} (from {forced_by}) is not one of {', '.join(LINEAR_KERNELS)}."
        )
    if requested != "auto":
        return KernelChoice(requested, f"forced by {forced_by}")
    if not onednn_linear_available():
        return KernelChoice("default", "oneDNN's Linear kernel is not available in this PyTorch build")
    path = cache_file or cache_dir() / LINEAR_KERNEL_CACHE_FILE
    key = linear_kernel_key(model)
    known = _read_choices(path).get(key)
    if isinstance(known, dict) and known.get("kernel") in LINEAR_KERNELS[1:]:
        return KernelChoice(known["kernel"], f"measured before on this machine ({path})", known.get("seconds"))
    seconds = measure_linear_kernels(model)
    kernel = "onednn" if seconds["default"] >= ONEDNN_MARGIN * seconds["onednn"] else "default"
    record = {"kernel": kernel, "seconds": {name: round(value, 6) for name, value in seconds.items()}}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        choices = {**_read_choices(path), key: record}
        replace_atomically(path, lambda partial: partial.write_text(json.dumps(choices, indent=2), encoding="utf-8"))
    except OSError as error:  # an unwritable cache costs a measurement next time, nothing else
        logger.warning("Could not keep the kernel choice in %s (%s).", path, error)
    logger.info("CPU Linear kernel for %s: %s (median s per layer: %s)", key, kernel, record["seconds"])
    return KernelChoice(kernel, "measured now", record["seconds"])


def apply_linear_kernel(model: torch.nn.Module, kernel: str, inplace: bool = False) -> torch.nn.Module:
    """`model` with its Linear layers on `kernel` ("onednn": oneDNN, a module copy sharing the parameters unless
    `inplace`; "default": `model` itself, PyTorch's own kernel)."""
    return use_onednn_linear(model, inplace=inplace) if kernel == "onednn" else model
