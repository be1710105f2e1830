"""One way for the tests to run a command and to check its one-line errors.

A console entry point's ``main(argv)`` runs in this process (`run_main`, or the ``cli`` fixture of conftest.py,
which captures its output with ``capsys``); a command that needs a real process runs with `run_process`. Either
gives a `CommandResult` (exit status, stdout, stderr), and `assert_one_line_error` checks what every command-line
error of this package promises: exit status 2, the last line of stderr is the whole error (the exception's message
when it ran in this process), no traceback."""

import re
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass
class CommandResult:
    status: int | None  # the exit status: 0 when `main` returned, SystemExit's code otherwise
    stdout: str
    stderr: str
    error: SystemExit | None = None  # what ended an in-process run; None for a process or a normal return

    @property
    def lines(self) -> list[str]:
        """stderr's lines, blank ends dropped."""
        return self.stderr.strip().splitlines()

    @property
    def message(self) -> str:
        """The error: the exception's message in process, stderr's last line for a process."""
        if self.error is not None:
            return str(self.error)
        return self.lines[-1] if self.lines else ""


def run_main(main: Callable, argv: Iterable, capsys) -> CommandResult:
    """Runs ``main(argv)`` (every argument as a string) in this process, capturing its output with `capsys`."""
    return run_call(lambda: main([str(argument) for argument in argv]), capsys)


def run_call(run: Callable[[], object], capsys) -> CommandResult:
    """Runs `run()` (a command in another shape: ``main()`` reading ``sys.argv``, a stage runner) like `run_main`.
    Only ``SystemExit`` (the command's own ending) is caught; any other exception is the test's failure."""
    capsys.readouterr()  # what was printed before is not this command's
    try:
        returned = run()
    except SystemExit as error:
        out, err = capsys.readouterr()
        code = error.code
        if code is None or isinstance(code, int):
            return CommandResult(code or 0, out, err, error)
        # SystemExit("message"): the interpreter would print the message to stderr and exit with status 1
        return CommandResult(1, out, f"{err}{code}\n", error)
    out, err = capsys.readouterr()
    return CommandResult(returned if isinstance(returned, int) else 0, out, err)


def run_process(command: list, *, timeout: float = 600, **kwargs) -> CommandResult:
    """Runs `command` as a real process (``subprocess.run`` keywords: cwd, env, ...)."""
    done = subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=timeout, **kwargs)
    return CommandResult(done.returncode, done.stdout, done.stderr)


def assert_one_line_error(
    result: CommandResult,
    match: str | None = None,
    *,
    line: str | None = None,
    contains: Iterable[str] = (),
    status: int = 2,
    only_line: bool = False,
    kind: type[BaseException] = SystemExit,
) -> str:
    """Asserts that the command ended with `status` and the error is one line, no traceback: stderr's last line is
    the error (equal to the exception's message in process); with `only_line`, nothing else was printed to stderr.
    The line is searched for the regular expression `match`, equals `line`, and holds each of `contains`. Returns
    the line."""
    tail = result.stderr[-3000:]
    assert result.status == status, f"exit status {result.status}, expected {status}; stderr: {tail}"
    lines = result.lines
    assert lines, "nothing was printed to stderr"
    assert "Traceback" not in result.stderr, tail
    if only_line:
        assert len(lines) == 1, lines
    if result.error is not None:
        assert isinstance(result.error, kind), f"{type(result.error).__name__}, expected {kind.__name__}"
        assert lines[-1] == str(result.error), (lines[-1], str(result.error))
    last = lines[-1]
    if match is not None:
        assert re.search(match, last), f"{match!r} not found in {last!r}"
    if line is not None:
        assert last == line, last
    for text in contains:
        assert text in last, f"{text!r} not in {last!r}"
    return last


class CommandRunner:
    """The ``cli`` fixture: ``cli(main, *argv)`` runs an entry point in this process; ``cli.call(run)`` runs any
    callable; ``cli.refusal(main, *argv, **expected)`` runs it and applies `assert_one_line_error`."""

    def __init__(self, capsys):
        self.capsys = capsys

    def __call__(self, main: Callable, *argv) -> CommandResult:
        return run_main(main, argv, self.capsys)

    def call(self, run: Callable[[], object]) -> CommandResult:
        return run_call(run, self.capsys)

    def refusal(self, main: Callable, *argv, **expected) -> str:
        return assert_one_line_error(self(main, *argv), **expected)

    def call_refusal(self, run: Callable[[], object], **expected) -> str:
        return assert_one_line_error(self.call(run), **expected)
