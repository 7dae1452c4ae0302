"""The project folder that keeps a slide's work: weak labels, corrections, masks, checkpoints, settings.

Owns where the folder is and how arrays and settings are stored. Every write is atomic (temporary file,
then rename), so a crash or a kill never leaves a half-written file; the previous version survives.
May import numpy and the standard library.

Layout (``<slide file>.milkd/`` next to the slide when that folder is writable, else under the user
cache folder, keyed by the slide's absolute path)::

    project.json            settings: slide path, µm/px, working resolution, tile size, device, round
    arrays/<name>.npz       label images and probability maps at the working resolution
    checkpoints/            teacher.pt, student.pt (written by the training engine)
    exports/                GeoJSON / ASAP XML / OME-Zarr written from the widget
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from napari_milkd.core.atomic import write_bytes_atomic, write_json_atomic
from napari_milkd.core.errors import InputError

PROJECT_VERSION = 1


def default_project_dir(slide_path: str | os.PathLike[str]) -> Path:
    """``<slide>.milkd`` beside the slide (or image folder) if its folder is writable and not marked
    read-only, else a per-slide folder under the user cache."""
    slide = Path(slide_path).expanduser().resolve()
    beside = slide.parent / f"{slide.name}.milkd"
    if beside.exists() or _writable_folder(slide.parent):
        return beside
    from napari_milkd.core.slides.sample import sample_cache_dir

    key = hashlib.sha1(str(slide).encode()).hexdigest()[:12]
    return sample_cache_dir() / "projects" / f"{slide.name}-{key}.milkd"


def _writable_folder(folder: Path) -> bool:
    """True when we may add files to ``folder``: the OS allows it *and* its mode has a write bit (root
    may write anywhere, but a folder marked read-only, like a shared data set, is left alone)."""
    try:
        return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)
    except OSError:
        return False


class Project:
    """A slide's project folder (created on first write)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @classmethod
    def for_slide(cls, slide_path: str | os.PathLike[str]) -> Project:
        """The project of ``slide_path`` at its default location."""
        return cls(default_project_dir(slide_path))

    @property
    def checkpoints(self) -> Path:
        """Folder for training checkpoints."""
        return self.root / "checkpoints"

    @property
    def exports(self) -> Path:
        """Folder for exported annotations."""
        return self.root / "exports"

    def _array_path(self, name: str) -> Path:
        if not name.replace("_", "").replace("-", "").isalnum():
            raise InputError(f"bad array name {name!r}")
        return self.root / "arrays" / f"{name}.npz"

    def save_array(self, name: str, array: np.ndarray, **meta: float | int | str) -> None:
        """Store ``array`` (compressed) with small metadata, atomically."""
        buffer = io.BytesIO()
        np.savez_compressed(buffer, data=np.asarray(array), meta=json.dumps(meta))
        write_bytes_atomic(self._array_path(name), buffer.getvalue())

    def load_array(self, name: str) -> tuple[np.ndarray, dict[str, Any]] | None:
        """``(array, meta)`` stored under ``name``, or ``None`` when there is none."""
        path = self._array_path(name)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as npz:
                return npz["data"], json.loads(str(npz["meta"]))
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"project file {path} is damaged: {exc}") from exc

    def has_array(self, name: str) -> bool:
        """True when an array ``name`` is stored."""
        return self._array_path(name).exists()

    def save_settings(self, settings: dict[str, Any]) -> None:
        """Write ``project.json`` atomically (merged over what is there)."""
        merged = {**self.load_settings(), **settings, "version": PROJECT_VERSION}
        write_json_atomic(self.root / "project.json", merged)

    def load_settings(self) -> dict[str, Any]:
        """``project.json`` as a dict (empty when absent)."""
        path = self.root / "project.json"
        if not path.exists():
            return {}
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"project file {path} is damaged: {exc}") from exc
        if not isinstance(data, dict):
            raise InputError(f"project file {path} is not a settings object")
        return data
