"""QuPath GeoJSON: :func:`write_geojson` and :func:`read_geojson`.

Owns every byte of the GeoJSON files. May import numpy, shapely, the standard library,
:mod:`.model`, :mod:`.common`, ``core.atomic`` and ``core.errors``.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from napari_milkd.core.annotations.common import (
    MAX_COORDINATE_L0,
    _class_color,
    _clean,
    _finish,
    _items,
    _slide_box,
)
from napari_milkd.core.annotations.model import RGB, Annotation, Geometry, ImportResult
from napari_milkd.core.atomic import atomic_path
from napari_milkd.core.errors import InputError


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
