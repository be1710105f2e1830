"""`transformers.Trainer` subclasses of the two stages; the loss lives in ``compute_loss``.

Training data reaches them already planned per rank (`epoch_plan.GlobalBatchSampler` over a table, or a
`shard_stream.ShardStream`), so the DataLoader is built here and not handed to accelerate, whose dataloader
preparation would split the data across ranks a second time.
"""

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from transformers import Trainer

from altclip.common.records import SkipCounter

from ..data.epoch_plan import GlobalBatchSampler, data_seed
from ..data.shard_stream import ShardStream
from .accumulated_negatives import accumulated_contrastive_step
from .contrastive_objective import Objective, contrastive_objective
from .feature_caches import ImageEmbeddingCache
from .losses import distillation_loss
from .teacher import FrozenTextTeacher
from .temperature import LogitScaleClamp
from .text_anchors import TextAnchors

TRAINED_KEYS_FOLDER = "trained_keys"


def decays(name: str, parameter: torch.Tensor) -> bool:
    """Biases, norm weights and ``logit_scale`` (all under 2-D) and embeddings get no weight decay."""
    return parameter.ndim >= 2 and "embedding" not in name


def forget_steps_after(path: Path, step: int) -> None:
    """Drops the records of steps after `step` from a trained-keys file: a run resumed from checkpoint-`step`
    (after a kill or a restart) trains those steps again, and the file then holds what the final model saw."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if int(line.split("\t", 1)[0]) <= step]
    if len(kept) < len(lines):
        path.write_text("".join(kept), encoding="utf-8")


class PlannedDataLoader(DataLoader):
    """A DataLoader whose epoch reaches its plan (the batch sampler, or the shard stream)."""

    def __init__(self, dataset, plan, **kwargs):
        super().__init__(dataset, **kwargs)
        self.plan = plan

    def set_epoch(self, epoch: int) -> None:
        self.plan.set_epoch(epoch)


class AltCLIPTrainer(Trainer):
    """Planned training data, skipped records counted (``skipped_records`` in the logs), and optionally every
    trained sample's key recorded per rank and step (``OUTPUT_DIR/trained_keys/rank-R.tsv``)."""

    def __init__(
        self,
        *args,
        record_trained_keys: bool = False,
        train_weights: list[float] | None = None,
        shuffle_train: bool = True,
        language_plan=None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.skipped = SkipCounter()
        self.record_trained_keys = record_trained_keys
        self.train_weights, self.shuffle_train = train_weights, shuffle_train
        self.language_plan = language_plan  # `language_balance.LanguagePlan` of --language_column
        self._plan = None
        self._keys_trimmed = False

    def _loader_options(self) -> dict:
        workers = self.args.dataloader_num_workers
        return {
            "collate_fn": self.data_collator,
            "num_workers": workers,
            "pin_memory": self.args.dataloader_pin_memory,
            "prefetch_factor": self.args.dataloader_prefetch_factor if workers else None,
            "persistent_workers": False,  # workers pick up each epoch's plan when they start
        }

    def get_train_dataloader(self) -> DataLoader:
        dataset = self.train_dataset
        if isinstance(dataset, ShardStream):
            self._plan = dataset
            return PlannedDataLoader(dataset, dataset, batch_size=None, **self._loader_options())
        self._plan = GlobalBatchSampler(
            dataset.sizes,
            self.args.per_device_train_batch_size,
            weights=self.train_weights,
            extra=len(dataset) - sum(dataset.sizes),
            seed=data_seed(self.args),
            shuffle=self.shuffle_train,
            rank=self.args.process_index,
            world_size=self.args.world_size,
            language_plan=self.language_plan,
        )
        return PlannedDataLoader(dataset, self._plan, batch_sampler=self._plan, **self._loader_options())

    def _run_epoch(self, *args, **kwargs):
        """Sets the plan's epoch; a resumed shard stream starts after the trained batches without reading them."""
        epoch = kwargs["epoch"]
        self._plan.set_epoch(epoch)
        resumed = kwargs["resume_from_checkpoint"] is not None and epoch == kwargs["epochs_trained"]
        if resumed and isinstance(self._plan, ShardStream) and not self.args.ignore_data_skip:
            self._plan.resume_at(epoch, kwargs["steps_trained_in_current_epoch"])
        return super()._run_epoch(*args, **kwargs)

    def _take_bookkeeping(self, inputs: dict) -> int | None:
        """Counts skips, records keys; returns 0 for a placeholder batch (see `usable_or_placeholder`)."""
        if inputs.pop("already_trained", False):
            raise RuntimeError("A batch trained before the resumption reached the model; this is a bug.")
        for skipped in inputs.pop("skipped", None) or ():
            self.skipped.add(skipped)
        keys = inputs.pop("keys", None)
        if self.record_trained_keys and keys and self.model.training:
            folder = Path(self.args.output_dir) / TRAINED_KEYS_FOLDER
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"rank-{self.args.process_index}.tsv"
            if not self._keys_trimmed:
                forget_steps_after(path, self.state.global_step)
                self._keys_trimmed = True
            step = self.state.global_step + 1
            with open(path, "a", encoding="utf-8") as handle:
                handle.write("".join(f"{step}\t{key}\n" for key in keys))
        return inputs.pop("usable_rows", None)

    def get_decay_parameter_names(self, model: torch.nn.Module) -> list[str]:
        """Weight decay on weight matrices only: not on biases, norms, embeddings or ``logit_scale`` (open_clip's
        rule), whatever the backend (DeepSpeed and FSDP build their optimizer from these groups too)."""
        return [name for name, parameter in model.named_parameters() if decays(name, parameter)]

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
        if self.is_fsdp_enabled:  # one FSDP config for both stages: this stage trains the text tower alone
            wrap_only_present_layers(self.accelerator.state.fsdp_plugin, self.model)

    def _teacher_targets(self, inputs: dict, device: torch.device) -> torch.Tensor:
        if "teacher_features" in inputs:
            return inputs.pop("teacher_features")
        if self.teacher is None:
            raise ValueError("The batch has no cached teacher features and no teacher was given.")
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        return self.teacher(inputs.pop("teacher_input_ids"), inputs.pop("teacher_attention_mask"))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        usable = self._take_bookkeeping(inputs)
        targets = self._teacher_targets(inputs, inputs["input_ids"].device)
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        features = outputs.pooler_output.float()
        loss = distillation_loss(features[:usable], targets.float()[:usable], self.loss_kind)
        return (loss, outputs) if return_outputs else loss


FROZEN_IMAGE_TOWER = ("vision_model", "visual_projection")


def wrap_only_present_layers(plugin, trained: torch.nn.Module, left_out: tuple[str, ...] = ()) -> None:
    """FSDP2 wraps as units only the configured layer classes that the trained module holds outside `left_out`
    (accelerate refuses a configured class the model lacks, e.g. ``CLIPEncoderLayer`` in stage 1's text tower)."""
    present = {
        type(module).__name__
        for name, module in trained.named_modules()
        if not (left_out and name.startswith(left_out))
    }
    names = plugin.transformer_cls_names_to_wrap or list(getattr(trained, "_no_split_modules", None) or ())
    plugin.transformer_cls_names_to_wrap = [name for name in names if name in present]


def keep_frozen_tower_out_of_fsdp(plugin, altclip: torch.nn.Module) -> None:
    """FSDP2 leaves a frozen image tower whole on every rank: it has no gradients or optimizer state to shard, it runs
    outside the trained forward (where the root would hold only shards of it, and its layers would start as FSDP
    roots of their own), and keeping it whole saves an all-gather of it per step. Its parameters are ignored by
    ``fully_shard`` and its layer classes are not wrapped (accelerate's plugin settings, read when the Trainer
    prepares the model)."""
    plugin.ignored_modules = [getattr(altclip, name) for name in FROZEN_IMAGE_TOWER]
    wrap_only_present_layers(plugin, altclip, left_out=FROZEN_IMAGE_TOWER)


class ContrastiveTrainer(AltCLIPTrainer):
    """Stage 2: symmetric InfoNCE (or SigLIP's sigmoid loss; optionally on Matryoshka prefixes, see
    `contrastive_objective`) over image-caption pairs with the learnable temperature clamped at 100.

    With a frozen image tower its embeddings are computed without gradients outside the trained forward, read from
    an `ImageEmbeddingCache` where earlier epochs stored them; ``image_tower_rows`` in the logs counts the images
    this process ran through the tower. With ``full_batch_negatives`` and gradient accumulation, every pair is
    scored against the whole accumulated batch (`accumulated_negatives`). With `anchors` (``--anchor_texts``), each
    training micro-batch's texts also hold a draw of anchor texts, and the loss adds their distance to the starting
    model's embeddings (`text_anchors`).
    """

    def __init__(
        self,
        *args,
        max_logit_scale: float = 100.0,
        gather_with_grad: bool = True,
        full_batch_negatives: bool = True,
        image_cache: ImageEmbeddingCache | None = None,
        objective: Objective | None = None,
        anchors: TextAnchors | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.anchors = anchors
        self._anchor_step, self._anchor_micro_batch = -1, 0
        self.max_logit_scale = max_logit_scale
        self.max_log_logit_scale = math.log(max_logit_scale)
        self.add_callback(LogitScaleClamp(self, self.max_log_logit_scale))
        # InfoNCE unless given (`contrastive_objective`: --loss, --matryoshka_dims)
        self.objective = objective if objective is not None else contrastive_objective("infonce", gather_with_grad)
        self.accumulates_negatives = full_batch_negatives and self.args.gradient_accumulation_steps > 1
        self.image_cache = image_cache
        altclip = self.model
        self.frozen_image_tower = not any(
            parameter.requires_grad
            for module in (altclip.vision_model, altclip.visual_projection)
            for parameter in module.parameters()
        )
        self.image_tower_rows = 0
        self._window: list[dict] = []
        if self.frozen_image_tower and self.is_fsdp_enabled:
            keep_frozen_tower_out_of_fsdp(self.accelerator.state.fsdp_plugin, altclip)

    def _image_embeds(self, model, inputs: dict) -> torch.Tensor:
        """Frozen tower: image embeddings without gradients, cached ones where the batch has them, the others
        computed (and, in training, stored in the cache)."""
        pixel_values = inputs.pop("pixel_values")
        cached, is_cached = inputs.pop("cached_image_embeds", None), inputs.pop("image_cached", None)
        rows = inputs.pop("table_rows", None)
        computed = None
        if len(pixel_values):
            with torch.no_grad():
                features = self.accelerator.unwrap_model(model).get_image_features(pixel_values=pixel_values)
                computed = F.normalize(features.pooler_output, dim=-1)
            self.image_tower_rows += len(pixel_values)
        if is_cached is None:
            embeds = computed
        else:
            embeds = cached if computed is None else cached.to(computed.dtype)
            if computed is not None:
                embeds[~is_cached] = computed
        if self.image_cache is not None and model.training and computed is not None and rows is not None:
            new_rows = rows if is_cached is None else rows[~is_cached]
            keep = new_rows >= 0  # not the placeholder of an all-skipped batch
            self.image_cache.put(new_rows[keep].cpu().numpy(), computed[keep])
        return embeds

    def _forward(self, model, inputs: dict):
        """The model's outputs on a batch, with the applied temperature (``logit_scale_exp``: read inside the forward,
        where ZeRO-3 and FSDP2 have gathered it); with a frozen tower the image side runs outside the trained
        forward (and is kept in `inputs`, so that a second call does not run it again)."""
        if self.frozen_image_tower:
            if "image_embeds" not in inputs:
                inputs["image_embeds"] = self._image_embeds(model, inputs)
            images = {"image_embeds": inputs["image_embeds"]}
        else:
            images = {"pixel_values": inputs["pixel_values"]}
        return model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], return_logit_scale=True, **images
        )

    def _add_anchors(self, inputs: dict, micro_batch: int | None = None) -> None:
        """Appends this micro-batch's anchor texts to a training batch's texts (once; see `text_anchors`). The draw
        is keyed by the optimizer step and the micro-batch's place in it (counted here unless given)."""
        if self.anchors is None or "anchor_rows" in inputs:
            return
        step = self.state.global_step
        if micro_batch is None:
            if step != self._anchor_step:
                self._anchor_step, self._anchor_micro_batch = step, 0
            micro_batch, self._anchor_micro_batch = self._anchor_micro_batch, self._anchor_micro_batch + 1
        self.anchors.join(inputs, self.anchors.draw(step, micro_batch))

    def _split_anchors(self, text_embeds: torch.Tensor, inputs: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the captions' embeddings, the anchor term) of a forward over captions and anchors; no term without
        anchors."""
        rows = inputs.get("anchor_rows")
        if rows is None:
            return text_embeds, None
        captions = len(text_embeds) - len(rows)
        return text_embeds[:captions], self.anchors.loss(text_embeds[captions:], rows)

    def _embed(self, model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(image_embeds, the captions' text_embeds, the anchor term or None) of a batch (see `_forward`)."""
        outputs = self._forward(model, inputs)
        return outputs.image_embeds, *self._split_anchors(outputs.text_embeds, inputs)

    def _loss(
        self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        # Not clamped here: a clamp in the loss has no gradient beyond (or, in float rounding, at) the bound, so the
        # temperature could never come back down. The parameter itself is clamped in place when training starts and
        # after every optimizer step (`temperature.LogitScaleClamp`).
        return self.objective(image_embeds, text_embeds, scale, bias)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        usable = self._take_bookkeeping(inputs)
        if model.training:
            self._add_anchors(inputs)
        outputs = self._forward(model, inputs)
        image_embeds = outputs.image_embeds
        text_embeds, anchor_term = self._split_anchors(outputs.text_embeds, inputs)
        loss = self._loss(image_embeds[:usable], text_embeds[:usable], outputs.logit_scale_exp, outputs.logit_bias)
        if anchor_term is not None:
            loss = loss + anchor_term
        return (loss, (image_embeds, text_embeds)) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        """With full-batch negatives, holds the micro-batches of an optimizer step and trains them together on the
        last one (the Trainer marks it with ``sync_gradients``); the others report a zero loss."""
        if not self.accumulates_negatives:
            return super().training_step(model, inputs, num_items_in_batch)
        self._window.append(inputs)
        if not self.accelerator.sync_gradients:
            return torch.zeros((), device=self.args.device)
        batches, self._window = [self._prepare_inputs(batch) for batch in self._window], []
        model.train()
        usable = [self._take_bookkeeping(batch) for batch in batches]
        for number, batch in enumerate(batches):
            self._add_anchors(batch, number)
        unwrapped = self.accelerator.unwrap_model(model)
        parameters = [unwrapped.logit_scale]
        if getattr(unwrapped, "logit_bias", None) is not None:
            parameters.append(unwrapped.logit_bias)

        def loss_of(images: torch.Tensor, texts: torch.Tensor, log_scale: torch.Tensor, bias=None) -> torch.Tensor:
            return self._loss(images, texts, log_scale.exp(), bias)

        return accumulated_contrastive_step(self, model, batches, usable, self._embed, loss_of, parameters)

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        logs["image_tower_rows"] = self.image_tower_rows  # this process's count
        distance = self.anchors.logged() if self.anchors is not None else None
        if distance is not None:  # this process's mean 1 - cos of its anchors since the last log (before the weight)
            logs["anchor_distance"] = distance
        super().log(logs, *args, **kwargs)
