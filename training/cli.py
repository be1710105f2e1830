"""``altclip-train teacher|contrastive|plan|toy-setup``: parses the flags, calls the stage (`stages.run_stage`) or
the plan (`plan_command`), and reports user errors in one line.

Flags are those of the argument dataclasses (`arguments`) plus every `TrainingArguments` flag; ``--config
FILE.yaml|json`` supplies them from a file (flags given after it win). Runs alike under ``python``, ``torchrun`` and
``accelerate launch``.
"""

import sys
from collections.abc import Sequence

from altclip.common.cli_errors import run_with_one_line_errors, wants_traceback
from altclip.common.processes import processes_released_when_done

from .arguments import STAGES, RunArguments
from .loop.output_folder import disk_full_message, is_disk_full
from .loop.preemption import PREEMPTED_EXIT_STATUS, TrainingPreempted
from .stages import train

USAGE = """usage: altclip-train {teacher,contrastive} [--config FILE] [--FLAG VALUE ...]
       altclip-train toy-setup [FOLDER]
       altclip-train plan [--stage STAGE] --config FILE [--FLAG VALUE ...]
                          [--world_size N | --nnodes N --nproc_per_node M]
       altclip-train add-language --model_name_or_path M --language CODE --known_languages en,de,...
                                  --zeroshot_data_dir FOLDER [--max_drop POINTS] [teacher flags ...]

  teacher      stage 1: the XLM-R text tower learns CLIP's text features from parallel text
  contrastive  stage 2: image-caption pairs, symmetric InfoNCE, image tower frozen by default
  plan         the run's plan without training: sources, samples, steps, batch sizes, memory, disk
  add-language stage 1 with LoRA + new token embeddings from parallel text, every known language scored
               before and after and guarded (docs/finetuning.md)
  toy-setup    write tiny random CLIP and XLM-R checkpoints and a multilingual shapes dataset
               (default folder outputs/toy) for a CPU run that needs no download

'altclip-train STAGE --help' lists every flag."""


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "toy-setup":
        from .toy_setup import toy_setup_main

        run_with_one_line_errors("altclip-train", lambda: toy_setup_main(argv[1:]), wants_traceback(argv))
        return
    if argv and argv[0] == "plan":
        from .plan_command import plan_main

        run_with_one_line_errors("altclip-train", lambda: plan_main(argv[1:]), wants_traceback(argv))
        return
    if argv and argv[0] == "add-language":
        from .add_language import PROGRAM, add_language

        with processes_released_when_done():
            run_with_one_line_errors(PROGRAM, lambda: add_language(argv[1:]), wants_traceback(argv))
        return
    if not argv or argv[0] not in STAGES:
        print(USAGE, file=sys.stderr)
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    parsed: dict[str, RunArguments] = {}

    def environment_error(error: BaseException) -> str | None:
        """A full disk, or a file or download that failed (OSError), in one line; anything else is a bug."""
        if is_disk_full(error):
            return disk_full_message(parsed["run"].training.output_dir if parsed else ".")
        if isinstance(error, OSError):
            return f"altclip-train: {str(error).strip().splitlines()[0]}"
        return None

    # under torchrun: ranks other than 0 return while rank 0 still writes the model
    with processes_released_when_done(clean_exit_statuses=(PREEMPTED_EXIT_STATUS,)):
        try:
            run_with_one_line_errors(
                "altclip-train", lambda: train(argv[0], argv[1:], parsed), wants_traceback(argv), environment_error
            )
        except TrainingPreempted as stopped:  # not a failure: the job script requeues on this status
            print(f"altclip-train: {stopped}", file=sys.stderr)
            raise SystemExit(PREEMPTED_EXIT_STATUS) from None


if __name__ == "__main__":
    main()
