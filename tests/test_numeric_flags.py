"""Every numeric flag of every console script (and of the reproduction's ``python -m`` programs) with a bad value of
each kind — negative, zero where meaningless, NaN, infinite, not a number — is refused in one line naming the flag,
exit status 2, before anything loads. The table is read from the parsers themselves: a numeric flag added without a
range (a bare ``type=int``/``float``, or a dataclass field missing from its range table) fails
`test_every_numeric_flag_has_a_range`."""

import argparse
import dataclasses
import typing
from collections.abc import Callable

import pytest
from transformers import TrainingArguments

from altclip.common.number_checks import NumberRange
from altclip.demo.app import main as demo_main
from altclip.evaluation.cli import NUMBER_RANGES as EVAL_RANGES
from altclip.evaluation.cli import EvalArguments
from altclip.evaluation.cli import main as eval_main
from altclip.evaluation.onnx_export import ExportArguments
from altclip.evaluation.onnx_export import main as export_main
from altclip.reproduction import finetune_demonstration, seed_spread, stage2_validation
from altclip.reproduction.run import main as reproduce_main
from altclip.search.cli import index_main, search_main
from altclip.training import arguments
from altclip.training.cli import main as train_main
from altclip.training.flag_ranges import FLAG_RANGES

EXPORT_RANGES = {"opset": NumberRange(low=1, whole=True), "tolerance": NumberRange(low=0, low_open=True)}
TRAIN_DATACLASSES = [
    arguments.ModelArguments,
    arguments.DataArguments,
    arguments.TeacherLearningArguments,
    arguments.ContrastiveArguments,
    arguments.ZeroShotArguments,
    arguments.OutputArguments,
    arguments.FineTuningArguments,
    TrainingArguments,
]

# program -> (its main, the arguments before the flag that reach the flag's check)
ARGPARSE_PROGRAMS: dict[str, tuple[Callable, list[str]]] = {
    "altclip-index build": (index_main, ["build"]),
    "altclip-index remove": (index_main, ["remove", "some-index"]),
    "altclip-search": (search_main, ["some-index", "a query"]),
    "altclip-demo": (demo_main, []),
    "altclip-reproduce": (reproduce_main, []),
    "stage2_validation": (stage2_validation.main, []),
    "seed_spread": (seed_spread.main, []),
    "finetune_demonstration": (finetune_demonstration.main, []),
}


class Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


def parser_of(main: Callable, monkeypatch) -> argparse.ArgumentParser:
    """The parser `main` builds, taken from its first parse (which is not run)."""

    def capture(self, args=None, namespace=None):
        raise Captured(self)

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", capture)
        with pytest.raises(Captured) as captured:
            main([])
    return captured.value.parser


