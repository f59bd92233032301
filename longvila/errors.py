"""Every error a user sees as one line, with its exit code: the one place the console's table is read from.

A user's mistake or a stop the run decided on reads as ``<prog>: <label>: <message>`` on stderr, never as a
traceback (``longvila/console.py``): configuration and bad requests exit 2 (nothing was computed), bad data,
unreadable media and stopped training exit 1. Any other exception is a bug and keeps its traceback, which is why
code raises these types only for conditions it has decided are the user's to fix.
"""

from __future__ import annotations

from contextlib import contextmanager


class ConfigError(ValueError):
    """An impossible or inconsistent configuration, reported as one line before any compute."""


class EvalError(ValueError):
    """A bad evaluation request (flags, needle file, haystack), reported as one line before any compute."""


class DataError(RuntimeError):
    """The dataset cannot feed training (for example: every sample is bad)."""


class MediaError(RuntimeError):
    """A media file (image or video) is missing, unreadable or corrupt.

    Datasets catch exactly this type to turn one bad file into a skipped sample (``None``) instead of a crashed
    run; any other exception is a bug and must propagate.
    """


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, a failed save); the message is one line for the user."""


class CheckpointError(TrainingError):
    """A checkpoint cannot be written or read."""


USER_ERRORS: tuple[tuple[type[Exception], str, int], ...] = (
    (ConfigError, "error", 2), (EvalError, "error", 2), (DataError, "data error", 1),
    (MediaError, "media error", 1), (TrainingError, "training stopped", 1))
"""(class, label, exit code), most specific first: how ``run_console`` reports each."""


@contextmanager
def reported_as(error_type: type[Exception], *caught: type[Exception]):
    """Re-raise ``caught`` exceptions (ValueError by default) from the block as ``error_type`` with the same
    message: where a lower layer's ValueError is, at this call site, the user's configuration to fix."""
    try:
        yield
    except caught or (ValueError,) as error:
        raise error_type(str(error)) from error
