"""The project's user-facing error type.

:class:`VidqError` is a bad input of the user (an argument, a file, a value out of range) whose message
names the culprit and what is allowed, in one line. The ``vidq`` command line prints it as that one
line and exits with status 2 (as it does for :class:`conversion.ConversionError`,
:class:`vidq_jax.checkpoint.OutputFolderError` and the other project error types); it is a
``ValueError``, so API callers that catch ``ValueError`` keep working.
"""

from __future__ import annotations


class VidqError(ValueError):
    """A user error: the message names the argument or file and its allowed values."""


__all__ = ["VidqError"]
