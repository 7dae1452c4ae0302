"""Atomic file writes: write to a temporary file in the destination folder, then rename over the target.

A crash or kill mid-write leaves the previous file intact (``os.replace`` is atomic on POSIX and
Windows within one filesystem). A failed write (folder not writable, disk full, ...) raises
:class:`~napari_milkd.core.errors.WriteError`, a one-line :class:`MilkdError` that is also an
:class:`OSError`, and leaves no temporary file behind. Temporary files are hidden (``.<name>.*.part``)
so a kill mid-write never leaves anything that a reader or a file dialog takes for the file.
Files get the mode a plain ``open()`` would give them (``0o666`` less the process umask: 0644 under umask
022), not :func:`tempfile.mkstemp`'s private 0600, so an export in a shared folder is readable by
colleagues; folders are created with the umask too. Standard library and
:mod:`napari_milkd.core.errors` only.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from napari_milkd.core.errors import write_error

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (``/proc/self/status``).

    Elsewhere it is read with ``os.umask`` under a lock (set and restored at once).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: ``0o666`` less the umask."""
    return 0o666 & ~current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``, on error delete it.

    An :class:`OSError` while creating, writing or renaming becomes a :class:`WriteError`. The file gets
    ``0o666`` less the umask (as with ``open()``); missing parent folders are made with the umask too.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    except OSError as exc:
        raise write_error(target, exc) from exc
    os.close(fd)
    # mkstemp makes 0600; the user's umask decides instead (a filesystem without modes keeps its own).
    with contextlib.suppress(OSError):
        os.chmod(tmp, default_file_mode())
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
