"""napari adapters: slides and slide-space geometry as napari layer-data tuples.

Owns the translation from core objects to napari's layer vocabulary (data, ``scale``, metadata). Uses
napari's Qt-free API only (nothing here imports napari at all: layer-data tuples are plain Python).

World coordinates are micrometres when the slide's µm/px is known (``scale = (mpp_y, mpp_x)``), else
level-0 pixels (``scale = (1, 1)``). napari puts pixel ``(r, c)`` *centres* at data ``(r, c)``; QuPath,
ASAP and our ``_l0`` polygons put the origin at the top-left *corner* of pixel (0, 0), hence the
half-pixel shift in :func:`l0_xy_to_napari`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_milkd.core.slides.slide import SlideSource

LayerDataTuple = tuple[Any, dict[str, Any], str]

#: Metadata key under which slide facts travel with an image layer.
SLIDE_META = "milkd_slide"


def slide_scale(source: SlideSource) -> tuple[float, float]:
    """World ``scale`` of level 0: ``(mpp_y, mpp_x)`` in µm, or ``(1, 1)`` when the resolution is unknown."""
    info = source.info
    if info.mpp_x is None or info.mpp_y is None:
        return (1.0, 1.0)
    return (info.mpp_y, info.mpp_x)


#: World units of layers over a slide with known µm/px (napari shows them in the scale bar).
MICROMETRES = ("micrometer", "micrometer")


def slide_units(source: SlideSource) -> tuple[str, str] | None:
    """``MICROMETRES`` when the slide's resolution is known, else ``None`` (napari's default, pixels)."""
    return MICROMETRES if source.info.has_mpp else None


def slide_image_layer(source: SlideSource, name: str | None = None) -> LayerDataTuple:
    """A multiscale RGB image layer over every pyramid level of ``source`` (lazy zarr arrays, no copy).

    ``metadata[SLIDE_META]`` holds the slide facts (path, vendor, levels, µm/px, objective power) plus
    ``mpp_source`` and ``mpp_known``.
    """
    from napari_milkd.core.slides.zarr_store import slide_levels  # zarr: ~0.3 s, not needed by the dock

    info = source.info
    facts = info.to_dict() | {"mpp_source": info.mpp_source, "mpp_known": info.has_mpp}
    kwargs: dict[str, Any] = {
        "name": name or Path(info.path).stem,
        "rgb": True,
        "multiscale": True,
        "scale": slide_scale(source),
        "contrast_limits": (0, 255),
        "metadata": {SLIDE_META: facts},
    }
    if info.has_mpp:
        kwargs["units"] = MICROMETRES
    return (slide_levels(source), kwargs, "image")


def l0_xy_to_napari(xy_l0: np.ndarray) -> np.ndarray:
    """Level-0 ``(x, y)`` corner-origin vertices → napari data ``(row, col)`` (pixel-centre origin)."""
    xy = np.asarray(xy_l0, dtype=float)
    return xy[:, ::-1] - 0.5


def napari_to_l0_xy(rc: np.ndarray) -> np.ndarray:
    """napari data ``(row, col)`` vertices of a level-0-scaled layer → level-0 ``(x, y)`` corner origin."""
    data = np.asarray(rc, dtype=float)
    return data[:, ::-1] + 0.5


def outline_layer(
    polygons_xy_l0: list[np.ndarray], source: SlideSource, name: str, color: str = "cyan"
) -> LayerDataTuple:
    """A Shapes layer of polygon outlines given in level-0 ``(x, y)`` pixels, aligned with the slide."""
    edge_width = max(source.info.levels[0].width, source.info.levels[0].height) / 800
    kwargs: dict[str, Any] = {
        "name": name,
        "shape_type": "polygon",
        "scale": slide_scale(source),
        "edge_color": color,
        "face_color": "transparent",
        "edge_width": edge_width,
        "opacity": 0.9,
    }
    units = slide_units(source)
    if units:
        kwargs["units"] = units
    return ([l0_xy_to_napari(p) for p in polygons_xy_l0], kwargs, "shapes")


def mask_layer_kwargs(
    level0_scale: tuple[float, float],
    downsample: float,
    name: str,
    units: tuple[str, str] | None = None,
    mpp: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Keyword arguments placing a single-scale mask made at ``downsample`` over a slide whose level 0
    has world scale ``level0_scale`` and ``units`` (see :func:`slide_scale`, :func:`slide_units`);
    ``mpp`` (µm per level-0 pixel, when known) goes into ``metadata["milkd_mpp"]`` for the writers.

    Pixel ``(r, c)`` of such a mask covers level-0 ``[r*ds, (r+1)*ds)``; its centre is at level-0
    ``(r + 0.5) * ds``, i.e. napari data ``(r + 0.5) * ds - 0.5`` — hence the translate.
    """
    sy, sx = (float(v) for v in level0_scale)
    offset = (downsample - 1) / 2
    kwargs = {
        "name": name,
        "scale": (sy * downsample, sx * downsample),
        "translate": (sy * offset, sx * offset),
        **extra,
    }
    if units:
        kwargs["units"] = units
    if mpp:
        # The writers (_writer.py) map world µm back to level-0 pixels with this.
        kwargs["metadata"] = {**extra.get("metadata", {}), "milkd_mpp": float(mpp)}
    return kwargs
