"""Test-only launcher of ``altclip-train`` (run under torchrun as a script) that records, inside the run, which
backend really trains: after the first optimizer step every rank writes ``OUTPUT_DIR/backend_probe/rank-R.json``
with accelerate's distributed type, the model's wrapper (and DeepSpeed's ZeRO stage) and, for a trained and a
frozen weight, what this rank holds (FSDP2: DTensor or not, local and full shape; DeepSpeed: ``numel()``,
``ds_numel`` and the partition's size).

``ALTCLIP_TEST_FSDP_ON_CPU=1`` switches on the one unsupported piece, for tests only: accelerate enables FSDP only
for GPU-like distributed types and drops ``--fsdp`` on CPU processes (no supported setting changes that in
accelerate 1.15), so after the training arguments set up gloo, PartialState's distributed type is relabelled
MULTI_GPU; the device stays the CPU and FSDP2 itself runs on gloo. Nothing in the product reads that variable.
"""

import json
import os
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

import altclip.training.cli as cli
import altclip.training.stages as stages
from altclip.training.loop.trainers import AltCLIPTrainer

PROBE_FOLDER = "backend_probe"
FSDP_ON_CPU = "ALTCLIP_TEST_FSDP_ON_CPU"
# (trained, frozen) weights each stage's trained module holds: stage 1 trains the text tower alone.
PROBED = {
    "contrastive": ("text_projection.weight", "vision_model.encoder.layers.0.mlp.fc1.weight"),
    "teacher": ("transformation.weight", None),
}


def describe(parameter: torch.Tensor | None) -> dict | None:
    """What this rank holds of a parameter, read from the live tensor."""
    if parameter is None:
        return None
    from torch.distributed.tensor import DTensor

    info = {"class": type(parameter.data).__name__, "numel": parameter.numel(), "shape": list(parameter.shape)}
    if isinstance(parameter, DTensor):
        info.update(dtensor=True, local_shape=list(parameter.to_local().shape), full_shape=list(parameter.shape))
    else:
        info["dtensor"] = False
    if hasattr(parameter, "ds_numel"):
        info.update(ds_numel=int(parameter.ds_numel), ds_partition_numel=int(parameter.ds_tensor.numel()))
    return info


class BackendProbe(TrainerCallback):
    def __init__(self, trainer: AltCLIPTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step != 1:
            return
        trainer = self.trainer
        module = trainer.accelerator.unwrap_model(trainer.model)
        parameters = dict(module.named_parameters())
        trained, frozen = PROBED["contrastive" if hasattr(module, "logit_scale") else "teacher"]
        report = {
            "distributed_type": getattr(trainer.accelerator.distributed_type, "value", ""),
            "is_fsdp_enabled": bool(trainer.is_fsdp_enabled),
            "is_deepspeed_enabled": bool(trainer.is_deepspeed_enabled),
            "wrapper": type(trainer.model_wrapped).__name__,
            "zero_stage": trainer.model_wrapped.zero_optimization_stage() if trainer.is_deepspeed_enabled else None,
            "world_size": args.world_size,
            "trained": describe(parameters[trained]),
            "frozen": describe(parameters.get(frozen)) if frozen else None,
        }
        folder = Path(args.output_dir) / PROBE_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"rank-{args.process_index}.json").write_text(json.dumps(report))


def install() -> None:
    original_init = AltCLIPTrainer.__init__

    def init_with_probe(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.add_callback(BackendProbe(self))

    AltCLIPTrainer.__init__ = init_with_probe
    if os.environ.get(FSDP_ON_CPU) == "1":
        from accelerate.state import PartialState
        from accelerate.utils import DistributedType

        original_parse = stages.parse  # train() in training/stages.py parses

        def parse_then_relabel(stage, argv):
            run = original_parse(stage, argv)
            run.training.device  # sets up gloo through accelerate's PartialState
            PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU
            return run

        stages.parse = parse_then_relabel


def probe_reports(output_dir: Path) -> list[dict]:
    """The reports of every rank, rank order."""
    paths = sorted((output_dir / PROBE_FOLDER).glob("rank-*.json"))
    return [json.loads(path.read_text()) for path in paths]


if __name__ == "__main__":
    install()
    cli.main(sys.argv[1:])
