"""``altclip-train add-language``: teach an existing AltCLIP a new language from parallel text, guarding the others.

Stage 1 (teacher learning) on English <-> new-language pairs, with LoRA on the text tower and the new tokens'
embeddings trainable (``--lora_trainable_tokens auto``), the teacher being the model's own English features
(``--teacher self``): the output is an adapter folder, which ``altclip-eval``,
``altclip-demo``, ``altclip-index``/``altclip-search`` and ``altclip-push`` take as a model. Every language the model
knew (``--known_languages``) and the new one are scored on ``--zeroshot_data_dir`` before the first step and at the
end (``--before_after``); ``add_language.md``/``.json`` hold the table, and a known language whose top-1 drops by
more than ``--max_drop`` points ends the command with a one-line error (the adapter is kept for inspection).
"""

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from accelerate import PartialState

from altclip.common.errors import AltCLIPError, UsageError
from altclip.common.files import replace_atomically

from .finetune.lora import flags_given
from .loop.reporting import SUMMARY_FILE

logger = logging.getLogger(__name__)

PROGRAM = "altclip-train add-language"
REPORT_STEM = "add_language"
# Settings unless the command line says otherwise: LoRA on the text tower's attention and MLP layers, rank 16, and
# the embeddings of the tokens in the parallel text (the new language's words); the teacher is the model's own
# English (a frozen copy of its text tower), so the language is learned in the space stage 2 left, not CLIP's.
DEFAULT_ADAPTER = {"--lora_r": "16", "--lora_alpha": "32", "--lora_targets": "text", "--teacher": "self"}


class LanguageDropped(AltCLIPError):
    """A language the model knew lost more top-1 than --max_drop allows; the adapter and its report are kept."""


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """This command's own flags; every other flag goes to ``altclip-train teacher``."""
    parser = argparse.ArgumentParser(prog=PROGRAM, add_help=True)
    parser.add_argument("--language", required=True, help="code of the language added (as in the class names)")
    parser.add_argument(
        "--known_languages", required=True, help="comma-separated languages the model knew: scored and guarded"
    )
    parser.add_argument("--zeroshot_data_dir", required=True, help="image folder with names in every language")
    parser.add_argument("--max_drop", type=float, default=2.0, help="points of top-1 a known language may lose")
    from altclip.common.cli_errors import one_line_parser_errors

    one_line_parser_errors(parser, PROGRAM)
    args, rest = parser.parse_known_args(list(argv))
    known = [code.strip() for code in args.known_languages.split(",") if code.strip()]
    if not known:
        raise UsageError(f"{PROGRAM}: --known_languages is empty; list the languages the model knew (e.g. en,de).")
    if args.language in known:
        raise UsageError(f"{PROGRAM}: --language {args.language} is in --known_languages; it is already known.")
    if args.max_drop < 0:
        raise UsageError(f"{PROGRAM}: --max_drop must be 0 or more points, not {args.max_drop}.")
    given = flags_given(rest)
    for flag in ("--zeroshot_languages", "--before_after", "--zeroshot_dataset"):
        if flag in given:
            raise UsageError(
                f"{PROGRAM}: {flag} is set by add-language (scoring every known language and the new one)."
            )
    if "--model_name_or_path" not in given:
        raise UsageError(f"{PROGRAM}: give --model_name_or_path, the AltCLIP that learns the language.")
    args.known = known
    return args, rest


def teacher_argv(args: argparse.Namespace, rest: list[str]) -> list[str]:
    """The ``altclip-train teacher`` flags of this run: LoRA defaults unless given, before/after scoring of every
    language."""
    given = flags_given(rest)
    adapter = [item for flag, value in DEFAULT_ADAPTER.items() if flag not in given for item in (flag, value)]
    scored = ",".join([*args.known, args.language])
    return [
        *adapter,
        *rest,
        "--zeroshot_data_dir", args.zeroshot_data_dir, "--zeroshot_languages", scored, "--before_after", "true",
    ]  # fmt: skip


def language_table(summary: dict, known: list[str], language: str, max_drop: float) -> dict:
    """Top-1 before and after per language, from the run's before/after scores; which known languages dropped."""
    scores = summary.get("before_after") or {}
    before, after = scores.get("before") or {}, scores.get("after") or {}
    rows = []
    for code in [language, *known]:
        key = f"zeroshot/image_folder/{code}/top1"
        if key in before and key in after:
            change = round(after[key] - before[key], 2)
            rows.append({"language": code, "before": before[key], "after": after[key], "change": change})
    dropped = [row for row in rows if row["language"] != language and -row["change"] > max_drop]
    return {"language": language, "max_drop": max_drop, "rows": rows, "dropped": [r["language"] for r in dropped]}


def markdown(table: dict) -> str:
    lines = ["| language | top-1 before | top-1 after | change |", "|---|---:|---:|---:|"]
    for row in table["rows"]:
        name = f"**{row['language']}** (added)" if row["language"] == table["language"] else row["language"]
        mark = " ⚠" if row["language"] in table["dropped"] else ""
        lines.append(f"| {name} | {row['before']:.1f} | {row['after']:.1f} | {row['change']:+.1f}{mark} |")
    lines.append("")
    lines.append(
        f"Guard: a known language may lose at most {table['max_drop']:g} points of top-1; "
        + (f"dropped beyond it: {', '.join(table['dropped'])}." if table["dropped"] else "none did.")
    )
    return "\n".join(lines) + "\n"


def add_language(argv: Sequence[str], raise_on_drop: bool = True) -> dict:
    """Runs stage 1 with the adapter, writes ``add_language.json``/``.md`` beside it and returns the table; raises
    `LanguageDropped` (after writing) when a known language dropped beyond --max_drop and `raise_on_drop`."""
    from .stages import train

    args, rest = parse(argv)
    if not Path(args.zeroshot_data_dir).is_dir():
        raise UsageError(f"{PROGRAM}: --zeroshot_data_dir {args.zeroshot_data_dir}: no such folder.")
    train("teacher", teacher_argv(args, rest))
    output_dir = Path(rest[rest.index("--output_dir") + 1]) if "--output_dir" in rest else Path("trainer_output")
    # every rank reads the summary the main process writes at the end of training: wait until it is written
    state = PartialState()
    state.wait_for_everyone()
    summary = json.loads((output_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
    table = language_table(summary, args.known, args.language, args.max_drop)
    if state.is_main_process:
        replace_atomically(
            output_dir / f"{REPORT_STEM}.json",
            lambda path: path.write_text(json.dumps(table, indent=2, ensure_ascii=False), encoding="utf-8"),
        )
        replace_atomically(
            output_dir / f"{REPORT_STEM}.md", lambda path: path.write_text(markdown(table), encoding="utf-8")
        )
        logger.info("Languages before and after:\n%s", markdown(table))
    if table["dropped"] and raise_on_drop:
        worst = ", ".join(
            f"{row['language']} {row['change']:+.1f}" for row in table["rows"] if row["language"] in table["dropped"]
        )
        raise LanguageDropped(
            f"{PROGRAM}: top-1 dropped beyond --max_drop {args.max_drop:g} points for {worst}; the adapter is kept in "
            f"{output_dir} ({REPORT_STEM}.md). Try a lower --learning_rate or fewer steps, or raise --max_drop to "
            "accept it."
        )
    return table
