"""What DeepSpeed needs around the Trainer: its communication set up before any model loads, models that are not
trained kept out of ZeRO-3's partitioning at construction, and partitioned weights gathered where they are read
outside the engine.

Under ZeRO-3, transformers builds every model that ``from_pretrained`` loads inside ``deepspeed.zero.Init``, which
partitions its parameters over the ranks at once. That suits the model the engine trains (stage 2's AltCLIP), but
not the frozen CLIP teacher (run by this process outside the engine, it would hold empty partitions), nor models
joined from parts (`build_altclip` copies weights between models), nor stage 1's AltCLIP, of which the engine trains
only the text tower: those are built whole, and the engine partitions what it trains when it starts.
"""

import contextlib
from collections.abc import Iterator

import torch
from transformers import TrainingArguments
from transformers.integrations.deepspeed import (
    is_deepspeed_zero3_enabled,
    set_hf_deepspeed_config,
    unset_hf_deepspeed_config,
)

from altclip.common.errors import UsageError

# accelerate turns --fsdp into FSDP only on these distributed types (AcceleratorState); elsewhere it drops it silently
FSDP_DISTRIBUTED_TYPES = (
    "MULTI_GPU",
    "MULTI_MLU",
    "MULTI_SDAA",
    "MULTI_MUSA",
    "MULTI_NPU",
    "MULTI_XPU",
    "MULTI_HPU",
    "MULTI_NEURON",
)


def check_fsdp_applies(training_args: TrainingArguments) -> None:
    """Refuses ``--fsdp`` where accelerate would not apply it (CPU processes, a single process): such a run would
    train as plain DDP with nothing sharded, while the user believes it shards (`UsageError`, one line)."""
    if not training_args.fsdp:
        return
    from accelerate.state import PartialState

    training_args.device  # noqa: B018  (sets up the processes' state through accelerate)
    kind = PartialState().distributed_type
    kind = getattr(kind, "value", str(kind))
    if kind not in FSDP_DISTRIBUTED_TYPES:
        where = "on the CPU" if training_args.device.type == "cpu" else f"as {kind}"
        raise UsageError(
            f"--fsdp is set but these processes run {where} (accelerate's distributed type {kind}); accelerate "
            "applies FSDP only across several GPU-like processes and would silently train plain DDP with nothing "
            "sharded. Run on GPUs, or drop --fsdp and --fsdp_config to train with DDP here."
        )


def init_deepspeed_communication(training_args: TrainingArguments) -> None:
    """With ``--deepspeed``, sets up DeepSpeed's communication over the process group accelerate starts (gloo on
    CPU processes). Without it, ``zero.Init`` inside ``from_pretrained`` sees a world of one process and DeepSpeed's
    batch-size check fails (train_batch_size != micro batch x accumulation x world size)."""
    if not training_args.deepspeed:
        return
    import deepspeed

    training_args.device  # noqa: B018  (starts torch.distributed through accelerate)
    backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else None
    deepspeed.init_distributed(dist_backend=backend)


@contextlib.contextmanager
def outside_zero3_init(training_args: TrainingArguments) -> Iterator[None]:
    """Models built inside are whole (not partitioned by ZeRO-3's ``zero.Init``); nothing changes without ZeRO-3."""
    config = getattr(training_args, "hf_deepspeed_config", None)
    if config is None or not is_deepspeed_zero3_enabled():
        yield
        return
    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        set_hf_deepspeed_config(config)


def gathered(module: torch.nn.Module):
    """A context in which `module`'s ZeRO-3-partitioned parameters are whole (read-only); a no-op otherwise."""
    partitioned = [parameter for parameter in module.parameters() if hasattr(parameter, "ds_id")]
    if not partitioned:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None)


def full_numel(parameter: torch.Tensor) -> int:
    """Elements of the whole parameter, also when ZeRO-3 holds it partitioned (its ``numel()`` is then 0)."""
    return int(getattr(parameter, "ds_numel", parameter.numel()))
