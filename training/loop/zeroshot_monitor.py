"""Zero-shot scores while training (open_clip's ``--zeroshot-frequency``), with the live model.

Every ``--zeroshot_steps`` optimizer steps every rank embeds its share of the class prompts and of the images with
the model being trained (eval mode, no gradients, no copy written to disk), the shares are gathered, and each rank
ranks the images: no rank waits in a collective longer than the scoring itself. The numbers are logged with the
losses (``zeroshot/DATASET/LANGUAGE/top1`` ..., and ``zeroshot/seconds``, the pause: TensorBoard, W&B and
trainer_state.json through ``report_to``); rank 0 keeps each scoring in the shared results format (JSON, table,
chart) in ``OUTPUT_DIR/zeroshot/step-N``. A scoring that fails on any rank, out of memory included, is one warning
line on every rank and training goes on.
"""

import argparse
import logging
import shlex
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from transformers import TrainerCallback

from altclip.common.constants import DEFAULT_MAX_TEXT_LENGTH
from altclip.common.errors import InputDataError, UsageError
from altclip.common.images import open_rgb_image
from altclip.common.results_format import write_results
from altclip.common.zero_shot_scoring import (
    ClassFolder,
    class_embeddings,
    prompts,
    read_class_folder,
    zero_shot_result,
)

from ..arguments import ZeroShotArguments

logger = logging.getLogger(__name__)

ZEROSHOT_FOLDER = "zeroshot"
SCORED_DATASETS = ("image_folder",)


def scoring_options(flags: str) -> argparse.Namespace:
    """The altclip-eval flags that apply to scoring in the training processes (``--zeroshot_eval_flags``)."""
    parser = argparse.ArgumentParser(prog="--zeroshot_eval_flags", add_help=False, exit_on_error=False)
    parser.add_argument("--templates", nargs="+", default=["{c}"])
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_workers", type=int, default=0)  # accepted for altclip-eval's flags; images load here
    parser.add_argument("--max_text_length", type=int, default=DEFAULT_MAX_TEXT_LENGTH)
    try:
        options, unknown = parser.parse_known_args(shlex.split(flags))
    except (argparse.ArgumentError, ValueError) as error:
        raise UsageError(f"altclip-train: --zeroshot_eval_flags {flags!r}: {error}.") from None
    if unknown:
        raise UsageError(
            f"altclip-train: --zeroshot_eval_flags {' '.join(unknown)}: scoring during training takes --templates, "
            "--batch_size, --num_workers and --max_text_length."
        )
    if not all("{c}" in template for template in options.templates):
        raise UsageError(f"altclip-train: every --zeroshot_eval_flags template needs {{c}}; got {options.templates}.")
    return options


def check_zeroshot_arguments(args: ZeroShotArguments) -> None:
    """One-line refusals before any model loads: the data, its class names per language, the flags."""
    if args.zeroshot_steps < 0:
        raise UsageError(f"altclip-train: --zeroshot_steps must be 0 (off) or positive, not {args.zeroshot_steps}.")
    if not args.zeroshot_steps and not args.zeroshot_data_dir:
        return  # off; a folder given alone is still checked (--before_after and the WiSE-FT sweep score it)
    if not (args.zeroshot_data_dir and Path(args.zeroshot_data_dir).is_dir()):
        raise UsageError(
            f"altclip-train: --zeroshot_steps needs --zeroshot_data_dir, a folder with the {args.zeroshot_dataset} "
            f"data; got {args.zeroshot_data_dir!r}."
        )
    if args.zeroshot_dataset not in SCORED_DATASETS:
        raise UsageError(
            f"altclip-train: --zeroshot_dataset {args.zeroshot_dataset}: during training the live model scores a "
            "class folder (image_folder: ROOT/<class>/<image>, optional classnames.json); score checkpoints of "
            "other benchmarks with altclip-eval zeroshot."
        )
    scoring_options(args.zeroshot_eval_flags)
    try:
        folder = read_class_folder(args.zeroshot_data_dir)
        for language in languages(args):
            folder.class_names(language, len(languages(args)) > 1)
    except (OSError, ValueError) as error:
        raise InputDataError(f"altclip-train: --zeroshot_data_dir: {error}") from None


