"""Working-size Labels layers that outline and arrive in short freezes of the GUI thread.

napari draws a Labels layer in outline mode (``contour`` > 0) by recomputing the outline of the whole
displayed map each time it is sliced: on being shown, on every new ``data``. Its ``get_contours`` uses
scipy's grey dilation and erosion, 50–110 ms on a 1536 × 2304 map. :func:`outline` gives the same
pixels with a few numpy minimum/maximum calls over shifted views, 5–10 ms on a ``uint8`` map;
:func:`outline_quickly` makes one layer use it.

Adding a Labels layer also builds its brush and polygon overlays on the canvas at once, about a third of
the add. :func:`defer_overlays` hides them before the add (napari builds a hidden overlay only once it is
shown) and :func:`show_overlays` shows them again, one turn of the event loop later.

Both reach into napari's private ``Labels._calculate_contour`` and ``Layer._overlays``; where a napari
lacks them, the layer keeps napari's own behaviour (slower, never different). Imports numpy and napari's
model only: no Qt.
"""

from __future__ import annotations

import types
from typing import Any

import numpy as np
from napari.layers import Labels

#: The attribute that remembers which overlays :func:`defer_overlays` hid.
_DEFERRED = "_milkd_deferred_overlays"


def outline(labels: np.ndarray, thickness: int, background: int) -> np.ndarray:
    """The pixels of ``labels`` (2-D, ``(row, col)``) on a boundary between labels, keeping their label;
    every other pixel is ``background``. Identical to napari's ``get_contours``: a pixel is on the
    boundary where the largest label among it and its 4 neighbours differs from the smallest within
    ``thickness`` steps (4-connected, the map mirrored at its edges, as scipy's ``reflect``)."""
    steps = max(1, int(thickness))
    rows, cols = labels.shape
    padded = np.pad(labels, steps, mode="symmetric")
    near = padded[steps - 1 : steps + rows + 1, steps - 1 : steps + cols + 1]
    largest = _cross(near, np.maximum)
    smallest = padded
    for _ in range(steps):  # a diamond of radius ``steps`` is ``steps`` crosses in a row
        smallest = _cross(smallest, np.minimum)
    contours = labels.copy()
    contours[largest == smallest] = background
    return contours


def _cross(values: np.ndarray, pick: np.ufunc) -> np.ndarray:
    """``pick`` (``np.maximum``/``np.minimum``) over each inner pixel of ``values`` and its 4 neighbours:
    one pixel smaller on every side."""
    result = pick(values[1:-1, 1:-1], values[:-2, 1:-1])
    pick(result, values[2:, 1:-1], out=result)
    pick(result, values[1:-1, :-2], out=result)
    pick(result, values[1:-1, 2:], out=result)
    return result


def _calculate_contour(layer: Labels, labels: np.ndarray, data_slice: tuple[slice, ...]) -> np.ndarray | None:
    """napari's ``Labels._calculate_contour`` with :func:`outline` in place of ``get_contours``: the
    outline of ``labels[data_slice]``, computed on the slice grown by the thickness so it matches the
    outline of the whole map."""
    if layer.contour < 1 or labels.ndim != 2:
        return Labels._calculate_contour(layer, labels, data_slice)  # none, or napari's 3-D warning
    grow = max(1, int(layer.contour))
    grown = tuple(
        slice(max(0, min(size, part.start - grow)), max(0, min(size, part.stop + grow)))
        for part, size in zip(data_slice, labels.shape, strict=True)
    )
    contours = outline(labels[grown], int(layer.contour), int(layer.colormap.background_value))
    return contours[
        tuple(
            slice(part.start - big.start, part.stop - big.start)
            for part, big in zip(data_slice, grown, strict=True)
        )
    ]


def outline_quickly(layer: Labels) -> None:
    """Make ``layer`` draw its outlines with :func:`outline` (nothing where napari has no
    ``_calculate_contour`` to stand in for)."""
    if callable(getattr(Labels, "_calculate_contour", None)):
        layer._calculate_contour = types.MethodType(_calculate_contour, layer)


def _overlays(layer: Any) -> dict[str, Any]:
    overlays = getattr(layer, "_overlays", None)
    return dict(overlays) if overlays is not None else {}


def defer_overlays(layer: Any) -> None:
    """Before ``layer`` is added: hide its shown overlays (brush, polygon), so the canvas builds them
    only when :func:`show_overlays` shows them again."""
    overlays = _overlays(layer)
    hidden = [name for name, overlay in overlays.items() if overlay.visible]
    for name in hidden:
        overlays[name].visible = False
    setattr(layer, _DEFERRED, hidden)


def show_overlays(layer: Any) -> None:
    """Show again the overlays :func:`defer_overlays` hid (the canvas builds them now)."""
    overlays = _overlays(layer)
    for name in getattr(layer, _DEFERRED, ()):
        if name in overlays:
            overlays[name].visible = True
    setattr(layer, _DEFERRED, [])
