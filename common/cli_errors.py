"""User errors of the command-line tools: one line that names the problem and what to do, exit status 2, no
traceback (``--show_traceback`` brings it back)."""

import argparse
import sys
from collections.abc import Callable

from altclip.common.errors import AltCLIPError
from altclip.common.number_checks import NumberRange


class CommandLineError(SystemExit):
    """Exit status 2 carrying its one-line message (already printed to stderr)."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def fail(message: str) -> CommandLineError:
    """Prints `message` to stderr and returns the exception to raise."""
    print(message, file=sys.stderr)
    return CommandLineError(message)


TRUE_WORDS = ("yes", "true", "t", "y", "1")  # what HfArgumentParser reads as true for a boolean flag


def wants_traceback(argv: list[str]) -> bool:
    """Whether ``--show_traceback`` is on in `argv` (bare, with a value, or ``=value``; the last one wins), read
    before the flags are parsed, since the parse itself may be what fails."""
    on = False
    for index, flag in enumerate(argv):
        if flag.startswith("--show_traceback="):
            on = flag.split("=", 1)[1].lower() in TRUE_WORDS
        elif flag == "--show_traceback":
            value = argv[index + 1] if index + 1 < len(argv) else ""
            on = value.lower() in TRUE_WORDS if value and not value.startswith("-") else True
    return on


def int_in_range(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse `type` for a whole number in [low, high] (no upper bound without `high`), so that a bad value is
    argparse's one-line error, not a traceback from deep in the run (a negative seed reaches numpy's seeding)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            bounds = f"{low}..{high}" if high is not None else f"{low} or more"
            raise argparse.ArgumentTypeError(f"{value} is out of range ({bounds})")
        return value

    parse.number_range = NumberRange(low=low, high=high, whole=True)  # what the flag table test reads
    return parse


SEED = int_in_range(0, 2**32 - 2)  # numpy takes 0..2**32-1; the reproduction also seeds with seed + 1


def one_line_parser_errors(parser: argparse.ArgumentParser, program: str) -> None:
    """argparse's own errors (an unknown value, a bad number) as one line instead of the whole usage."""

    def error(message: str):
        raise fail(f"{program}: {message}. '{program} --help' lists every flag.")

    parser.error = error


def run_with_one_line_errors(
    program: str,
    run: Callable[[], None],
    show_traceback: bool = False,
    translate: Callable[[BaseException], str | None] | None = None,
) -> None:
    """Runs `run`; an ``AltCLIPError`` (the package's user errors), a ``SystemExit("message")`` and any exception
    `translate` turns into a message end the program in one line with status 2. Anything else keeps its traceback: it
    is a bug, not a user error."""
    try:
        run()
    except CommandLineError:
        raise
    except AltCLIPError as error:
        if show_traceback:
            raise
        message = str(error)
        raise fail(message if message.startswith(program) else f"{program}: {message}") from None
    except SystemExit as error:
        if not isinstance(error.code, str):
            raise
        raise fail(error.code if error.code.startswith(program) else f"{program}: {error.code}") from None
    except Exception as error:
        message = translate(error) if translate is not None else None
        if message is None or show_traceback:
            raise
        raise fail(message) from None
