"""Exceptions the engine raises for bad input and unavailable resources.

Every error a user can cause derives from :class:`RiffError`, so front ends (CLI, OSC, HTTP)
can turn it into a one-line message without a traceback.
"""

from __future__ import annotations


class RiffError(Exception):
    """Base class of every error caused by input or environment, not by a bug."""


class InvalidRequest(RiffError, ValueError):
    """A request or parameter is malformed or out of range; nothing was changed."""


class InvalidImage(RiffError, ValueError):
    """An image cannot be read as a spectrogram (broken, wrong mode, wrong size, too large)."""


class InvalidAudio(RiffError, ValueError):
    """An audio file cannot be read or holds no samples."""


class UnknownId(RiffError, KeyError):
    """A seed image, mask or preset id is not a plain name or does not exist."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly.
        return str(self.args[0]) if self.args else ""


class ModelUnavailable(RiffError):
    """The model cannot be loaded (not cached and the hub is unreachable, bad folder)."""


class Cancelled(RiffError):
    """A generation was cancelled between denoising steps."""
