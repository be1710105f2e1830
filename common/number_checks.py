"""Numbers checked where they enter: a flag's value or a number read from a file, against its range.

One `NumberRange` per flag or field says what is meaningful (whole or not, bounds, open or closed); a value out of
it, NaN, infinite or not a number is one line naming the flag or file, the value and what to give instead.
argparse-based commands use `number_type` as the flag's ``type=``; HfArgumentParser-based ones (whose dataclass
metadata cannot carry a ``type``) check the parsed dataclasses with `check_fields` right after parsing.
"""

import argparse
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from altclip.common.errors import InputDataError, UsageError


@dataclass(frozen=True)
class NumberRange:
    """What a number may be: `whole` or any finite float, within [low, high] (open ends where `*_open`).
    `also` lists special values allowed outside the range (``-1`` for transformers' "no limit")."""

    low: float | None = None
    high: float | None = None
    whole: bool = False
    low_open: bool = False
    high_open: bool = False
    also: tuple[float, ...] = ()

    def describe(self) -> str:
        """The range in words: "a whole number of at least 1", "a number in [0, 1)"."""
        kind = "a whole number" if self.whole else "a number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            bounds = f" in {left}{_number(self.low)}, {_number(self.high)}{right}"
        elif self.low is not None:
            bounds = f" {'above' if self.low_open else 'of at least'} {_number(self.low)}"
        elif self.high is not None:
            bounds = f" {'below' if self.high_open else 'of at most'} {_number(self.high)}"
        else:
            bounds = " (finite)"
        special = f", or {' or '.join(_number(value) for value in self.also)}" if self.also else ""
        return kind + bounds + special

    def problem(self, value: object) -> str | None:
        """Why `value` is not in the range (None where it is)."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "not a number"
        if math.isnan(value):
            return "not a number (NaN)"
        if math.isinf(value):
            return "infinite"
        if value in self.also:
            return None
        if self.whole and value != int(value):
            return "not a whole number"
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return "too small"
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return "too large"
        return None


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def at_least(low: float, whole: bool = True) -> NumberRange:
    return NumberRange(low=low, whole=whole)


POSITIVE = NumberRange(low=0, low_open=True)  # a finite number above 0
NON_NEGATIVE = NumberRange(low=0)
FRACTION = NumberRange(low=0, high=1)
COUNT = at_least(1)  # a whole number of things that must exist: batch sizes, steps, workers that must be there
WHOLE_NON_NEGATIVE = at_least(0)
SEED_RANGE = NumberRange(low=0, high=2**32 - 1, whole=True)  # numpy's seeding takes 0..2**32-1


def number_type(allowed: NumberRange, whole: bool | None = None) -> Callable[[str], int | float]:
    """An argparse ``type=`` reading a number of `allowed`; a bad one is argparse's one-line error."""
    integral = allowed.whole if whole is None else whole

    def parse(text: str) -> int | float:
        try:
            value: int | float = int(text) if integral else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'a whole number' if integral else 'a number'}; give {allowed.describe()}"
            ) from None
        problem = allowed.problem(value)
        if problem:
            raise argparse.ArgumentTypeError(f"{text} is {problem}; give {allowed.describe()}")
        return value

    parse.number_range = allowed  # what tests and help read
    return parse


def check_number(where: str, value: object, allowed: NumberRange, error: type[Exception] = UsageError) -> None:
    """Raises `error` naming `where` (a flag, or a file and entry) when `value` is outside `allowed`."""
    problem = allowed.problem(value)
    if problem:
        raise error(f"{where} {value!r} is {problem}; give {allowed.describe()}.")


def check_fields(instances: Iterable[object], ranges: Mapping[str, NumberRange]) -> None:
    """Checks every field of the parsed dataclasses named in `ranges` (None: not given; lists: each value)."""
    for instance in instances:
        for name, allowed in ranges.items():
            if not hasattr(instance, name):
                continue
            value = getattr(instance, name)
            for item in value if isinstance(value, (list, tuple)) else [value]:
                if item is not None:
                    check_number(f"--{name}", item, allowed)


def count_in_file(where: str, value: object, allowed: NumberRange = WHOLE_NON_NEGATIVE) -> int:
    """A count read from a file (a shard's samples), refused as `InputDataError` naming `where` when it is not one."""
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            pass
    check_number(where, value, allowed, InputDataError)
    return int(value)
