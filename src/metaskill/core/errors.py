"""Errors that the CLI prints as one line, never as a traceback.

Every error a user can cause by bad input derives from :class:`MetaskillError`. Its
``str()`` is a single line that says what is wrong and how to fix it.
"""

from __future__ import annotations


class MetaskillError(Exception):
    """Base class for errors caused by input or environment, shown as one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class UnknownSpecError(MetaskillError, ValueError):
    """A model spec string that no backend understands."""


class ModelNotFoundError(MetaskillError, FileNotFoundError):
    """A model file that is missing."""


class ServerUnreachableError(MetaskillError, ConnectionError):
    """An HTTP backend that could not be reached after retries."""


class ContextOverflowError(MetaskillError, ValueError):
    """A prompt longer than the model's context window."""


class InvalidParameterError(MetaskillError, ValueError):
    """Sampling or configuration parameters out of range."""


class TaskError(MetaskillError, ValueError):
    """A task, task file or data file that is malformed or missing."""


class NotFoundError(MetaskillError, KeyError):
    """A named thing (task, run, skill) that does not exist."""

    def __str__(self) -> str:  # KeyError quotes its message; we don't.
        return str(self.args[0]) if self.args else ""


class MethodError(MetaskillError, ValueError):
    """A method asked for something it cannot do (names the method and what is missing)."""


class FileFormatError(MetaskillError, ValueError):
    """A file metaskill reads that is missing, a folder, binary, malformed, too deeply
    nested, or of the wrong shape (see :mod:`metaskill.core.readers`)."""
