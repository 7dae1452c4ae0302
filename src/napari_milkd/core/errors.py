"""User-facing errors of the engine.

A :class:`MilkdError` carries a one-line message that tells the user what is wrong and, where it can,
what to do. Front-ends show it as is: the CLI prints ``milkd: error: <message>`` and exits with 2, the
widget shows a napari notification. Anything else escaping the engine is a bug.
"""

import errno as _errno


class MilkdError(Exception):
    """An error caused by the user's input or environment, with a one-line message."""


class SlideError(MilkdError):
    """A slide that is missing, unsupported, truncated or otherwise unreadable."""


class InputError(MilkdError):
    """Bad input that is not a slide: a CSV, a folder, a mask, an annotation file, an option value."""


class CheckpointError(MilkdError):
    """A checkpoint that is missing, corrupt, or from a different model."""


class TrainingError(MilkdError):
    """Training cannot go on: a non-finite loss, or out of GPU memory at the smallest batch size."""


class WriteError(MilkdError, OSError):
    """Writing user data failed (folder not writable, disk full, ...); the previous file is intact.

    Also an :class:`OSError`, so code that already handles failed writes keeps working; ``errno`` is the
    underlying error's.
    """

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno  # type: ignore[misc]

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def write_error(path: object, exc: OSError) -> WriteError:
    """A one-line :class:`WriteError` for a failed write of ``path`` caused by ``exc``."""
    if isinstance(exc, WriteError):
        return exc
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno == _errno.ENOSPC:
        reason = "the disk is full"
    elif exc.errno is not None and exc.errno == getattr(_errno, "EDQUOT", None):
        reason = "the disk quota is exceeded"
    elif exc.errno == _errno.EFBIG:
        reason = "the file is larger than this filesystem or the file-size limit (ulimit -f) allows"
    elif isinstance(exc, FileExistsError | NotADirectoryError):
        reason = "part of the path is a file, not a folder"
    return WriteError(f"could not write {path}: {reason} (the previous version, if any, is kept)", exc.errno)
