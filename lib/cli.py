"""What parbp's command lines share: bad input ends in one ``error: ...`` line and exit status 2.

``cli.Parser`` answers a malformed command line so; ``run`` answers so, not with a traceback, what only the library
can see and raises (a missing dataset, a checkpoint of another run, a trainer this machine cannot run).
"""
from __future__ import annotations

import argparse
import math
import numbers
import sys

from .base import TrainerUnavailable
from .nets import parse_net


class Parser(argparse.ArgumentParser):
    """argparse, but a bad command line gets one line, ``prog: error: ...``, not the whole usage again."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        if getattr(parsed, "resume", False) and not getattr(parsed, "checkpoint", None):
            self.error("--resume needs --checkpoint PATH")  # every command line that resumes has both
        return parsed


def run(main, argv=None, prog: str | None = None) -> int:
    """``main(argv)``'s exit status, or 2 after printing ``error: ...`` for a user error."""
    try:
        status = main(argv)
    except (ValueError, FileNotFoundError, FileExistsError, TrainerUnavailable) as e:  # not bugs: a user can fix them
        print(f"{prog + ': ' if prog else ''}error: {e}", file=sys.stderr, flush=True)
        return 2
    return status if isinstance(status, int) else 0


def _number_type(convert, ok, expected: str):
    """An argparse type: ``convert(text)`` where ``ok(value)``, else an error saying what was ``expected``."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value
    return parse


def check_positive_int(name: str, value) -> int:
    """``value`` as an int, or ValueError naming ``name`` (a bool, a float or a string is refused too):
    the one check of counts passed from Python (trainer options, batch sizes, process counts)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_choice(name: str, value, choices, unknown: bool = False):
    """``value`` when it is one of ``choices``, else ValueError naming ``name`` and the choices (``unknown``:
    worded as an unknown name, for names of things: a dataset, a profile)."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {list(choices)}" if unknown else
                         f"{name} must be one of {choices}, got {value!r}")
    return value


#: argparse types for the command lines' numbers
positive_int = _number_type(int, lambda v: v >= 1, "a positive integer")
nonnegative_int = _number_type(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number_type(float, lambda v: math.isfinite(v) and v > 0, "a positive finite number")
fraction = _number_type(float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def net(text: str):
    """--net: "1h", "2h" or comma-separated hidden widths."""
    try:
        return parse_net(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
