"""The one exception type the CLI turns into a one-line error message."""


class MaskrtError(Exception):
    """A user-facing error: bad input, a missing file, an incompatible artifact.

    The message must name the offending file, annotation or option; the CLI prints it on one line
    (no traceback) and exits non-zero.
    """
