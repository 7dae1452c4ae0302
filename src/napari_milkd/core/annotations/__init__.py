"""Masks ↔ polygons, and the annotation formats: QuPath GeoJSON, ASAP XML, OME-Zarr labels.

Owns the geometry of exported and imported annotations and every byte of those files. Headless: may
import numpy, scipy, shapely (2.x), defusedxml, zarr and the standard library; never napari or Qt.

Coordinates (see ``docs/slides.md`` and ``docs/formats.md``):

- masks are ``(row, col)`` arrays made at a ``downsample`` ``ds`` from level 0; mask pixel ``(r, c)``
  covers level-0 ``x ∈ [c·ds, (c+1)·ds)``, ``y ∈ [r·ds, (r+1)·ds)``;
- polygons (shapely) are level-0 ``(x, y)`` pixels with the origin at the top-left **corner** of pixel
  ``(0, 0)``: the QuPath and ASAP convention, so they are written as they are;
- OME-Zarr puts the origin at the **centre** of pixel ``(0, 0)`` (see :func:`write_ome_zarr_labels`).

Every write is atomic (``core.atomic``; folders via a temporary folder and a rename). Bad input raises
:class:`~napari_milkd.core.errors.InputError` with a one-line message naming the file; problems the
importer can repair or skip are returned as warnings (one line each) next to the annotations.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
import warnings as _warnings
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np
import shapely
from scipy import ndimage
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.geometry.base import BaseGeometry

from napari_milkd.core.atomic import atomic_path
from napari_milkd.core.errors import InputError, write_error

RGB = tuple[int, int, int]
RGBA = tuple[int, int, int, int]
Geometry = Polygon | MultiPolygon

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

#: Class name (lower case) → label value used by :func:`labels_from_annotations` by default.
DEFAULT_CLASS_TO_LABEL: dict[str, int] = {
    "tumor": 1,
    "tumour": 1,
    "positive": 1,
    "_0": 1,
    "_1": 1,
    "normal": 2,
    "negative": 2,
    "stroma": 2,
    "benign": 2,
    "tumour-free": 2,
    "tumor-free": 2,
}

#: ASAP groups that mean "tumour" (Camelyon16) and the group of exclusion holes.
ASAP_POSITIVE_GROUPS = frozenset({"tumor", "_0", "_1"})
ASAP_EXCLUSION_GROUP = "_2"

#: Coordinates beyond this (in level-0 pixels) are refused as implausible: no slide is that large, and
#: geometry on such numbers loses all precision.
MAX_COORDINATE_L0 = 1e9


class AnnotationWarning(UserWarning):
    """Something in the annotations was skipped or repaired (see the message)."""


@dataclass(frozen=True)
class Annotation:
    """One imported annotation: a polygonal region in level-0 ``(x, y)`` pixels (corner origin).

    ``class_name`` is the QuPath classification name or the ASAP group (``None`` when unclassified);
    ``properties`` are the file's own properties of the feature (GeoJSON) or attributes (ASAP);
    ``id`` is the feature's id when the file has one.
    """

    geometry: Geometry
    class_name: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    id: str | None = None


@dataclass(frozen=True)
class ImportResult:
    """What an importer found: the usable annotations and one line per skipped or repaired item."""

    annotations: tuple[Annotation, ...]
    warnings: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.annotations)

    def __iter__(self) -> Iterator[Annotation]:
        return iter(self.annotations)


# ---------------------------------------------------------------------------------------------------------
# mask → polygons


def _boundary_edges(padded: np.ndarray) -> tuple[np.ndarray, ...]:
    """Directed pixel edges between foreground and background of a zero-padded mask.

    Each edge runs along one side of a foreground pixel with that pixel on its right in image
    coordinates (y down), i.e. counter-clockwise in the numbers: outer rings get a positive signed
    area, holes a negative one. Returns ``(start, end, pixel, direction)``: vertex ids
    ``i·(W+1) + j`` of the padded vertex grid, the padded pixel's flat index, and 0..3 = +x, +y, −x, −y.
    """
    wp = padded.shape[1]
    vw = wp + 1
    inner = padded[1:-1, 1:-1]
    starts, ends, pixels, dirs = [], [], [], []
    neighbours = (
        (padded[:-2, 1:-1], (0, 0), (0, 1)),  # top: TL → TR
        (padded[1:-1, 2:], (0, 1), (1, 1)),  # right: TR → BR
        (padded[2:, 1:-1], (1, 1), (1, 0)),  # bottom: BR → BL
        (padded[1:-1, :-2], (1, 0), (0, 0)),  # left: BL → TL
    )
    for direction, (neighbour, (si, sj), (ei, ej)) in enumerate(neighbours):
        rr, cc = np.nonzero(inner & ~neighbour)
        rr = rr.astype(np.int64) + 1
        cc = cc.astype(np.int64) + 1
        starts.append((rr + si) * vw + cc + sj)
        ends.append((rr + ei) * vw + cc + ej)
        pixels.append(rr * wp + cc)
        dirs.append(np.full(rr.size, direction, np.int8))
    return tuple(np.concatenate(a) for a in (starts, ends, pixels, dirs))


def _order_rings(start: np.ndarray, end: np.ndarray, pixel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Link edges into closed rings; returns the edge order and each ordered edge's ring id.

    At a vertex where two foreground pixels touch only diagonally, the ring stays with the pixel it
    came along, so diagonal neighbours end up in different rings (foreground is 4-connected). The
    cycles of the resulting permutation are ranked by pointer jumping, so nothing loops in Python.
    """
    n = start.size
    order = np.argsort(start, kind="stable")
    start_sorted = start[order]
    first = np.searchsorted(start_sorted, end, side="left")
    count = np.searchsorted(start_sorted, end, side="right") - first
    nxt = order[first]
    saddle = np.flatnonzero(count == 2)
    if saddle.size:
        alternative = order[first[saddle] + 1]
        switch = pixel[nxt[saddle]] != pixel[saddle]
        nxt[saddle[switch]] = alternative[switch]

    # Cycle representative = smallest edge index in the cycle, by pointer jumping (min over 2^k steps).
    # Once a doubling step changes nothing, every window covers its whole cycle.
    rep = np.minimum(np.arange(n), nxt)
    jump = nxt.copy()
    while True:
        new_rep = np.minimum(rep, rep[jump])
        if np.array_equal(new_rep, rep):
            break
        rep, jump = new_rep, jump[jump]
    # Steps from each edge forward to its representative (list ranking; the representative is terminal).
    is_rep = rep == np.arange(n)
    succ = np.where(is_rep, np.arange(n), nxt)
    dist = (~is_rep).astype(np.int64)
    while not is_rep[succ].all():
        dist = dist + dist[succ]
        succ = succ[succ]
    length = np.bincount(rep, minlength=n)[rep]
    position = (length - dist) % length
    ranked = np.lexsort((position, rep))
    _, ring_id = np.unique(rep[ranked], return_inverse=True)
    return ranked, ring_id


