"""napari reader contribution: whole-slide images through OpenSlide as lazy multiscale RGB layers.

(Pixels of SVS / generic tiled TIFF come from the file's own tiles, see ``core.slides.native``.)

Owns deciding, quickly, whether a path is ours. Imports no torch and touches no Qt.
Plain ``.tif``/``.tiff`` files that OpenSlide does not recognise are left to other plugins (``None``);
for vendor suffixes (``.svs``, ``.ndpi`` ...) a damaged file gets our reader so the user sees why it
failed instead of "no reader found".
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from napari_milkd._layers import LayerDataTuple, slide_image_layer
from napari_milkd._preload import preload_core
from napari_milkd.core.slides.slide import SLIDE_SUFFIXES, open_slide

ReaderFunction = Callable[[str | list[str]], list[LayerDataTuple]]

_GENERIC_SUFFIXES = frozenset({".tif", ".tiff"})


def napari_get_reader(path: str | list[str]) -> ReaderFunction | None:
    """Return :func:`read_slide` when ``path`` looks like a slide OpenSlide can open, else ``None``."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if p.is_dir():
        return read_slide if any(f.suffix.lower() == ".dcm" for f in p.iterdir()) else None
    suffix = p.suffix.lower()
    if suffix not in SLIDE_SUFFIXES:
        return None
    if suffix in _GENERIC_SUFFIXES:
        import openslide

        try:
            if openslide.OpenSlide.detect_format(str(p)) is None:
                return None
        except Exception:
            return None
    return read_slide


def read_slide(path: str | list[str]) -> list[LayerDataTuple]:
    """Open one slide as a multiscale RGB image layer whose ``scale`` is µm/px (see :mod:`._layers`).

    Raises :class:`~napari_milkd.core.errors.SlideError` (napari shows it as a notification) when the
    file cannot be read.
    """
    if isinstance(path, list):
        path = path[0]
    layers = [slide_image_layer(open_slide(path))]
    preload_core()  # the dock's core, imported before the user opens it
    return layers
