"""Atomic file writes: write to a temporary file in the destination folder, then rename over the target.

A crash or kill mid-write leaves the previous file intact (``os.replace`` is atomic on POSIX and
Windows within one filesystem). A failed write (folder not writable, disk full, ...) raises
:class:`~napari_milkd.core.errors.WriteError`, a one-line :class:`MilkdError` that is also an
:class:`OSError`, and leaves no temporary file behind. Temporary files are hidden (``.<name>.*.part``)
so a kill mid-write never leaves anything that a reader or a file dialog takes for the file.
Standard library and :mod:`napari_milkd.core.errors` only.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from napari_milkd.core.errors import write_error


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``, on error delete it.

    An :class:`OSError` while creating, writing or renaming becomes a :class:`WriteError`.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    except OSError as exc:
        raise write_error(target, exc) from exc
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    except OSError as exc:
        raise write_error(target, exc) from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Atomically replace ``path`` with ``data``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Atomically replace ``path`` with UTF-8 ``text``."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike[str], payload: Any, *, indent: int | None = 2) -> None:
    """Atomically replace ``path`` with ``payload`` as JSON."""
    write_text_atomic(path, json.dumps(payload, indent=indent) + "\n")
