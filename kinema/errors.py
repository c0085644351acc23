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


class Cancelled(Exception):
    """A generation stopped at the caller's request: a progress callback raised it (a server's cancel
    button, a UI's stop). Not bad input, so not a KinemaError; nothing is written."""


class RequestError(KinemaError):
    """A request value kinema cannot take. The message names the request's fields through
    placeholders, so that each front end says them in its own words: the field names here and in
    the Python API, the flags on the command line (``num_inference_steps`` is ``--steps``).

    ``RequestError("{0} must be positive; got 0", "num_inference_steps")``
    """

    def __init__(self, template: str, *fields: str) -> None:
        self.template, self.fields = template, fields
        super().__init__(self.render())

    def render(self, names: dict[str, str] | None = None) -> str:
        """The message with each field named by ``names`` (default: the field names themselves)."""
        names = names or {}
        return self.template.format(*(names.get(f, f) for f in self.fields))
