"""What parbp's command lines share: bad input ends in one ``error: ...`` line and exit status 2.

``cli.Parser`` answers a malformed command line in one line (``prog: error: ...``, no usage dump). The
problems it cannot see (a dataset that is not there, a checkpoint of another run, a trainer this machine
cannot run) arrive as exceptions from the library, which keeps raising them for Python callers; ``run``
turns those into the same kind of answer instead of a traceback.
"""
from __future__ import annotations

import argparse
import sys

from .base import TrainerUnavailable

#: what a user can fix from the command line; anything else is a bug and keeps its traceback
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, TrainerUnavailable)


class Parser(argparse.ArgumentParser):
    """argparse, but a bad command line gets one line, ``prog: error: ...``, not the whole usage again."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def run(main, argv=None, prog: str | None = None) -> int:
    """``main(argv)``'s exit status, or 2 after printing ``error: ...`` for a user error."""
    try:
        status = main(argv)
    except USER_ERRORS as e:
        print(f"{prog + ': ' if prog else ''}error: {e}", file=sys.stderr, flush=True)
        return 2
    return status if isinstance(status, int) else 0


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text}")
    return value


def fraction(text: str) -> float:
    """An argparse type: a number in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text}")
    return value
