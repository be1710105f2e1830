"""The commands' one-line error handling: which flags bring the traceback back."""

import pytest

from altclip.common.cli_errors import CommandLineError, run_with_one_line_errors, wants_traceback


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--max_steps", "2"], False),
        (["--show_traceback"], True),
        (["--show_traceback", "--max_steps", "2"], True),
        (["--show_traceback", "true"], True),
        (["--show_traceback=1"], True),
        (["--show_traceback", "false"], False),
        (["--show_traceback=no"], False),
        (["--shuffle", "false", "--show_traceback", "true"], True),  # another flag's false is not this one's
        (["--show_traceback", "true", "--show_traceback", "false"], False),  # the last one wins, as in argparse
    ],
)
def test_show_traceback_is_read_from_its_own_value(argv, expected):
    assert wants_traceback(argv) is expected


def test_a_translated_error_is_one_line_unless_the_traceback_is_asked_for(capsys):
    def fail():
        raise OSError("disk on fire")

    with pytest.raises(CommandLineError, match="^tool: disk on fire$"):
        run_with_one_line_errors("tool", fail, False, lambda error: f"tool: {error}")
    assert capsys.readouterr().err.strip() == "tool: disk on fire"
    with pytest.raises(OSError, match="disk on fire"):
        run_with_one_line_errors("tool", fail, True, lambda error: f"tool: {error}")
