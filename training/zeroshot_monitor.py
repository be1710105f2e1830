"""Zero-shot scores while training (open_clip's ``--zeroshot-frequency``).

Every ``--zeroshot_steps`` optimizer steps the complete model is written to ``OUTPUT_DIR/zeroshot/model`` and
scored by ``altclip-eval zeroshot`` in a separate process: the same loaders, prompts and metrics as a user's own
evaluation, without the training job importing the evaluation job. The numbers are logged with the losses
(``zeroshot/DATASET/LANGUAGE/top1`` ...: TensorBoard, W&B and trainer_state.json through ``report_to``); each
scoring keeps its results (JSON, table, chart) in ``OUTPUT_DIR/zeroshot/step-N``. A scoring that fails is
reported in one line and training goes on.
"""

import json
import logging
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from transformers import TrainerCallback

from altclip.common.constants import RESULTS_FILE  # altclip-eval's results format

from .arguments import ZeroShotArguments
from .saving import save_complete_model

logger = logging.getLogger(__name__)

ZEROSHOT_FOLDER = "zeroshot"


def check_zeroshot_arguments(args: ZeroShotArguments) -> None:
    """One-line refusals before any model loads."""
    if args.zeroshot_steps < 0:
        raise SystemExit(f"altclip-train: --zeroshot_steps must be 0 (off) or positive, not {args.zeroshot_steps}.")
    if args.zeroshot_steps and not (args.zeroshot_data_dir and Path(args.zeroshot_data_dir).is_dir()):
        raise SystemExit(
            f"altclip-train: --zeroshot_steps needs --zeroshot_data_dir, a folder with the {args.zeroshot_dataset} "
            f"data; got {args.zeroshot_data_dir!r}."
        )


class ZeroShotMonitor(TrainerCallback):
    """Scores the model being trained every ``zeroshot_steps`` steps; needs its trainer (`attach`)."""

    def __init__(self, args: ZeroShotArguments, model, processor):
        self.args, self.model, self.processor = args, model, processor
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

    def command(self, model_dir: Path, output_dir: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "altclip.evaluation.cli",
            "zeroshot",
            "--model",
            str(model_dir),
            "--dataset",
            self.args.zeroshot_dataset,
            "--data_dir",
            self.args.zeroshot_data_dir,
            "--languages",
            self.args.zeroshot_languages,
            "--output_dir",
            str(output_dir),
            "--cache_dir",
            "",  # the model changes between scorings: its class embeddings are not worth keeping
            "--device",
            str(self.trainer.args.device),
            *shlex.split(self.args.zeroshot_eval_flags),
        ]

    def score(self, step: int, name: str | None = None) -> dict[str, float] | None:
        """Scores the model as it is now, logs and returns the scores (rank 0; None elsewhere or on failure);
        `name` (default step-N) names the results folder."""
        folder = Path(self.trainer.args.output_dir) / ZEROSHOT_FOLDER
        model_dir, output_dir = folder / "model", folder / (name or f"step-{step}")
        if not save_complete_model(self.trainer, self.model, self.processor, model_dir):
            return None  # ranks other than 0 only took part in gathering the weights
        result = subprocess.run(self.command(model_dir, output_dir), capture_output=True, text=True)
        shutil.rmtree(model_dir, ignore_errors=True)
        if result.returncode != 0:
            last_line = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-1]
            logger.warning("Zero-shot scoring at step %d failed (training goes on): %s", step, last_line)
            return None
        scores = {}
        for entry in json.loads((output_dir / RESULTS_FILE).read_text(encoding="utf-8"))["results"]:
            for metric, value in entry["metrics"].items():
                scores[f"zeroshot/{entry['dataset']}/{entry['language']}/{metric}"] = value
        logger.info("Zero-shot at step %d: %s", step, scores)
        self.trainer.log(dict(scores))  # a copy: the Trainer adds its own fields to what it logs
        return scores
