"""The one exception type for bad input from the user.

A config, a command-line argument, a scheduler name, a model file or an output folder that cannot be used
is a :class:`UserError` (a ``ValueError``, so library callers that catch ValueError keep working). Its
message says what was given, what is allowed and how to fix it; the ``greengossip`` command prints it as
one line and exits with status 2, without a traceback. Anything else that escapes is a bug.
"""

from __future__ import annotations

import reprlib
from typing import Any


class UserError(ValueError):
    """Bad input from the user; the message names it, what is allowed and how to fix it."""


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4
_REPR.maxlevel = 2


def bounded_repr(value: Any, limit: int = 80) -> str:
    """repr() for error messages that costs and prints little whatever the value: reprlib stops after a
    few items and levels, so a value built from YAML aliases or a huge string never becomes a huge message."""
    try:
        shown = _REPR.repr(value)
    except Exception:  # noqa: BLE001 - a user object whose repr fails still gets a message
        shown = f"<{type(value).__name__}>"
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."
