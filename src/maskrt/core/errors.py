"""The one exception type the CLI turns into a one-line error message, and the one check of a named choice."""

from __future__ import annotations

from collections.abc import Iterable


class MaskrtError(Exception):
    """A user-facing error: bad input, a missing file, an incompatible artifact.

    The message must name the offending file, annotation or option; the CLI prints it on one line
    (no traceback) and exits non-zero.
    """


def check_choice(what: str, value: object, choices: Iterable[str]) -> None:
    """MaskrtError `unknown WHAT 'VALUE' (choose from A, B, ...)` unless `value` is one of `choices`: the one place
    that message is written."""
    options = list(choices)
    if value not in options:
        raise MaskrtError(f"unknown {what} '{value}' (choose from {', '.join(options)})")
