"""The suite's shared fixtures do what the tests rely on: the command runner (cli_runs.py, the ``cli`` fixture) and
its one-line check fail where they should (a check that cannot fail would let every one-line-error test pass
whatever the command printed), and the static HTTP server serves a folder on 127.0.0.1 only while it is shared."""

import sys
import urllib.error
import urllib.request

import pytest
from cli_runs import CommandResult, assert_one_line_error, run_process

from altclip.common.cli_errors import CommandLineError, fail


def refuses(message: str):
    def main(argv):
        raise fail(message)

    return main


def test_a_one_line_refusal_passes_and_is_returned(cli):
    result = cli(refuses("tool: --x 3 is too large"), "--x", 3)
    assert (result.status, result.stdout, result.message) == (2, "", "tool: --x 3 is too large")
    assert isinstance(result.error, CommandLineError)
    line = assert_one_line_error(result, r"--x \d is", line="tool: --x 3 is too large", contains=["too large"])
    assert line == "tool: --x 3 is too large"
    assert cli.refusal(refuses("tool: no"), only_line=True, kind=CommandLineError) == "tool: no"


def test_arguments_reach_main_as_strings(cli, tmp_path):
    seen = []
    result = cli(lambda argv: seen.append(argv), "--path", tmp_path, "--n", 2)
    assert seen == [["--path", str(tmp_path), "--n", "2"]] and result.status == 0 and result.error is None


def test_output_printed_before_the_command_is_not_its_output(cli):
    print("earlier", file=sys.stderr)
    assert cli.refusal(refuses("tool: no"), only_line=True) == "tool: no"


def traceback_then_line(argv):
    print("Traceback (most recent call last):\n  File 'x', line 1", file=sys.stderr)
    raise fail("tool: no")


def a_second_line(argv):
    print("a warning", file=sys.stderr)
    raise fail("tool: no")


def silent_exit(argv):
    raise SystemExit(2)  # argparse's own ending: its usage would be the message, not one line


def two_line_message(argv):
    raise fail("tool: no\nsecond line")


def success(argv):
    print("done")


@pytest.mark.parametrize(
    "main, expected, error",
    [
        (traceback_then_line, {}, "Traceback"),
        (a_second_line, {"only_line": True}, "a warning"),
        (silent_exit, {}, "nothing was printed"),
        (two_line_message, {}, "second line"),
        (success, {}, "exit status 0"),
        (refuses("tool: no"), {"match": "yes"}, "'yes' not found"),
        (refuses("tool: no"), {"line": "tool: yes"}, "tool: no"),
        (refuses("tool: no"), {"contains": ["yes"]}, "'yes' not in"),
        (refuses("tool: no"), {"status": 1}, "expected 1"),
        (refuses("tool: no"), {"kind": KeyboardInterrupt}, "expected KeyboardInterrupt"),
    ],
    ids=lambda value: getattr(value, "__name__", None) if callable(value) else None,
)
def test_what_is_not_a_one_line_error_fails_the_check(cli, main, expected, error):
    with pytest.raises(AssertionError, match=error):
        cli.refusal(main, **expected)


def test_a_system_exit_with_a_message_is_what_the_interpreter_would_print(cli):
    def main(argv):
        raise SystemExit("tool: bye")

    result = cli(main)
    assert (result.status, result.stderr, result.message) == (1, "tool: bye\n", "tool: bye")


def test_a_real_process_is_checked_from_its_stderr():
    code = "import sys; print('tool: broken', file=sys.stderr); sys.exit(2)"
    assert assert_one_line_error(run_process([sys.executable, "-c", code])) == "tool: broken"
    crash = run_process([sys.executable, "-c", "raise ValueError('tool: broken')"])
    assert crash.status == 1 and crash.message == "ValueError: tool: broken"
    with pytest.raises(AssertionError, match="exit status 1"):
        assert_one_line_error(crash)
    with pytest.raises(AssertionError, match="Traceback"):
        assert_one_line_error(CommandResult(2, "", crash.stderr))


def test_the_file_server_serves_a_folder_on_127_0_0_1_while_it_is_shared(file_server, tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("hello")
    assert file_server.server.server_address[0] == "127.0.0.1"
    with file_server.serving(tmp_path) as base:
        assert base.startswith("http://127.0.0.1:") and not base.endswith("/")
        with urllib.request.urlopen(f"{base}/sub/a.txt", timeout=10) as response:
            assert response.read() == b"hello"
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"{base}/sub/none.txt", timeout=10)
    with pytest.raises(urllib.error.HTTPError, match="404"):  # no longer shared
        urllib.request.urlopen(f"{base}/sub/a.txt", timeout=10)


def test_served_folder_is_an_empty_folder_and_its_url(served_folder):
    folder, base = served_folder
    assert not list(folder.iterdir())
    (folder / "b.bin").write_bytes(b"\x00\x01")
    with urllib.request.urlopen(f"{base}/b.bin", timeout=10) as response:
        assert response.read() == b"\x00\x01"
