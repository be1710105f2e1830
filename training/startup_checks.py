"""Checks before the first step that what the run needs later exists: no run may fail at its first evaluation (or
end discarding its work) for want of something the flags already show is missing."""

from transformers import TrainingArguments

from altclip.common.errors import UsageError


def check_evaluation_data(training_args: TrainingArguments, has_validation: bool) -> None:
    """``--eval_strategy`` (and what needs it: ``--load_best_model_at_end``) scores ``--validation_files``; without
    them the Trainer refuses only after the models loaded (a traceback), so they are asked for here."""
    strategy = getattr(training_args.eval_strategy, "value", training_args.eval_strategy)
    if strategy not in (None, "no") and not has_validation:
        raise UsageError(
            f"--eval_strategy {strategy} scores the held-out set, but no --validation_files were given; give them "
            "(tables with the stage's columns) or drop --eval_strategy."
        )
