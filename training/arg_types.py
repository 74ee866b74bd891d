"""argparse ``type=`` checks for the subcommands' numeric options: a value out of range is a usage error
(one message, exit status 2) before any work starts, not a crash after it."""

from __future__ import annotations

import argparse
import math


def int_at_least(minimum: int, maximum: int = 2**31 - 1):
    """argparse ``type=`` for a whole number in [minimum, maximum]: anything else is a usage error (status 2).
    The default maximum keeps counts that size lists (episodes, frames, workers) from exhausting memory."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"{value} is outside {minimum}..{maximum}")
        return value

    parse.__name__ = f"whole number in {minimum}..{maximum}"  # argparse names the type in its message
    return parse


def positive_finite_float(text: str) -> float:
    """argparse ``type=`` for a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number > 0")
    return value