def languages(args: ZeroShotArguments) -> list[str]:
    return [language.strip() for language in args.zeroshot_languages.split(",") if language.strip()]


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ZeroShotMonitor(TrainerCallback):
    """Scores the model being trained every ``zeroshot_steps`` steps; needs its trainer (`attach`)."""

    def __init__(self, args: ZeroShotArguments, model, processor):
        self.args, self.model, self.processor = args, model, processor
        self.options = scoring_options(args.zeroshot_eval_flags)
        self.folder: ClassFolder = read_class_folder(args.zeroshot_data_dir)
        several = len(languages(args)) > 1
        self.names = {language: self.folder.class_names(language, several) for language in languages(args)}
        self.trainer = None

    @classmethod
    def attach(cls, trainer, args: ZeroShotArguments, model, processor) -> None:
        if args.zeroshot_steps:
            monitor = cls(args, model, processor)
            monitor.trainer = trainer
            trainer.add_callback(monitor)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.args.zeroshot_steps == 0:
            self.score(state.global_step)

    def _sharded(self) -> bool:
        """Parameters held as shards (FSDP2 DTensors, DeepSpeed ZeRO-3) cannot run outside the wrapper's forward."""
        return any(type(p).__name__ == "DTensor" or hasattr(p, "ds_id") for p in self.model.parameters())

    def _embed_images(self, rows: list[int], device) -> tuple[torch.Tensor, list[int], list[int]]:
        """Normalised embeddings of this rank's readable images, their rows, and the unreadable rows."""
        image_processor, out, kept, unreadable = self.processor.image_processor, [], [], []
        for start in range(0, len(rows), self.options.batch_size):
            pixels = []
            for row in rows[start : start + self.options.batch_size]:
                try:
                    image = open_rgb_image(self.folder.images[row])
                except Exception:  # any decoding failure: the image is left out and counted, as altclip-eval does
                    unreadable.append(row)
                    continue
                pixels.append(image_processor(images=image, return_tensors="pt")["pixel_values"][0])
                kept.append(row)
            if pixels:
                batch = torch.stack(pixels).to(device, next(self.model.parameters()).dtype)
                out.append(F.normalize(self.model.get_image_features(pixel_values=batch).pooler_output.float(), dim=-1))
        width = self.model.config.projection_dim
        embeds = torch.cat(out).cpu() if out else torch.empty(0, width)
        return embeds, kept, unreadable

    def _embed_texts(self, texts: list[str], device) -> torch.Tensor:
        tokenizer, out = self.processor.tokenizer, []
        for start in range(0, len(texts), self.options.batch_size):
            tokens = tokenizer(
                texts[start : start + self.options.batch_size],
                padding=True,
                truncation=True,
                max_length=self.options.max_text_length,
                return_tensors="pt",
            ).to(device)
            out.append(F.normalize(self.model.get_text_features(**tokens).pooler_output.float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.empty(0, self.model.config.projection_dim)

    def _local_share(self, all_texts: list[str]) -> dict:
        """This rank's share: prompts and images with index = rank (mod world size), embedded with the live model."""
        rank, world_size = _world()
        device = next(self.model.parameters()).device
        image_rows = list(range(rank, len(self.folder.images), world_size))
        text_rows = list(range(rank, len(all_texts), world_size))
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), self.trainer.accelerator.autocast():
                images, kept, unreadable = self._embed_images(image_rows, device)
                texts = self._embed_texts([all_texts[row] for row in text_rows], device)
        finally:
            self.model.train(was_training)
        return {"images": images, "kept": kept, "unreadable": unreadable, "texts": texts}

    def score(self, step: int, name: str | None = None) -> dict[str, float] | None:
        """Scores the live model as it is now on every rank; logs and returns the scores (None when skipped or
        failed); `name` (default step-N) names the results folder."""
        started = time.monotonic()
        if self._sharded():
            logger.warning("Zero-shot scoring at step %d skipped: the parameters are sharded (FSDP/ZeRO-3).", step)
            return None
        templates = self.options.templates
        all_texts = [text for names in self.names.values() for text in prompts(names, templates)]
        problem, share = None, None
        try:
            share = self._local_share(all_texts)
        except torch.OutOfMemoryError as error:
            problem = f"out of memory ({str(error).splitlines()[0]}); lower --batch_size in --zeroshot_eval_flags"
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception as error:  # a scoring must not end the run: reported in one line
            problem = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        if self._any_rank_failed(problem is not None):
            logger.warning(
                "Zero-shot scoring at step %d failed (training goes on): %s", step, problem or "on another rank"
            )
            return None
        logger.info(
            "Rank %d embedded %d images and %d prompts for zero-shot at step %d",
            _world()[0],
            len(share["kept"]) + len(share["unreadable"]),
            len(share["texts"]),
            step,
        )
        _, world_size = _world()
        shares = [share]
        if world_size > 1:
            shares = [None] * world_size
            dist.all_gather_object(shares, share)
        # Past the gather every rank holds the same shares and decides alike; nothing below may raise, or one rank
        # would leave the others waiting in the next collective.
        try:
            if not any(part["kept"] for part in shares):
                unreadable = sum(len(part["unreadable"]) for part in shares)
                logger.warning(
                    "Zero-shot scoring at step %d skipped (training goes on): none of the %d images in %s could be "
                    "read.",
                    step,
                    unreadable,
                    self.folder.root,
                )
                return None
            results = self._results(shares, all_texts)
        except Exception as error:  # a scoring must not end the run: reported in one line
            logger.warning(
                "Zero-shot scoring at step %d failed (training goes on): %s: %s",
                step,
                type(error).__name__,
                str(error).splitlines()[0] if str(error) else "",
            )
            return None
        seconds = time.monotonic() - started
        scores = {
            f"zeroshot/{entry['dataset']}/{entry['language']}/{metric}": value
            for entry in results
            for metric, value in entry["metrics"].items()
        }
        if self.trainer.is_world_process_zero():
            self._write(results, step, name)
            logger.info("Zero-shot at step %d (%.2f s): %s", step, seconds, scores)
        # logged with the pause (a new dict: the Trainer adds its own fields to what it logs); returned without it,
        # so that scores of the same model compare equal (before/after, the WiSE-FT sweep)
        self.trainer.log({**scores, "zeroshot/seconds": round(seconds, 3)})
        return scores

    def _write(self, results: list[dict], step: int, name: str | None) -> None:
        """Rank 0 keeps the scoring in the results format; a full or failing disk is one warning, never an error."""
        folder = Path(self.trainer.args.output_dir) / ZEROSHOT_FOLDER / (name or f"step-{step}")
        try:
            write_results(results, folder, f"{self.trainer.args.output_dir} (step {step})")
        except Exception as error:  # the scores are still logged; only the files are missing
            logger.warning(
                "Zero-shot results at step %d not written to %s (training goes on): %s: %s",
                step,
                folder,
                type(error).__name__,
                str(error).splitlines()[0] if str(error) else "",
            )

    def _any_rank_failed(self, failed: bool) -> bool:
        _, world_size = _world()
        if world_size == 1:
            return failed
        flag = torch.tensor([float(failed)], device=self.trainer.args.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _results(self, shares: list[dict], all_texts: list[str]) -> list[dict]:
        """The results entries of the gathered shares (the same on every rank)."""
        world_size = len(shares)
        texts = torch.empty(len(all_texts), shares[0]["texts"].shape[1])
        for rank, share in enumerate(shares):
            texts[list(range(rank, len(all_texts), world_size))] = share["texts"]
        kept = [row for share in shares for row in share["kept"]]
        order = torch.tensor(kept).argsort()
        images = torch.cat([share["images"] for share in shares])[order]
        labels = torch.tensor([self.folder.labels[row] for row in sorted(kept)])
        unreadable = sum(len(share["unreadable"]) for share in shares)
        results, offset, templates = [], 0, len(self.options.templates)
        for language, names in self.names.items():
            count = len(names) * templates
            classes = class_embeddings(texts[offset : offset + count], len(names), templates)
            offset += count
            results.append(zero_shot_result("image_folder", language, images, labels, classes, templates, unreadable))
        return results
