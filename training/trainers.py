"""`transformers.Trainer` subclasses of the two stages; the loss lives in ``compute_loss``."""

import math

import torch
from transformers import Trainer

from .losses import ClipLoss, distillation_loss
from .records import SkipCounter
from .teacher import FrozenTextTeacher


class AltCLIPTrainer(Trainer):
    """Counts the records the collator had to skip and reports them in the logs as ``skipped_records``."""

    def __init__(self, *args, skipped_while_reading: SkipCounter | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.skipped = skipped_while_reading or SkipCounter()

    def _count_skipped(self, inputs: dict) -> None:
        for skipped in inputs.pop("skipped", None) or ():
            self.skipped.add(skipped)

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        logs["skipped_records"] = self.skipped.total  # this process's count; the summary file sums all ranks
        super().log(logs, *args, **kwargs)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation reports the training loss on held-out data; there are no logits to collect."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None


class TeacherLearningTrainer(AltCLIPTrainer):
    """Stage 1: the student text tower regresses the frozen CLIP teacher's text features.

    The teacher is not part of the trained model: it reaches no optimizer and no checkpoint. Its features come
    either from the batch (precomputed cache) or from running it on the batch's English side.
    """

    def __init__(self, *args, teacher: FrozenTextTeacher | None = None, loss_kind: str = "mse", **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = teacher
        self.loss_kind = loss_kind

    def _teacher_targets(self, inputs: dict, device: torch.device) -> torch.Tensor:
        if "teacher_features" in inputs:
            return inputs.pop("teacher_features")
        if self.teacher is None:
            raise ValueError("The batch has no cached teacher features and no teacher was given.")
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        return self.teacher(inputs.pop("teacher_input_ids"), inputs.pop("teacher_attention_mask"))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self._count_skipped(inputs)
        targets = self._teacher_targets(inputs, inputs["input_ids"].device)
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        loss = distillation_loss(outputs.pooler_output.float(), targets.float(), self.loss_kind)
        return (loss, outputs) if return_outputs else loss


class ContrastiveTrainer(AltCLIPTrainer):
    """Stage 2: symmetric InfoNCE over image-caption pairs with the learnable temperature clamped at 100."""

    def __init__(self, *args, max_logit_scale: float = 100.0, gather_with_grad: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_log_logit_scale = math.log(max_logit_scale)
        self.clip_loss = ClipLoss(gather_with_grad=gather_with_grad)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self._count_skipped(inputs)
        logit_scale = self.accelerator.unwrap_model(model).logit_scale
        with torch.no_grad():
            logit_scale.clamp_(0, self.max_log_logit_scale)
        outputs = model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], pixel_values=inputs["pixel_values"]
        )
        loss = self.clip_loss(outputs.image_embeds, outputs.text_embeds, logit_scale.exp())
        return (loss, outputs) if return_outputs else loss
