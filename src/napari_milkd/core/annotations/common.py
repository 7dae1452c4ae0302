"""Checks and helpers shared by the importers and writers of :mod:`.geojson` and :mod:`.asap`.

Owns class colours (:data:`DEFAULT_CLASS_COLORS`), the coordinate limit (:data:`MAX_COORDINATE_L0`),
iterating the input of a writer (``_items``), and repairing, clipping and collecting imported geometry
(``_clean``, ``_slide_box``, ``_finish``). May import shapely, :mod:`.model`, :mod:`.geometry` and
``core.errors``.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import shapely
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.geometry.base import BaseGeometry

from napari_milkd.core.annotations.geometry import polygonal_parts
from napari_milkd.core.annotations.model import RGB, Annotation, Geometry, ImportResult
from napari_milkd.core.errors import InputError

#: QuPath's default class colours (its ``PathClass`` defaults), used when no colour is given.
DEFAULT_CLASS_COLORS: dict[str, RGB] = {
    "Tumor": (200, 0, 0),
    "Stroma": (150, 200, 150),
    "Immune cells": (160, 90, 160),
    "Necrosis": (50, 50, 50),
    "Other": (255, 200, 0),
    "Normal": (112, 112, 225),
    "Positive": (200, 50, 50),
    "Negative": (112, 112, 225),
}

#: Coordinates beyond this (in level-0 pixels) are refused as implausible: no slide is that large, and
#: geometry on such numbers loses all precision.
MAX_COORDINATE_L0 = 1e9


def _class_color(name: str | None, colors: Mapping[str, RGB] | None, fallback: RGB) -> RGB:
    if name is None:
        return fallback
    if colors and name in colors:
        return tuple(int(c) for c in colors[name])  # type: ignore[return-value]
    if name in DEFAULT_CLASS_COLORS:
        return DEFAULT_CLASS_COLORS[name]
    h = zlib.crc32(name.encode("utf-8"))
    return (64 + h % 160, 64 + (h >> 8) % 160, 64 + (h >> 16) % 160)


def _items(
    geometries: Iterable[Geometry | Annotation], default_class: str
) -> Iterator[tuple[Polygon, str | None, Annotation | None]]:
    """Each polygon of the input, with its class name (an :class:`Annotation`'s, ``None`` when it is
    unclassified; plain geometry gets the default)."""
    for item in geometries:
        if isinstance(item, Annotation):
            name = item.class_name
            for part in polygonal_parts(item.geometry):
                yield part, name, item
        elif isinstance(item, BaseGeometry):
            for part in polygonal_parts(item):
                yield part, default_class, None
        else:
            raise InputError(f"not a polygon: {type(item).__name__}")


def _clean(
    geometry: BaseGeometry, where: str, warnings: list[str], slide_box: Polygon | None
) -> Geometry | None:
    """Repair, clip and check one imported geometry; ``None`` (with a warning) when nothing is left."""
    # shapely.is_valid/covers release the GIL, unlike the geometry's own properties (imports run in workers)
    repaired = geometry if shapely.is_valid(geometry) else shapely.make_valid(geometry)
    parts = polygonal_parts(repaired)
    if not parts:
        warnings.append(f"{where}: empty polygon (no area) skipped")
        return None
    if repaired is not geometry:
        warnings.append(f"{where}: invalid polygon ({shapely.is_valid_reason(geometry)}) repaired")
    geometry = parts[0] if len(parts) == 1 else MultiPolygon(parts)
    if slide_box is not None and not shapely.covers(slide_box, geometry):
        clipped = polygonal_parts(shapely.intersection(geometry, slide_box))
        if not clipped:
            warnings.append(f"{where}: entirely outside the slide, dropped")
            return None
        warnings.append(f"{where}: coordinates outside the slide, clipped to it")
        geometry = clipped[0] if len(clipped) == 1 else MultiPolygon(clipped)
    return geometry


def _slide_box(slide_shape_l0: tuple[int, int] | None) -> Polygon | None:
    if slide_shape_l0 is None:
        return None
    height, width = slide_shape_l0
    return box(0, 0, float(width), float(height))


def _finish(
    path: Path,
    kind: str,
    found: list[Annotation],
    warnings: list[str],
    skipped: Mapping[str, int] | None = None,
) -> ImportResult:
    if not found:
        detail = f" ({warnings[0]}{'; ...' if len(warnings) > 1 else ''})" if warnings else ""
        raise InputError(f"{path}: no usable polygons in this {kind} file{detail}")
    return ImportResult(tuple(found), tuple(warnings), dict(skipped or {}))