def _mask_polygon_array(mask: np.ndarray) -> np.ndarray:
    """Exact pixel-edge polygons (with holes) of a boolean mask, in mask pixels, corner origin."""
    padded = np.pad(mask, 1)
    start, end, pixel, direction = _boundary_edges(padded)
    if start.size == 0:
        return np.empty(0, dtype=object)
    ranked, ring_id = _order_rings(start, end, pixel)

    # Keep only corners: drop a vertex whose incoming and outgoing edges run the same way.
    d = direction[ranked]
    ring_start = np.r_[0, np.flatnonzero(np.diff(ring_id)) + 1]
    ring_stop = np.r_[ring_start[1:], ring_id.size]
    previous = np.arange(ring_id.size) - 1
    previous[ring_start] = ring_stop - 1
    corner = d != d[previous]
    vw = padded.shape[1] + 1
    vertex = start[ranked][corner]
    x = (vertex % vw - 1).astype(float)
    y = (vertex // vw - 1).astype(float)
    rid = ring_id[corner]

    # Signed area per ring (shoelace on closed rings), and the component each ring bounds.
    r_start = np.r_[0, np.flatnonzero(np.diff(rid)) + 1]
    r_stop = np.r_[r_start[1:], rid.size]
    following = np.arange(rid.size) + 1
    following[r_stop - 1] = r_start
    cross = x * y[following] - x[following] * y
    signed_area = np.add.reduceat(cross, r_start) / 2.0
    labels, _ = ndimage.label(padded)  # 4-connectivity (the default structure)
    ring_pixel = pixel[ranked][ring_start]
    component = labels.ravel()[ring_pixel]

    rings = shapely.linearrings(np.column_stack([x, y]), indices=rid)
    ring_order = np.lexsort((signed_area < 0, component))  # per component: the shell, then its holes
    _, polygon_index = np.unique(component[ring_order], return_inverse=True)
    polygons = shapely.polygons(rings[ring_order], indices=polygon_index)
    invalid = ~shapely.is_valid(polygons)
    if invalid.any():
        # Rings that touch themselves at a diagonal vertex (a hole meeting the outside or another hole at
        # one corner) are valid as pixel sets but not as OGC rings: split them at the touching vertex.
        polygons[invalid] = shapely.make_valid(polygons[invalid])
    return polygons


def polygonal_parts(geometry: BaseGeometry) -> list[Polygon]:
    """The non-empty polygons of any geometry (polygons, multipolygons, collections), flattened."""
    parts = shapely.get_parts(geometry)
    out: list[Polygon] = []
    for part in parts:
        if isinstance(part, Polygon):
            if not part.is_empty and part.area > 0:
                out.append(part)
        elif isinstance(part, MultiPolygon | shapely.GeometryCollection):
            out.extend(polygonal_parts(part))
    return out


def mask_to_polygons(
    mask: np.ndarray,
    downsample: float = 1.0,
    *,
    simplify_px: float = 0.5,
    min_area_px: float = 0,
) -> list[Polygon]:
    """Polygons (with holes) of a mask made at ``downsample``, in level-0 ``(x, y)`` pixels, corner origin.

    Non-zero pixels are foreground (use :func:`labels_to_polygons` for one class per label value).
    One polygon per 4-connected component; pixels that touch only at a corner are separate polygons.
    The outlines follow pixel edges exactly; they are then simplified (Douglas-Peucker, topology
    preserved) with tolerance ``simplify_px`` mask pixels (0 keeps them exact), and components smaller
    than ``min_area_px`` mask pixels are dropped. Fast: linking edges into rings is vectorised (a
    2000×2000 mask with a few hundred components takes well under a second).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InputError(f"mask must be 2-D (rows, cols), got shape {mask.shape}")
    if not downsample > 0:
        raise InputError(f"downsample must be positive, got {downsample}")
    polygons = _mask_polygon_array(mask != 0)
    if polygons.size == 0:
        return []
    if min_area_px > 0:
        polygons = polygons[shapely.area(polygons) >= min_area_px]
    if simplify_px > 0:
        polygons = shapely.simplify(polygons, simplify_px, preserve_topology=True)
    if downsample != 1:
        polygons = shapely.transform(polygons, lambda xy: xy * float(downsample))
    out: list[Polygon] = []
    for geometry in polygons:
        out.extend(polygonal_parts(geometry))
    return out


def labels_to_polygons(
    labels: np.ndarray,
    downsample: float = 1.0,
    *,
    simplify_px: float = 0.5,
    min_area_px: float = 0,
) -> dict[int, list[Polygon]]:
    """:func:`mask_to_polygons` for each non-zero value of a label image: ``{value: polygons}``."""
    labels = np.asarray(labels)
    values = [int(v) for v in np.unique(labels) if v != 0]
    return {
        v: mask_to_polygons(labels == v, downsample, simplify_px=simplify_px, min_area_px=min_area_px)
        for v in values
    }


# ---------------------------------------------------------------------------------------------------------
# polygons → mask


def _as_polygon_array(polygons: Iterable[Geometry | Annotation]) -> np.ndarray:
    parts: list[Polygon] = []
    for item in polygons:
        geometry = item.geometry if isinstance(item, Annotation) else item
        parts.extend(polygonal_parts(geometry))
    return np.array(parts, dtype=object)


def polygons_to_mask(
    polygons: Iterable[Geometry | Annotation],
    shape: tuple[int, int],
    downsample: float = 1.0,
) -> np.ndarray:
    """Rasterise level-0 polygons into a boolean mask of ``shape`` made at ``downsample``.

    Mask pixel ``(r, c)`` is inside when its centre ``((c+0.5)·ds, (r+0.5)·ds)`` is inside a polygon
    (holes excluded; overlapping polygons are united). A scanline fill, vectorised over all edges and
    done in bands of rows, so memory stays near the size of the mask.
    """
    height, width = (int(v) for v in shape)
    if height < 0 or width < 0:
        raise InputError(f"mask shape must be non-negative, got {shape}")
    if not downsample > 0:
        raise InputError(f"downsample must be positive, got {downsample}")
    mask = np.zeros((height, width), dtype=bool)
    polys = _as_polygon_array(polygons)
    if polys.size == 0 or height == 0 or width == 0:
        return mask
    rings, ring_polygon = shapely.get_rings(polys, return_index=True)
    coords, coord_ring = shapely.get_coordinates(rings, return_index=True)
    u = coords[:, 0] / downsample - 0.5  # pixel-centre units: centre of column c is at u = c
    v = coords[:, 1] / downsample - 0.5
    same = coord_ring[:-1] == coord_ring[1:]
    u0, u1, v0, v1 = u[:-1][same], u[1:][same], v[:-1][same], v[1:][same]
    edge_polygon = ring_polygon[coord_ring[:-1][same]]
    # Rows r crossed by an edge: min(v0, v1) <= r < max(v0, v1) (half open, so vertices count once).
    lo = np.maximum(np.ceil(np.minimum(v0, v1)), 0).astype(np.int64)
    hi = np.minimum(np.ceil(np.maximum(v0, v1)), height).astype(np.int64)
    n = np.maximum(hi - lo, 0)
    if n.sum() == 0:
        return mask
    edge = np.repeat(np.arange(n.size), n)
    row = lo[edge] + (np.arange(edge.size) - np.repeat(np.cumsum(n) - n, n))
    t = (row - v0[edge]) / (v1[edge] - v0[edge])
    x = u0[edge] + t * (u1[edge] - u0[edge])
    order = np.lexsort((x, row, edge_polygon[edge]))
    row, x = row[order], x[order]
    # Each polygon crosses each row an even number of times: consecutive pairs are inside spans.
    row_pair = row[0::2]
    c_start = np.clip(np.ceil(x[0::2]), 0, width).astype(np.int64)
    c_stop = np.clip(np.ceil(x[1::2]), 0, width).astype(np.int64)
    keep = c_stop > c_start
    row_pair, c_start, c_stop = row_pair[keep], c_start[keep], c_stop[keep]
    band = max(1, (1 << 24) // (width + 1))
    for top in range(0, height, band):
        bottom = min(height, top + band)
        sel = (row_pair >= top) & (row_pair < bottom)
        if not sel.any():
            continue
        base = (row_pair[sel] - top) * (width + 1)
        size = (bottom - top) * (width + 1)
        diff = np.bincount(base + c_start[sel], minlength=size) - np.bincount(
            base + c_stop[sel], minlength=size
        )
        mask[top:bottom] = np.cumsum(diff.reshape(bottom - top, width + 1), axis=1)[:, :width] > 0
    return mask


# ---------------------------------------------------------------------------------------------------------
# shared import checks


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
) -> Iterator[tuple[Polygon, str, Annotation | None]]:
    """Each polygon of the input, with its class name (an :class:`Annotation`'s, else the default)."""
    for item in geometries:
        if isinstance(item, Annotation):
            name = item.class_name or default_class
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
    repaired = geometry if geometry.is_valid else shapely.make_valid(geometry)
    parts = polygonal_parts(repaired)
    if not parts:
        warnings.append(f"{where}: empty polygon (no area) skipped")
        return None
    if repaired is not geometry:
        warnings.append(f"{where}: invalid polygon ({shapely.is_valid_reason(geometry)}) repaired")
    geometry = parts[0] if len(parts) == 1 else MultiPolygon(parts)
    if slide_box is not None and not slide_box.covers(geometry):
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


def _finish(path: Path, kind: str, found: list[Annotation], warnings: list[str]) -> ImportResult:
    if not found:
        detail = f" ({warnings[0]}{'; ...' if len(warnings) > 1 else ''})" if warnings else ""
        raise InputError(f"{path}: no usable polygons in this {kind} file{detail}")
    return ImportResult(tuple(found), tuple(warnings))


# ---------------------------------------------------------------------------------------------------------
# QuPath GeoJSON


def _ring_coordinates(ring: Any) -> list[list[float]]:
    return [[_json_number(x), _json_number(y)] for x, y in np.asarray(ring.coords)[:, :2].tolist()]


def _json_number(value: float) -> float | int:
    return int(value) if float(value).is_integer() and abs(value) < 2**53 else float(value)


def _polygon_geojson(polygon: Polygon) -> dict[str, Any]:
    polygon = shapely.orient_polygons(polygon)  # RFC 7946: exterior counter-clockwise, holes clockwise
    rings = [polygon.exterior, *polygon.interiors]
    return {"type": "Polygon", "coordinates": [_ring_coordinates(r) for r in rings]}


def write_geojson(
    path: str | os.PathLike[str],
    polygons: Iterable[Geometry | Annotation],
    *,
    name: str = "Tumor",
    color: RGB = (200, 0, 0),
    colors: Mapping[str, RGB] | None = None,
    measurements: Mapping[str, float] | None = None,
    mpp: float | None = None,
) -> int:
    """Write QuPath (0.4+) GeoJSON: a FeatureCollection with one annotation Feature per polygon.

    ``polygons`` are level-0 ``(x, y)`` polygons (corner origin) or multipolygons (one Feature per part,
    i.e. per connected component) or :class:`Annotation` objects (which bring their own class name).
    Each Feature gets a fresh UUID ``id``, a Polygon geometry with holes as inner rings (exterior
    counter-clockwise), ``properties.objectType = "annotation"`` and ``properties.classification =
    {"name", "color": [r, g, b]}`` (``name``/``color`` for plain polygons; ``colors`` or QuPath's
    defaults for other classes). ``measurements`` (name → number) go into every Feature; with ``mpp``
    each Feature also gets ``"Area µm^2"``. Streamed feature by feature into a temporary file that
    replaces ``path`` only when complete. Returns the number of features written.
    """
    extra = {str(k): float(v) for k, v in (measurements or {}).items()}
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write('{"type": "FeatureCollection", "features": [')
        for polygon, class_name, _source in _items(polygons, name):
            rgb = (
                tuple(int(c) for c in color)
                if class_name == name
                else _class_color(class_name, colors, color)
            )
            props: dict[str, Any] = {
                "objectType": "annotation",
                "classification": {"name": class_name, "color": list(rgb)},
            }
            values = dict(extra)
            if mpp is not None:
                values["Area µm^2"] = float(polygon.area) * float(mpp) ** 2
            if values:
                props["measurements"] = values
            feature = {
                "type": "Feature",
                "id": str(uuid.uuid4()),
                "geometry": _polygon_geojson(polygon),
                "properties": props,
            }
            f.write(("\n" if count == 0 else ",\n") + json.dumps(feature, ensure_ascii=False))
            count += 1
        f.write("\n]}\n")
        f.flush()
        os.fsync(f.fileno())
    return count


def _parse_ring(value: Any) -> list[tuple[float, float]]:
    """A GeoJSON linear ring → list of finite (x, y); raises ValueError when malformed."""
    if not isinstance(value, list):
        raise ValueError("a ring is not a list of positions")
    points: list[tuple[float, float]] = []
    for position in value:
        if not isinstance(position, list) or len(position) < 2:
            raise ValueError("a position is not [x, y]")
        x, y = position[0], position[1]
        if isinstance(x, bool) or isinstance(y, bool) or not isinstance(x, int | float):
            raise ValueError("a coordinate is not a number")
        if not isinstance(y, int | float):
            raise ValueError("a coordinate is not a number")
        x, y = float(x), float(y)
        if not (math.isfinite(x) and math.isfinite(y)):
            raise ValueError("a coordinate is not finite")
        if abs(x) > MAX_COORDINATE_L0 or abs(y) > MAX_COORDINATE_L0:
            raise ValueError("a coordinate is implausibly large")
        points.append((x, y))
    if points and points[0] != points[-1]:
        points.append(points[0])
    if len(points) < 4:
        raise ValueError("a ring has fewer than 3 distinct points")
    return points


def _parse_polygon(value: Any) -> Polygon:
    if not isinstance(value, list) or not value:
        raise ValueError("polygon coordinates are not a list of rings")
    rings = [_parse_ring(r) for r in value]
    return Polygon(rings[0], rings[1:])


_POLYGONAL = ("Polygon", "MultiPolygon", "GeometryCollection")


def _geojson_geometry(geometry: Any) -> tuple[BaseGeometry | None, str | None]:
    """``(geometry, None)``, or ``(None, why)`` for geometry that is not polygonal or malformed."""
    if not isinstance(geometry, dict):
        return None, "no geometry, skipped"
    kind = geometry.get("type")
    coordinates = geometry.get("coordinates")
    try:
        if kind == "Polygon":
            return _parse_polygon(coordinates), None
        if kind == "MultiPolygon":
            if not isinstance(coordinates, list) or not coordinates:
                raise ValueError("multipolygon coordinates are not a list of polygons")
            return MultiPolygon([_parse_polygon(p) for p in coordinates]), None
        if kind == "GeometryCollection":
            members = geometry.get("geometries")
            if not isinstance(members, list):
                raise ValueError("geometry collection without 'geometries'")
            polys = [g for g, _ in map(_geojson_geometry, members) if g is not None]
            if not polys:
                raise ValueError("no polygons in it")
            return shapely.union_all([shapely.make_valid(p) for p in polys]), None
    except (ValueError, TypeError, shapely.errors.GEOSException) as exc:
        return None, f"malformed {kind} ({exc}), skipped"
    return None, f"{kind if isinstance(kind, str) else 'unknown'} geometry ignored (only polygons are read)"


def _feature_list(payload: Any, path: Path) -> list[Any]:
    if isinstance(payload, list):
        return payload
    if isinstance(payload, dict):
        kind = payload.get("type")
        if kind == "FeatureCollection":
            features = payload.get("features")
            if not isinstance(features, list):
                raise InputError(f"{path}: FeatureCollection without a 'features' list")
            return features
        if kind == "Feature":
            return [payload]
        if kind in ("Polygon", "MultiPolygon", "GeometryCollection"):
            return [{"type": "Feature", "geometry": payload, "properties": {}}]
    raise InputError(f"{path}: not GeoJSON (expected a FeatureCollection, a Feature or a list of features)")


def _classification(properties: dict[str, Any]) -> str | None:
    cls = properties.get("classification")
    if isinstance(cls, dict):
        name = cls.get("name")
        return name if isinstance(name, str) and name else None
    if isinstance(cls, str) and cls:
        return cls
    return None


def read_geojson(
    path: str | os.PathLike[str], *, slide_shape_l0: tuple[int, int] | None = None
) -> ImportResult:
    """Read polygon annotations from GeoJSON (QuPath 0.2–0.5 exports and plain GeoJSON).

    Accepts a FeatureCollection, a single Feature, a bare list of Features, or a bare geometry; reads
    Polygon, MultiPolygon (and the polygons of a GeometryCollection); other geometry (points, lines) is
    skipped with a warning. Invalid polygons (self-intersecting) are repaired with ``shapely.make_valid``,
    keeping only their polygonal parts; empty ones are skipped. With ``slide_shape_l0 = (height,
    width)``, polygons are clipped to the slide and those entirely outside dropped. Every skip or repair
    is one line in ``warnings``. Raises :class:`InputError` when the file is missing, is not JSON, is not
    GeoJSON, has no features, or has nothing usable left.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            payload = json.load(f, parse_constant=_reject_constant)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, not a GeoJSON file") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not JSON (not UTF-8 text)") from None
    except RecursionError:
        raise InputError(f"{path}: not JSON (nested too deeply)") from None
    except ValueError as exc:
        raise InputError(f"{path}: not JSON ({exc})") from None
    features = _feature_list(payload, path)
    if not features:
        raise InputError(f"{path}: GeoJSON has no features")
    slide_box = _slide_box(slide_shape_l0)
    found: list[Annotation] = []
    warnings: list[str] = []
    polygonal = 0
    for index, feature in enumerate(features):
        where = f"{path.name}: feature {index}"
        if not isinstance(feature, dict) or feature.get("type") != "Feature":
            warnings.append(f"{where}: not a GeoJSON Feature, skipped")
            continue
        raw = feature.get("geometry")
        if isinstance(raw, dict) and raw.get("type") in _POLYGONAL:
            polygonal += 1
        geometry, why = _geojson_geometry(raw)
        if geometry is None:
            warnings.append(f"{where}: {why}")
            continue
        properties = feature.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        with np.errstate(all="ignore"):
            try:
                cleaned = _clean(geometry, where, warnings, slide_box)
            except (shapely.errors.GEOSException, ValueError) as exc:
                warnings.append(f"{where}: geometry could not be repaired ({exc}), skipped")
                continue
        if cleaned is None:
            continue
        fid = feature.get("id")
        found.append(
            Annotation(
                cleaned,
                _classification(properties),
                properties,
                str(fid) if isinstance(fid, str | int) and not isinstance(fid, bool) else None,
            )
        )
    if polygonal == 0:
        raise InputError(f"{path}: no polygon features (found {len(features)} features of other kinds)")
    return _finish(path, "GeoJSON", found, warnings)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


# ---------------------------------------------------------------------------------------------------------
# ASAP XML (Camelyon16)


def _xml_number(value: float) -> str:
    return f"{value:.10g}"


def write_asap_xml(
    path: str | os.PathLike[str],
    polygons: Iterable[Geometry | Annotation],
    *,
    group: str = "Tumor",
    color: str = "#F4FA58",
    colors: Mapping[str, str] | None = None,
    hole_color: str = "#64FE2E",
) -> int:
    """Write ASAP XML (the Camelyon16 format): one ``Polygon`` annotation per polygon exterior.

    Coordinates are level-0 ``(x, y)`` pixels, corner origin, rings not repeated at the end. Polygons go
    to ``group`` (``Annotation`` objects to their own class name); their holes are written as separate
    polygons in the exclusion group ``_2``. Every group used is declared under ``AnnotationGroups``.
    Streamed into a temporary file that replaces ``path`` when complete. Returns the number of
    ``Annotation`` elements written (exteriors and holes).
    """
    group_colors: dict[str, str] = {}
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write('<?xml version="1.0"?>\n<ASAP_Annotations>\n\t<Annotations>\n')

        def ring(points: np.ndarray, part_of: str, ring_color: str) -> None:
            nonlocal count
            f.write(
                f'\t\t<Annotation Name={quoteattr(f"Annotation {count}")} Type="Polygon" '
                f"PartOfGroup={quoteattr(part_of)} Color={quoteattr(ring_color)}>\n\t\t\t<Coordinates>\n"
            )
            for order, (x, y) in enumerate(points[:-1]):
                f.write(f'\t\t\t\t<Coordinate Order="{order}" X="{_xml_number(x)}" Y="{_xml_number(y)}" />\n')
            f.write("\t\t\t</Coordinates>\n\t\t</Annotation>\n")
            count += 1

        for polygon, class_name, _source in _items(polygons, group):
            if class_name == group:
                c = color
            elif colors and class_name in colors:
                c = colors[class_name]
            else:
                c = "#{:02X}{:02X}{:02X}".format(*_class_color(class_name, None, (255, 0, 0)))
            group_colors.setdefault(class_name, c)
            ring(np.asarray(polygon.exterior.coords)[:, :2], class_name, c)
            for hole in polygon.interiors:
                group_colors.setdefault(ASAP_EXCLUSION_GROUP, hole_color)
                ring(np.asarray(hole.coords)[:, :2], ASAP_EXCLUSION_GROUP, hole_color)
        f.write("\t</Annotations>\n\t<AnnotationGroups>\n")
        for name, c in group_colors.items():
            f.write(
                f'\t\t<Group Name={quoteattr(name)} PartOfGroup="None" Color={quoteattr(c)}>\n'
                "\t\t\t<Attributes />\n\t\t</Group>\n"
            )
        f.write("\t</AnnotationGroups>\n</ASAP_Annotations>\n")
        f.flush()
        os.fsync(f.fileno())
    return count


def _asap_float(text: str | None) -> float:
    if text is None:
        raise ValueError("missing")
    value = float(text.strip().replace(",", "."))  # some ASAP versions write the locale's decimal comma
    if not math.isfinite(value) or abs(value) > MAX_COORDINATE_L0:
        raise ValueError("not a finite coordinate")
    return value


def read_asap_xml(
    path: str | os.PathLike[str], *, slide_shape_l0: tuple[int, int] | None = None
) -> ImportResult:
    """Read ASAP XML (Camelyon16) polygon annotations.

    Parsed with defusedxml, refusing DTDs and entity declarations (no entity expansion, no external
    entities). Groups ``Tumor``, ``_0`` and ``_1`` (case-insensitive) become class ``"Tumor"``; polygons
    of group ``_2`` are exclusions, subtracted from the tumour polygons they overlap, except from those
    lying entirely inside the exclusion (islands inside holes survive the round trip); other groups
    keep their name as class name (``PartOfGroup="None"`` → ``None``). ``Polygon``, ``Spline`` (its
    control points) and ``Rectangle`` annotations are read, in file order; dots and point sets, and
    polygons with fewer than 3 points, are skipped with a warning. Repairs and clipping as in
    :func:`read_geojson`. Raises :class:`InputError` for a missing or malformed file, unsafe XML, a
    foreign root element, or no usable annotations.
    """
    import defusedxml.ElementTree as DET
    from defusedxml import DefusedXmlException

    path = Path(path)
    try:
        root = DET.parse(path, forbid_dtd=True, forbid_entities=True, forbid_external=True).getroot()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, not an ASAP XML file") from None
    except DefusedXmlException as exc:
        raise InputError(
            f"{path}: refused unsafe XML ({exc.__class__.__name__}: DTDs/entities not allowed)"
        ) from None
    except DET.ParseError as exc:
        raise InputError(f"{path}: malformed XML ({exc})") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path}: malformed XML ({exc.__class__.__name__})") from None
    if root.tag != "ASAP_Annotations":
        raise InputError(f"{path}: not an ASAP annotation file (root element <{root.tag}>)")
    elements = root.findall("./Annotations/Annotation")
    if not elements:
        raise InputError(f"{path}: ASAP XML has no annotations")
    warnings: list[str] = []
    labelled: list[tuple[Polygon, str | None, dict[str, Any]]] = []  # in file order
    exclusions: list[Polygon] = []
    for index, element in enumerate(elements):
        attrs = dict(element.attrib)
        where = f"{path.name}: annotation {index} ({attrs.get('Name', 'unnamed')})"
        kind = attrs.get("Type", "Polygon")
        if kind not in ("Polygon", "Spline", "Rectangle"):
            warnings.append(f"{where}: type {kind} ignored (only polygons are read)")
            continue
        points = []
        try:
            for k, c in enumerate(element.findall("./Coordinates/Coordinate")):
                order = c.get("Order")
                points.append(
                    (int(order) if order is not None else k, _asap_float(c.get("X")), _asap_float(c.get("Y")))
                )
        except ValueError:
            warnings.append(f"{where}: a coordinate (or its Order) is not a number, skipped")
            continue
        points.sort(key=lambda p: p[0])
        xy = [(x, y) for _, x, y in points]
        if len(set(xy)) < 3:
            warnings.append(f"{where}: fewer than 3 points, skipped")
            continue
        geometry = Polygon(xy)
        group = attrs.get("PartOfGroup", "None")
        if group == ASAP_EXCLUSION_GROUP:
            exclusions.append(geometry)
        elif group.lower() in ASAP_POSITIVE_GROUPS:
            labelled.append((geometry, "Tumor", attrs))
        else:
            labelled.append((geometry, None if group in ("None", "") else group, attrs))
    slide_box = _slide_box(slide_shape_l0)
    with np.errstate(all="ignore"):
        valid_exclusions: list[Polygon] = []
        for exclusion in exclusions:
            try:
                valid_exclusions.extend(polygonal_parts(shapely.make_valid(exclusion)))
            except shapely.errors.GEOSException as exc:
                warnings.append(f"{path.name}: an exclusion (_2) could not be repaired ({exc}), ignored")
        tree = shapely.STRtree(valid_exclusions)
        found: list[Annotation] = []
        for geometry, class_name, attrs in labelled:
            where = f"{path.name}: annotation {attrs.get('Name', '?')}"
            try:
                cleaned = _clean(geometry, where, warnings, slide_box)
                # An exclusion cuts the tumour polygons it overlaps, except those drawn inside it (an
                # island in a hole, as write_asap_xml writes them).
                cutting = []
                if cleaned is not None and class_name == "Tumor":
                    near = [valid_exclusions[i] for i in tree.query(cleaned)]
                    cutting = [e for e in near if not e.covers(cleaned)]
                if cutting:
                    parts = polygonal_parts(shapely.difference(cleaned, shapely.union_all(cutting)))
                    if not parts:
                        warnings.append(f"{where}: entirely covered by exclusions (_2), dropped")
                        cleaned = None
                    else:
                        cleaned = parts[0] if len(parts) == 1 else MultiPolygon(parts)
            except shapely.errors.GEOSException as exc:
                warnings.append(f"{where}: geometry could not be repaired ({exc}), skipped")
                continue
            if cleaned is not None:
                found.append(Annotation(cleaned, class_name, attrs))
    if exclusions and not any(c == "Tumor" for _, c, _ in labelled):
        warnings.append(f"{path.name}: exclusion polygons (_2) without tumour polygons ignored")
    return _finish(path, "ASAP XML", found, warnings)


# ---------------------------------------------------------------------------------------------------------
# labels


def labels_from_annotations(
    annotations: Iterable[Annotation | Geometry],
    shape: tuple[int, int],
    downsample: float = 1.0,
    class_to_label: Mapping[str, int] | None = None,
    *,
    unknown_label: int | None = None,
) -> np.ndarray:
    """Rasterise annotations into a ``uint8`` label image of ``shape`` made at ``downsample``.

    Class names map to labels case-insensitively through ``class_to_label`` (default
    :data:`DEFAULT_CLASS_TO_LABEL`: tumour → 1, tumour-free/normal/stroma/benign → 2). Annotations of an
    unknown class (or none; bare polygons count as ``"Tumor"``) get ``unknown_label``; when that is
    ``None`` they are ignored with an :class:`AnnotationWarning`. Painted in the order given, later
    annotations over earlier ones; pixel centres decide (see :func:`polygons_to_mask`).
    """
    mapping = {k.lower(): int(v) for k, v in (class_to_label or DEFAULT_CLASS_TO_LABEL).items()}
    for value in [*mapping.values(), unknown_label]:
        if value is not None and not 0 <= value <= 255:
            raise InputError(f"label values must be 0..255, got {value}")
    out = np.zeros(tuple(int(v) for v in shape), dtype=np.uint8)
    ignored: dict[str, int] = {}
    for item in annotations:
        if isinstance(item, Annotation):
            geometry, name = item.geometry, item.class_name
        else:
            geometry, name = item, "Tumor"
        value = mapping.get(name.lower()) if name else None
        if value is None:
            value = unknown_label
        if value is None:
            key = name or "(unclassified)"
            ignored[key] = ignored.get(key, 0) + 1
            continue
        out[polygons_to_mask([geometry], out.shape, downsample)] = value
    for key, n in ignored.items():
        _warnings.warn(
            f"{n} annotation(s) of class {key!r} ignored (no label for it)", AnnotationWarning, stacklevel=2
        )
    return out


# ---------------------------------------------------------------------------------------------------------
# OME-Zarr labels


DEFAULT_LABEL_COLORS: dict[int, RGBA] = {1: (200, 0, 0, 255), 2: (112, 112, 225, 255)}


def ome_zarr_transform(mpp: float | None, downsample: float) -> tuple[list[float], list[float]]:
    """``(scale, translation)`` per axis (y, x) of a mask made at ``downsample`` in NGFF terms.

    NGFF puts the origin at the centre of pixel (0, 0) of the full-resolution grid. Mask pixel ``r``
    covers level-0 ``[r·ds, (r+1)·ds)`` (corner origin), so its centre is at level-0 ``(r + ½)·ds`` in
    the corner convention, ``(r + ½)·ds − ½ = r·ds + (ds − 1)/2`` in the centre convention: hence
    ``scale = u·ds`` and ``translation = u·(ds − 1)/2`` with ``u = mpp`` (µm) or 1 (level-0 pixels when
    the µm/px is unknown). The same placement napari gets from ``_layers.mask_layer_kwargs``.
    """
    unit = float(mpp) if mpp is not None else 1.0
    s = unit * float(downsample)
    t = unit * (float(downsample) - 1.0) / 2.0
    return [s, s], [t, t]


def ome_multiscales(name: str, mpp: float | None, downsample: float) -> list[dict[str, Any]]:
    """NGFF 0.5 ``multiscales`` for one 2-D level made at ``downsample`` (axes y/x, µm when ``mpp`` is known,
    scale and translation from :func:`ome_zarr_transform`), its array at path ``"0"``."""
    scale, translation = ome_zarr_transform(mpp, downsample)
    unit = {"unit": "micrometer"} if mpp is not None else {}
    return [
        {
            "name": name,
            "axes": [{"name": "y", "type": "space", **unit}, {"name": "x", "type": "space", **unit}],
            "datasets": [
                {
                    "path": "0",
                    "coordinateTransformations": [
                        {"type": "scale", "scale": scale},
                        {"type": "translation", "translation": translation},
                    ],
                }
            ],
        }
    ]


def _check_label_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
        raise InputError(f"label name {name!r} is not a plain folder name")


def write_ome_zarr_labels(
    path: str | os.PathLike[str],
    labels: np.ndarray,
    *,
    name: str,
    mpp: float | None,
    downsample: float,
    colors: Mapping[int, RGBA] | None = None,
    chunk: int = 512,
) -> Path:
    """Write ``labels`` as an OME-Zarr (NGFF 0.5, zarr v3) image-label at ``path/labels/<name>``.

    The root group declares ``ome.version = "0.5"``, ``labels/`` lists ``[name]``, and
    ``labels/<name>`` holds array ``0`` (``uint8``, ``chunk``² chunks, dimension names y, x) with
    ``multiscales`` (axes y/x, unit micrometer when ``mpp`` is known, else pixels; transforms from
    :func:`ome_zarr_transform`: ``scale = mpp·ds``, ``translation = mpp·(ds−1)/2``) and ``image-label``
    (``colors`` as ``label-value``/``rgba``). Also ``milkd`` facts (downsample, mpp) for the round trip.
    The folder is written next to the target under a temporary name and renamed onto it; an existing
    target is moved aside first and deleted only after the rename. Returns ``path``.
    """
    import zarr

    _check_label_name(name)
    target = Path(path)
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise InputError(f"{target}: labels must be 2-D (rows, cols), got shape {labels.shape}")
    if labels.dtype != np.uint8:
        if labels.size and (labels.min() < 0 or labels.max() > 255):
            raise InputError(f"{target}: label values must be 0..255")
        labels = labels.astype(np.uint8)
    if not downsample > 0 or (mpp is not None and not mpp > 0):
        raise InputError(f"{target}: downsample and µm/px must be positive")
    palette = dict(DEFAULT_LABEL_COLORS if colors is None else colors)
    ome_label = {
        "version": "0.5",
        "multiscales": ome_multiscales(name, mpp, downsample),
        "image-label": {
            "colors": [
                {"label-value": int(v), "rgba": [int(c) for c in rgba]} for v, rgba in sorted(palette.items())
            ],
        },
    }
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        root.attrs["ome"] = {"version": "0.5"}
        group = root.create_group("labels")
        group.attrs["ome"] = {"version": "0.5", "labels": [name]}
        label_group = group.create_group(name)
        label_group.attrs["ome"] = ome_label
        label_group.attrs["milkd"] = {"downsample": float(downsample), "mpp": mpp}
        side = max(1, int(chunk))
        array = label_group.create_array(
            "0",
            shape=labels.shape,
            chunks=(min(side, max(1, labels.shape[0])), min(side, max(1, labels.shape[1]))),
            dtype="uint8",
            fill_value=0,
            dimension_names=("y", "x"),
        )
        array[...] = labels
        _replace_folder(tmp, target)
    except OSError as exc:
        raise write_error(target, exc) from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _replace_folder(tmp: Path, target: Path) -> None:
    """Rename the finished folder ``tmp`` onto ``target``; an existing target is moved aside first."""
    aside = None
    if target.exists() or target.is_symlink():
        aside = target.with_name(f"{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, aside)
    try:
        os.replace(tmp, target)
    except BaseException:
        if aside is not None:
            os.replace(aside, target)
        raise
    if aside is not None:
        if aside.is_dir() and not aside.is_symlink():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            aside.unlink(missing_ok=True)


def read_ome_zarr_labels(path: str | os.PathLike[str], name: str) -> tuple[np.ndarray, float]:
    """Read label image ``name`` written by :func:`write_ome_zarr_labels`: ``(labels, downsample)``.

    The downsample comes from our ``milkd`` attributes, else from the NGFF scale when the axes have no
    unit (level-0 pixels). Raises :class:`InputError` when the folder, the label or its metadata is
    missing.
    """
    import zarr

    _check_label_name(name)
    folder = Path(path)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such OME-Zarr folder")
    try:
        group = zarr.open_group(str(folder / "labels" / name), mode="r")
        array = group["0"]
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError, ValueError) as exc:
        raise InputError(f"{folder}: no label image {name!r} ({exc.__class__.__name__})") from None
    attrs = group.attrs.asdict()
    milkd = attrs.get("milkd")
    if isinstance(milkd, dict) and isinstance(milkd.get("downsample"), int | float):
        downsample = float(milkd["downsample"])
    else:
        try:
            multiscale = attrs["ome"]["multiscales"][0]
            transforms = multiscale["datasets"][0]["coordinateTransformations"]
            scale = next(t["scale"] for t in transforms if t["type"] == "scale")
            if any("unit" in a for a in multiscale["axes"]):
                raise InputError(f"{folder}: label {name!r} is in µm and does not say its downsample")
            downsample = float(scale[-1])
        except (KeyError, IndexError, TypeError, StopIteration):
            raise InputError(f"{folder}: label {name!r} has no NGFF multiscales metadata") from None
    return np.asarray(array[...]), downsample
