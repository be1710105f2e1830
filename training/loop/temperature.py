"""The learnable temperature kept within its bound by clamping the parameter in place after every optimizer step
(open_clip's way), on every backend.

A clamp inside the loss alone has no gradient beyond the bound, so a temperature pushed there can only stay or rise.
Clamping the parameter must reach the copy the optimizer updates: DeepSpeed's fp32 master partition (ZeRO-1/2/3,
also when training in fp32) besides the module's own (possibly low-precision, possibly partitioned) parameter; under
DDP, torch autocast and FSDP2 the module's parameter (FSDP2: this rank's shard) is that copy.
"""

import torch
from transformers import TrainerCallback


@torch.no_grad()
def clamp_logit_scale_(trainer, low: float, high: float) -> None:
    """Clamps the trained model's ``logit_scale`` to [low, high] in place, master copy included (call it on every
    rank: each clamps what it holds)."""
    parameter = trainer.accelerator.unwrap_model(trainer.model).logit_scale
    if trainer.is_deepspeed_enabled:
        from deepspeed.utils import (
            safe_get_full_fp32_param,
            safe_get_local_fp32_param,
            safe_set_full_fp32_param,
            safe_set_local_fp32_param,
        )

        if hasattr(parameter, "ds_id"):  # ZeRO-3: this rank's partitions (the clamp is elementwise, no collective)
            master = safe_get_local_fp32_param(parameter)
            if master is not None:  # None before the optimizer exists
                safe_set_local_fp32_param(parameter, master.clamp(low, high))
            parameter.ds_tensor.data.clamp_(low, high)
            return
        master = safe_get_full_fp32_param(parameter)  # ZeRO-1/2: the fp32 master partition
        if master is not None:
            safe_set_full_fp32_param(parameter, master.clamp(low, high))
        parameter.data.clamp_(low, high)
        return
    parameter.clamp_(low, high)


class LogitScaleClamp(TrainerCallback):
    """Clamps ``logit_scale`` when training starts (a checkpoint may hold a value beyond the bound) and after every
    optimizer step, before the step is logged or saved."""

    def __init__(self, trainer, high: float, low: float = 0.0):
        self.trainer, self.low, self.high = trainer, low, high

    def on_train_begin(self, args, state, control, **kwargs):
        clamp_logit_scale_(self.trainer, self.low, self.high)

    def on_step_end(self, args, state, control, **kwargs):
        clamp_logit_scale_(self.trainer, self.low, self.high)
