"""Faster fp32 inference on the CPU: every ``nn.Linear`` calls oneDNN's matrix multiply directly.

PyTorch runs fp32 ``nn.Linear`` on the CPU through MKL's sgemm. On AMD CPUs MKL takes a slow code path (measured on
an AMD EPYC with AVX-512: 200 GFLOP/s against 460 GFLOP/s for oneDNN on the same GEMM, which is also the speed
ONNX Runtime reaches), so the Linear layers, 80% of a CLIP tower's time, run at less than half speed. oneDNN ships
inside every x86 PyTorch wheel; its result is fp32 like MKL's (it sums in another order: differences ~1e-6).
"""

import copy
import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)


def onednn_linear_available() -> bool:
    """Whether this PyTorch build has oneDNN's Linear kernel and it runs here (x86 CPU builds do)."""
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return False
    try:
        torch.ops.mkldnn._linear_pointwise(torch.ones(2, 4), torch.ones(3, 4), torch.ones(3), "none", [], "")
    except (RuntimeError, NotImplementedError):  # an op present but not built for this CPU
        return False
    return True


class OneDNNLinear(nn.Linear):
    """An ``nn.Linear`` (same parameters, same state dict) whose fp32 CPU inference forward calls oneDNN.

    With gradients on, on other devices and dtypes, or inside torch.compile, it is the ordinary ``nn.Linear``
    (oneDNN's kernel has no backward pass; inductor packs weights for oneDNN itself with ``freezing``)."""

    @classmethod
    def wrapping(cls, linear: nn.Linear) -> "OneDNNLinear":
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module.in_features, module.out_features = linear.in_features, linear.out_features
        module.weight, module.bias = linear.weight, linear.bias  # the same Parameter objects: no copy
        module.train(linear.training)  # an eval-mode model stays in eval mode throughout
        return module

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if (
            input.device.type == "cpu"
            and input.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and not (torch.is_grad_enabled() and (input.requires_grad or self.weight.requires_grad))
            and not torch.compiler.is_compiling()  # torch.compile picks its own kernels
        ):
            return torch.ops.mkldnn._linear_pointwise(input, self.weight, self.bias, "none", [], "")
        return super().forward(input)


def use_onednn_linear(model: nn.Module, inplace: bool = False) -> nn.Module:
    """`model` with every plain ``nn.Linear`` swapped for `OneDNNLinear`: a copy of its module tree that shares
    the parameters and buffers (no weight is copied; the caller's model is left as it was) unless `inplace`. The
    state dict is unchanged. Where oneDNN is not available, `model` itself is returned."""
    if not onednn_linear_available():
        logger.info("oneDNN Linear kernel not available in this PyTorch build; keeping nn.Linear.")
        return model
    if not inplace:
        shared = {id(tensor): tensor for tensor in (*model.parameters(), *model.buffers())}
        model = copy.deepcopy(model, memo=shared)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, OneDNNLinear.wrapping(child))
    return model
