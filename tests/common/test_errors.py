"""Package code raises exceptions (``altclip.common.errors``); only the command modules end the process."""

import ast
from pathlib import Path

import pytest

from altclip.common.errors import AltCLIPError, InputDataError, PathError, UsageError

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_FOLDERS = ("altclip", "modeling_altclip", "common", "training", "evaluation", "hub", "demo", "search")
PACKAGE_FOLDERS += ("reproduction",)
# The command-line layer itself: it turns exceptions into one line and exit status 2.
COMMAND_LINE_LAYER = {"common/cli_errors.py"}
# Console scripts that are not also `python -m` modules (setup.py's entry points).
CONSOLE_SCRIPT_MODULES = {"hub/cli.py", "search/cli.py", "demo/app.py"}
ENDING_CALLS = {"SystemExit", "fail", "CommandLineError", "exit", "_exit"}


def is_command_module(path: Path, tree: ast.Module) -> bool:
    """A module run as a program: a console script, or one with an ``if __name__ == "__main__":`` block."""
    if path.relative_to(ROOT).as_posix() in CONSOLE_SCRIPT_MODULES | COMMAND_LINE_LAYER:
        return True
    return any(
        isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) and "__name__" in ast.unparse(node.test)
        for node in tree.body
    )


def process_endings(tree: ast.Module) -> list[int]:
    """Lines that raise ``SystemExit`` (or ``fail(...)``'s `CommandLineError`) or call ``sys.exit``/``os._exit``."""
    lines = []
    for node in ast.walk(tree):
        target = node.exc if isinstance(node, ast.Raise) else node if isinstance(node, ast.Call) else None
        if isinstance(target, ast.Call):
            target = target.func
        if isinstance(node, ast.Call) and not (
            isinstance(target, ast.Attribute) and ast.unparse(target) in ("sys.exit", "os._exit")
        ):
            continue
        name = target.id if isinstance(target, ast.Name) else target.attr if isinstance(target, ast.Attribute) else ""
        if name in ENDING_CALLS:
            lines.append(node.lineno)
    return lines


def package_modules() -> list[Path]:
    return sorted(path for folder in PACKAGE_FOLDERS for path in (ROOT / folder).rglob("*.py"))


def test_no_process_ending_below_the_command_modules():
    found = {}
    command_modules = 0
    for path in package_modules():
        tree = ast.parse(path.read_text(), filename=str(path))
        if is_command_module(path, tree):
            command_modules += 1
            continue
        lines = process_endings(tree)
        if lines:
            found[path.relative_to(ROOT).as_posix()] = lines
    assert command_modules >= 8, "the command modules were not recognised"
    assert not found, f"SystemExit below the command modules (raise an altclip.common.errors exception): {found}"


def test_the_scan_sees_what_it_forbids():
    """The scan above would catch each way of ending the process (so its passing means something)."""
    source = (
        "import sys\ndef f():\n    raise SystemExit('x')\ndef g():\n    raise fail('y')\ndef h():\n    sys.exit(2)\n"
    )
    assert process_endings(ast.parse(source)) == [3, 5, 7]
    training_cli = ROOT / "training" / "cli.py"
    assert process_endings(ast.parse(training_cli.read_text()))  # its usage message ends with exit status 2


@pytest.mark.parametrize(
    "error, bases",
    [(UsageError, (ValueError,)), (InputDataError, (ValueError,)), (PathError, (OSError,))],
)
def test_errors_are_what_python_callers_already_catch(error, bases):
    assert issubclass(error, AltCLIPError) and issubclass(error, bases)
    assert str(error("one line")) == "one line"  # an OSError subclass keeps its message as given


def test_a_library_refusal_is_an_exception_to_catch_not_the_end_of_the_interpreter():
    from types import SimpleNamespace

    from altclip.training.finetune.lora import check_lora_arguments

    arguments = SimpleNamespace(lora_r=-1, merge_adapter=False)
    with pytest.raises(UsageError, match=r"^altclip-train: --lora_r must be 0 \(no adapter\) or positive, not -1\.$"):
        check_lora_arguments(arguments, "contrastive", None, None, None)