def numeric_actions(parser: argparse.ArgumentParser, prefix: list[str]) -> dict[tuple[str, ...], argparse.Action]:
    """(subcommand..., --flag) -> action, for every flag parsed as a number (bare or through a range)."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(numeric_actions(sub, [*prefix, name]))
        elif action.type in (int, float) or hasattr(action.type, "number_range"):
            found[(*prefix, action.option_strings[0])] = action
    return found


def numeric_fields(dataclass) -> list[str]:
    hints = typing.get_type_hints(dataclass)
    numeric = []
    for field in dataclasses.fields(dataclass):
        kind = str(hints[field.name])
        if field.init and ("int" in kind or "float" in kind) and hints[field.name] is not bool:
            numeric.append(field.name)
    return numeric


def bad_values(allowed: NumberRange, whole: bool) -> list[tuple[str, str]]:
    """(kind, text) of the bad values of each kind that apply to a flag of `allowed`."""
    values = [("not a number", "abc"), ("NaN", "nan")]
    negative = -1 if allowed.problem(-1) else (allowed.low - 1 if allowed.low is not None else None)
    if negative is not None and allowed.problem(negative):
        values.append(("negative", str(int(negative)) if whole else str(float(negative))))
    if allowed.problem(0):
        values.append(("zero", "0"))
    if not whole:
        values.append(("infinite", "inf"))
    return values


def train_cases() -> list:
    cases = []
    for name, allowed in sorted(FLAG_RANGES.items()):
        stage = "teacher" if name in numeric_fields(arguments.TeacherLearningArguments) else "contrastive"
        hints = {}
        for dataclass in TRAIN_DATACLASSES:
            hints.update(typing.get_type_hints(dataclass))
        whole = "int" in str(hints[name]) and "float" not in str(hints[name])
        for kind, text in bad_values(allowed, whole):
            cases.append(pytest.param(stage, name, text, id=f"altclip-train {stage} --{name} {kind}"))
    return cases


@pytest.mark.parametrize(("stage", "flag", "text"), train_cases())
def test_altclip_train_refuses_a_bad_number_in_one_line(cli, tmp_path, monkeypatch, stage, flag, text):
    monkeypatch.chdir(tmp_path)
    line = cli.call_refusal(lambda: train_main([stage, "--output_dir", "out", f"--{flag}", text]), only_line=True)
    assert line.startswith("altclip-train") and f"--{flag}" in line, line
    assert not (tmp_path / "out").exists()


PLAN_AND_HF_CASES = [
    *[
        pytest.param(
            "altclip-train plan",
            lambda text: train_main(["plan", "--world_size", text]),
            "--world_size",
            text,
            id=f"altclip-train plan --world_size {text}",
        )
        for text in ("two", "0", "-1", "nan")
    ],
    *[
        pytest.param(
            "altclip-eval",
            lambda text, name=name: eval_main(
                ["zeroshot", "--model", "m", "--dataset", "image_folder", "--data_dir", "d", f"--{name}", text]
            ),
            f"--{name}",
            text,
            id=f"altclip-eval --{name} {kind}",
        )
        for name, allowed in sorted(EVAL_RANGES.items())
        for kind, text in bad_values(allowed, whole=True)
    ],
    *[
        pytest.param(
            "altclip-export-onnx",
            lambda text, name=name: export_main(["--model", "m", "--output_dir", "o", f"--{name}", text]),
            f"--{name}",
            text,
            id=f"altclip-export-onnx --{name} {kind}",
        )
        for name, allowed in sorted(EXPORT_RANGES.items())
        for kind, text in bad_values(allowed, whole=name == "opset")
    ],
]


@pytest.mark.parametrize(("program", "run", "flag", "text"), PLAN_AND_HF_CASES)
def test_plan_eval_and_export_refuse_a_bad_number_in_one_line(cli, tmp_path, monkeypatch, program, run, flag, text):
    monkeypatch.chdir(tmp_path)
    line = cli.call_refusal(lambda: run(text), only_line=True)
    assert line.startswith(program) and flag in line, line


def argparse_cases() -> list:
    cases = []
    with pytest.MonkeyPatch.context() as monkeypatch:
        for program, (main, before) in ARGPARSE_PROGRAMS.items():
            actions = numeric_actions(parser_of(main, monkeypatch), [])
            subcommand = before[:1] if program.startswith("altclip-index") else []
            for key, action in actions.items():
                if list(key[:-1]) != subcommand:
                    continue
                allowed = getattr(action.type, "number_range", NumberRange())
                for kind, text in bad_values(allowed, whole=allowed.whole):
                    cases.append(pytest.param(program, key[-1], text, id=f"{program} {key[-1]} {kind}"))
    return cases


@pytest.mark.parametrize(("program", "flag", "text"), argparse_cases())
def test_argparse_programs_refuse_a_bad_number_in_one_line(cli, tmp_path, monkeypatch, program, flag, text):
    monkeypatch.chdir(tmp_path)
    main, before = ARGPARSE_PROGRAMS[program]
    line = cli.call_refusal(lambda: main([*before, flag, text]), only_line=True)
    assert f"argument {flag}" in line and "--help" in line, line
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_every_numeric_flag_has_a_range(monkeypatch):
    """A numeric flag without a range (bare int/float) would take NaN, negative or zero values silently."""
    train_numeric = {name for dataclass in TRAIN_DATACLASSES for name in numeric_fields(dataclass)}
    assert train_numeric == set(FLAG_RANGES), train_numeric ^ set(FLAG_RANGES)
    assert set(numeric_fields(EvalArguments)) == set(EVAL_RANGES)
    assert set(numeric_fields(ExportArguments)) == set(EXPORT_RANGES)
    bare = []
    for program, (main, _) in ARGPARSE_PROGRAMS.items():
        for key, action in numeric_actions(parser_of(main, monkeypatch), []).items():
            if not hasattr(action.type, "number_range"):
                bare.append((program, key))
    assert not bare, f"numeric flags without a range: {bare}"
    assert len(argparse_cases()) >= 60  # the table really covers the argparse programs' flags


def test_good_numbers_pass_the_checks(cli, tmp_path, monkeypatch):
    """The ranges refuse only what is meaningless: in-range values (and -1 for --max_steps) get past the number checks
    to the next one (no --train_files)."""
    monkeypatch.chdir(tmp_path)
    flags = ["--seed", "0", "--max_steps", "-1", "--learning_rate", "1e-4", "--warmup_steps", "0.1"]
    flags += ["--max_grad_norm", "0", "--lora_dropout", "0", "--wise_ft_alpha", "1", "--dataloader_num_workers", "0"]
    line = cli.call_refusal(lambda: train_main(["contrastive", "--output_dir", "out", *flags]), only_line=True)
    assert "give --train_files" in line, line
