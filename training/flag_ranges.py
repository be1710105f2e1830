"""What every numeric flag of ``altclip-train`` may be (ours and `TrainingArguments`'), checked right after parsing.

HfArgumentParser builds each flag's ``type`` from the field's annotation, so a range cannot ride on the field; this
table holds them instead, one entry per numeric field (tests/training/test_flag_ranges.py fails on a numeric field
that has none). NaN and infinite values are refused everywhere: a NaN learning rate or batch count otherwise runs.
"""

from collections.abc import Iterable

from altclip.common.errors import UsageError
from altclip.common.number_checks import (
    COUNT,
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    SEED_RANGE,
    WHOLE_NON_NEGATIVE,
    NumberRange,
    check_fields,
)

BELOW_ONE = NumberRange(low=0, high=1, high_open=True)

FLAG_RANGES: dict[str, NumberRange] = {
    # DataArguments
    "train_file_weights": NON_NEGATIVE,  # 0 leaves a source out; not all 0 (checked with the sources)
    "shuffle_buffer": COUNT,
    "table_build_processes": COUNT,
    "max_text_length": COUNT,  # the upper bound is the text tower's positions (cli.check_numbers)
    "train_num_samples": COUNT,
    "language_sampling_alpha": FRACTION,  # 1: the natural mix, 0: every language alike
    # TeacherLearningArguments / ContrastiveArguments
    "teacher_cache_shard_rows": COUNT,
    "max_logit_scale": POSITIVE,
    "anchor_weight": NON_NEGATIVE,  # 0 with --anchor_texts is refused (text_anchors.check_anchor_arguments)
    "anchor_batch_size": COUNT,
    # ZeroShotArguments
    "zeroshot_steps": WHOLE_NON_NEGATIVE,  # 0: off
    # FineTuningArguments (0 for --lora_r: no adapter)
    "lora_r": WHOLE_NON_NEGATIVE,
    "lora_alpha": NON_NEGATIVE,
    "lora_dropout": BELOW_ONE,
    "wise_ft_alpha": FRACTION,
    # TrainingArguments
    "per_device_train_batch_size": COUNT,
    "per_device_eval_batch_size": COUNT,
    "gradient_accumulation_steps": COUNT,
    "eval_accumulation_steps": COUNT,
    "num_train_epochs": NON_NEGATIVE,  # 0 only with --max_steps (checked below)
    "max_steps": NumberRange(low=1, whole=True, also=(-1,)),  # -1: by epochs
    "learning_rate": POSITIVE,
    "warmup_steps": NON_NEGATIVE,  # below 1: a fraction of the steps
    "weight_decay": NON_NEGATIVE,
    "adam_beta1": BELOW_ONE,
    "adam_beta2": BELOW_ONE,
    "adam_epsilon": POSITIVE,
    "max_grad_norm": NON_NEGATIVE,  # 0: no clipping
    "label_smoothing_factor": BELOW_ONE,
    "neftune_noise_alpha": POSITIVE,
    "torch_empty_cache_steps": COUNT,
    "logging_steps": POSITIVE,  # below 1: a fraction of the steps
    "eval_steps": POSITIVE,
    "eval_delay": NON_NEGATIVE,
    "save_steps": POSITIVE,
    "save_total_limit": COUNT,  # transformers reads 0 as "keep all", the opposite of what it says
    "seed": SEED_RANGE,
    "data_seed": SEED_RANGE,
    "dataloader_num_workers": WHOLE_NON_NEGATIVE,
    "dataloader_prefetch_factor": COUNT,
    "ddp_bucket_cap_mb": COUNT,
    "ddp_timeout": COUNT,
    "local_rank": NumberRange(low=-1, whole=True),  # -1: not launched by torchrun
}


def check_flag_ranges(parsed: Iterable[object]) -> None:
    """Every numeric flag of the parsed dataclasses within its range (`UsageError` naming the flag otherwise)."""
    parsed = list(parsed)
    check_fields(parsed, FLAG_RANGES)
    for arguments in parsed:
        if getattr(arguments, "num_train_epochs", None) == 0 and getattr(arguments, "max_steps", None) == -1:
            raise UsageError(
                "--num_train_epochs 0 without --max_steps trains nothing; give a number of epochs above 0 or "
                "--max_steps N."
            )
