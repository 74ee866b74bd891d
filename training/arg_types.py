"""argparse ``type=`` checks for the subcommands' numeric options: a value out of range is a usage error
(one message, exit status 2) before any work starts, not a crash after it."""

from __future__ import annotations

import argparse
import math


def int_at_least(minimum: int):
    """argparse ``type=`` for a whole number >= ``minimum``: anything else is a usage error (status 2)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        return value

    parse.__name__ = f"whole number >= {minimum}"  # argparse names the type in its message
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
