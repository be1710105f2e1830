"""The package's exceptions for problems a user can fix (a bad flag, value, file or folder).

Package code raises these; only the command-line entry points turn them into one line on stderr and exit status 2
(``common.cli_errors.run_with_one_line_errors``). Each is also a ``ValueError`` or ``OSError``, as transformers, peft
and open_clip raise for the same kinds of problem, so Python callers can catch what they already expect."""


class AltCLIPError(Exception):
    """A problem the user can fix; its message is one line naming the flag, file or value and the fix."""


class UsageError(AltCLIPError, ValueError):
    """A flag, argument or value that cannot be used (out of range, conflicting with another, not a number)."""


class InputDataError(AltCLIPError, ValueError):
    """A file or record whose contents cannot be used (malformed, empty, wrong encoding, non-finite numbers)."""


class PathError(AltCLIPError, OSError):
    """A file or folder that is missing, not writable, occupied, or not what was expected there."""
