"""User-facing errors.

Every error that bad input can cause derives from :class:`KinemaError`. The CLI prints such an
error as one line and exits with status 2; the Python API lets it propagate. Messages say what
was wrong and what to do about it.
"""

from __future__ import annotations


class KinemaError(ValueError):
    """Bad input (arguments, files, checkpoints): a one-line, actionable message."""


class CheckpointError(KinemaError):
    """A checkpoint file or directory is missing, truncated, corrupt, unsafe or does not match."""
