"""Exceptions a user can act on.

The CLI prints any :class:`UnlearnAuditError` as one line starting with ``error:`` and exits
with its ``exit_code``: 2 for bad input (config, paths, names), 1 for a failure while running.
"""

from __future__ import annotations


class UnlearnAuditError(Exception):
    """Base class: a message that says what went wrong and what to change."""

    exit_code = 1


class UserInputError(UnlearnAuditError, ValueError):
    """Bad input: an unknown name, a missing file, an invalid parameter (exit code 2)."""

    exit_code = 2


class RunError(UnlearnAuditError, RuntimeError):
    """A failure while running (exit code 1)."""


class TrainingDiverged(RunError):
    """The loss became NaN or infinite. ``log`` holds the losses computed until then."""

    def __init__(self, message: str, log: list[float] | None = None):
        super().__init__(message)
        self.log = list(log or [])
