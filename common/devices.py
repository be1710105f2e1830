"""Where a job runs when the user does not say: the machine's accelerator if it has one, else the CPU."""

import torch


def default_device() -> torch.device:
    """The current accelerator (CUDA, ROCm, XPU, MPS, ... through ``torch.accelerator``), or the CPU."""
    accelerator = getattr(torch, "accelerator", None)  # PyTorch >= 2.6
    if accelerator is not None and accelerator.is_available():
        return accelerator.current_accelerator()
    if torch.cuda.is_available():
        return torch.device(torch.cuda.current_device())
    return torch.device("cpu")


def default_half_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the device has it, else fp16; fp32 on the CPU."""
    if device.type == "cpu":
        return torch.float32
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16
