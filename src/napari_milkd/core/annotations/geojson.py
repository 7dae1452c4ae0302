"""QuPath GeoJSON: :func:`write_geojson` and :func:`read_geojson`.

Owns every byte of the GeoJSON files and QuPath's object model (object types, derived classes). May
import numpy, shapely, orjson, the standard library, :mod:`.model`, :mod:`.classes`, :mod:`.common`,
``core.atomic`` and ``core.errors``.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import uuid
from collections.abc import Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from napari_milkd.core.annotations.classes import base_class
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

#: Coordinates are written rounded to this many decimals (0.01 px: QuPath's own precision is no finer
#: where it matters, and files stay small).
COORDINATE_DECIMALS = 2
#: Prefix of every measurement name we write, so none clashes with a column QuPath computes itself
#: ("Area µm^2", "Perimeter µm", "Num Detections", ...).
MEASUREMENT_PREFIX = "milkd: "


def _ring_coordinates(ring: Any, dx: float, dy: float) -> list[list[float]]:
    xy = np.round(np.asarray(ring.coords)[:, :2] - (dx, dy), COORDINATE_DECIMALS)
    return [[_json_number(x), _json_number(y)] for x, y in xy.tolist()]


def _json_number(value: float) -> float | int:
    return int(value) if float(value).is_integer() and abs(value) < 2**53 else float(value)


def _polygon_geojson(polygon: Polygon, offset_l0: tuple[float, float]) -> dict[str, Any]:
    polygon = shapely.orient_polygons(polygon)  # RFC 7946: exterior counter-clockwise, holes clockwise
    rings = [polygon.exterior, *polygon.interiors]
    dx, dy = offset_l0
    return {"type": "Polygon", "coordinates": [_ring_coordinates(r, dx, dy) for r in rings]}


def measurement_name(name: str) -> str:
    """The name a measurement is written under: prefixed with :data:`MEASUREMENT_PREFIX`."""
    return name if name.startswith(MEASUREMENT_PREFIX) else MEASUREMENT_PREFIX + name


def write_geojson(
    path: str | os.PathLike[str],
    polygons: Iterable[Geometry | Annotation],
    *,
    name: str = "Tumor",
    color: RGB = (200, 0, 0),
    colors: Mapping[str, RGB] | None = None,
    measurements: Mapping[str, float] | None = None,
    mpp: float | None = None,
    offset_l0: tuple[float, float] = (0.0, 0.0),
) -> int:
    """Write QuPath (0.4+) GeoJSON: a FeatureCollection with one annotation Feature per polygon.

    ``polygons`` are level-0 ``(x, y)`` polygons (corner origin) or multipolygons (one Feature per part,
    i.e. per connected component) or :class:`Annotation` objects (which bring their own class name).
    Each Feature gets a fresh UUID ``id``, a Polygon geometry with holes as inner rings (exterior
    counter-clockwise), ``properties.objectType = "annotation"`` and ``properties.classification =
    {"name", "color": [r, g, b]}`` (``name``/``color`` for plain polygons; ``colors`` or QuPath's
    defaults for other classes). Coordinates are rounded to 0.01 px. ``measurements`` (name → number)
    go into every Feature; with ``mpp`` each Feature also gets its area in µm²; every measurement name
    is prefixed ``"milkd: "`` (:func:`measurement_name`) so none clashes with QuPath's own columns.
    ``offset_l0 = (x, y)`` is subtracted from every coordinate: pass the slide's bounds offset
    (``openslide.bounds-x/y``) for slides QuPath shows cropped to their bounds (MRXS). Streamed feature
    by feature into a temporary file that replaces ``path`` only when complete. Returns the number of
    features written.
    """
    extra = {measurement_name(str(k)): float(v) for k, v in (measurements or {}).items()}
    offset = (float(offset_l0[0]), float(offset_l0[1]))
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write('{"type": "FeatureCollection", "features": [')
        used_ids: set[str] = set()
        for polygon, class_name, source in _items(polygons, name):
            rgb = (
                tuple(int(c) for c in color)
                if class_name == name
                else _class_color(class_name, colors, color)
            )
            props: dict[str, Any] = {"objectType": "annotation"}
            if class_name is not None:  # an unclassified annotation stays unclassified
                props["classification"] = {"name": class_name, "color": list(rgb)}
            values = dict(extra)
            if mpp is not None:
                values[measurement_name("Area µm^2")] = float(polygon.area) * float(mpp) ** 2
            if values:
                props["measurements"] = values
            fid = str(uuid.uuid4())
            if source is not None:
                # Carried through from an imported QuPath object: its lock and name, and its UUID once.
                for key in ("isLocked", "name"):
                    if key in source.properties:
                        props[key] = source.properties[key]
                if source.id and _is_uuid(source.id) and source.id not in used_ids:
                    fid = source.id
                    used_ids.add(fid)
            feature = {
                "type": "Feature",
                "id": fid,
                "geometry": _polygon_geojson(polygon, offset),
                "properties": props,
            }
            f.write(("\n" if count == 0 else ",\n") + json.dumps(feature, ensure_ascii=False))
            count += 1
        f.write("\n]}\n")
        f.flush()
        os.fsync(f.fileno())
    return count


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


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
        try:
            x, y = float(x), float(y)
        except OverflowError:  # an integer with hundreds of digits
            raise ValueError("a coordinate is implausibly large") from None
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

#: How deep geometry collections may nest (QuPath writes them one level deep); deeper ones are skipped as
#: malformed instead of exhausting Python's recursion limit.
MAX_COLLECTION_DEPTH = 16


class _TooDeep(ValueError):
    """Geometry collections nested deeper than :data:`MAX_COLLECTION_DEPTH`."""


def _geojson_geometry(geometry: Any, depth: int = 0) -> tuple[BaseGeometry | None, str | None]:
    """``(geometry, None)``, or ``(None, why)`` for geometry that is not polygonal or malformed
    (``depth``: how many geometry collections hold this one)."""
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
            if depth >= MAX_COLLECTION_DEPTH:
                raise _TooDeep(f"geometry collections nested more than {MAX_COLLECTION_DEPTH} deep")
            polys = [g for g, _ in (_geojson_geometry(m, depth + 1) for m in members) if g is not None]
            if not polys:
                raise ValueError("no polygons in it")
            return shapely.union_all([shapely.make_valid(p) for p in polys]), None
    except _TooDeep as exc:
        if depth:
            raise  # up to the outermost collection, which the message names
        return None, f"malformed {kind} ({exc}), skipped"
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


#: QuPath 0.2–0.3 name the object type in the Feature's ``id``; 0.4+ in ``properties.objectType``.
_LEGACY_OBJECT_TYPES = {
    "PathAnnotationObject": "annotation",
    "PathDetectionObject": "detection",
    "PathCellObject": "cell",
    "PathTileObject": "tile",
    "TMACoreObject": "tma_core",
    "PathRootObject": "root",
}


def object_type(feature: Mapping[str, Any]) -> str:
    """A QuPath object's type: ``properties.objectType`` (0.4+), ``object_type`` or the legacy Feature
    ``id`` (``PathDetectionObject``, 0.2–0.3); plain GeoJSON without one counts as ``"annotation"``."""
    properties = feature.get("properties")
    if isinstance(properties, dict):
        for key in ("objectType", "object_type"):
            kind = properties.get(key)
            if isinstance(kind, str) and kind:
                return kind.strip().lower()
    fid = feature.get("id")
    if isinstance(fid, str) and fid in _LEGACY_OBJECT_TYPES:
        return _LEGACY_OBJECT_TYPES[fid]
    return "annotation"


def qupath_class(properties: Mapping[str, Any]) -> str | None:
    """The **base** class of a QuPath object's classification, or ``None`` when unclassified.

    ``{"name": "Tumor"}`` → ``"Tumor"``; derived classes keep their base, never their last part:
    ``{"names": ["Tumor", "Positive"]}`` (0.4+) and ``"Tumor: Positive"`` (older, as name or string)
    → ``"Tumor"``; ``"Stroma: Positive"`` → ``"Stroma"``.
    """
    cls = properties.get("classification")
    name: Any = None
    if isinstance(cls, dict):
        names = cls.get("names")
        if isinstance(names, list) and names and isinstance(names[0], str):
            name = names[0]
        else:
            name = cls.get("name")
    elif isinstance(cls, str):
        name = cls
    if not isinstance(name, str) or not name.strip():
        return None
    return base_class(name)


_NUMBER = (int, float)


def _fast_rings(coordinates: Any) -> list[np.ndarray] | None:
    """A Polygon's rings as float arrays when they are plainly well formed (numbers, closed, ≥ 4
    positions, finite, plausible), else ``None`` (the careful path then says what is wrong)."""
    if not isinstance(coordinates, list) or not coordinates:
        return None
    rings = []
    for ring in coordinates:
        if not isinstance(ring, list) or len(ring) < 4:
            return None
        for position in ring:
            if (
                type(position) is not list
                or len(position) != 2
                or type(position[0]) not in _NUMBER
                or type(position[1]) not in _NUMBER
            ):
                return None
        try:
            array = np.array(ring, dtype=float)
        except OverflowError:  # an integer beyond float range: the careful path says which feature
            return None
        if not (array[0] == array[-1]).all():
            return None
        rings.append(array)
    return rings


def _fast_polygons(
    features: list[dict[str, Any]], offset: tuple[float, float], slide_box: Polygon | None
) -> list[Polygon | None]:
    """Every plain Polygon feature built in bulk (vectorised shapely) when it is valid, has area and
    lies inside the slide; ``None`` for the others, which take the careful path with its warnings."""
    out: list[Polygon | None] = [None] * len(features)
    chunks: list[np.ndarray] = []
    ring_of: list[int] = []
    ring_polygon: list[int] = []
    owners: list[int] = []
    for index, feature in enumerate(features):
        geometry = feature.get("geometry") if feature else None
        if not isinstance(geometry, dict) or geometry.get("type") != "Polygon":
            continue
        rings = _fast_rings(geometry.get("coordinates"))
        if rings is None:
            continue
        slot = len(owners)
        owners.append(index)
        for ring in rings:
            ring_of.extend([len(ring_polygon)] * len(ring))
            ring_polygon.append(slot)
            chunks.append(ring)
    if not owners:
        return out
    coords = np.concatenate(chunks) + np.asarray(offset, dtype=float)
    ring_ids = np.asarray(ring_of)
    with np.errstate(all="ignore"):
        sane = np.isfinite(coords).all(axis=1) & (np.abs(coords) <= MAX_COORDINATE_L0).all(axis=1)
        bad_ring = np.zeros(len(ring_polygon), dtype=bool)
        np.logical_or.at(bad_ring, ring_ids, ~sane)
        bad_polygon = np.zeros(len(owners), dtype=bool)
        np.logical_or.at(bad_polygon, np.asarray(ring_polygon), bad_ring)
        coords = np.where(sane[:, None], coords, 0.0)
        rings = shapely.linearrings(coords, indices=ring_ids)
        polygons = shapely.polygons(rings, indices=np.asarray(ring_polygon))
        good = ~bad_polygon & shapely.is_valid(polygons) & (shapely.area(polygons) > 0)
        if slide_box is not None:
            good &= shapely.covers(slide_box, polygons)
    for slot in np.flatnonzero(good):
        out[owners[slot]] = polygons[slot]
    return out


def read_geojson(
    path: str | os.PathLike[str],
    *,
    slide_shape_l0: tuple[int, int] | None = None,
    offset_l0: tuple[float, float] = (0.0, 0.0),
    object_types: Collection[str] = ("annotation",),
) -> ImportResult:
    """Read polygon annotations from GeoJSON (QuPath 0.2–0.6 exports and plain GeoJSON).

    Accepts a FeatureCollection, a single Feature, a bare list of Features, or a bare geometry; reads
    Polygon, MultiPolygon (and the polygons of a GeometryCollection); other geometry (points, lines) is
    skipped with a warning. Only QuPath objects whose type (:func:`object_type`) is in
    ``object_types`` are read — by default annotations, the regions a pathologist drew; detections,
    cells, tiles are counted by type in ``ImportResult.skipped`` before any geometry is built. The
    class is the base class (:func:`qupath_class`); the feature's properties (``isLocked``,
    ``measurements``, the full classification) and id travel in the :class:`Annotation`.

    ``offset_l0 = (x, y)`` is added to every coordinate: QuPath's coordinates are relative to the
    slide's bounds (``openslide.bounds-x/y``) on slides it shows cropped (MRXS). Invalid polygons
    (self-intersecting) are repaired with ``shapely.make_valid``, keeping only their polygonal parts;
    empty ones are skipped. With ``slide_shape_l0 = (height, width)``, polygons are clipped to the
    slide and those entirely outside dropped. Every skip or repair is one line in ``warnings``.
    Raises :class:`InputError` when the file is missing, is not JSON, is not GeoJSON, has no features,
    or has nothing usable left.
    """
    with _no_cyclic_gc():  # 10⁵–10⁶ small dicts and lists: the cyclic GC would rescan them all, often
        return _read_geojson(Path(path), slide_shape_l0, offset_l0, object_types)


@contextlib.contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Pause Python's cyclic garbage collector (reference counting still frees everything)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _standard_json(path: Path, data: bytes) -> Any:
    """``data`` parsed by the standard library (NaN and Infinity refused), every failure one line."""
    try:
        return json.loads(data, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not JSON (not UTF-8 text)") from None
    except RecursionError:
        raise InputError(f"{path}: not JSON (nested too deeply)") from None
    except ValueError as exc:
        raise InputError(f"{path}: not JSON ({exc})") from None


def _read_geojson(
    path: Path,
    slide_shape_l0: tuple[int, int] | None,
    offset_l0: tuple[float, float],
    object_types: Collection[str],
) -> ImportResult:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, not a GeoJSON file") from None
    try:
        payload = orjson.loads(data)  # 2× faster than json on 10⁵-object exports
    except orjson.JSONDecodeError:
        # The standard parser decides what is wrong and says it in its words (and reads what orjson
        # refuses but JSON allows: integers beyond 64 bits, other Unicode encodings).
        payload = _standard_json(path, data)
    del data
    features = _feature_list(payload, path)
    del payload
    if not features:
        raise InputError(f"{path}: GeoJSON has no features")
    wanted = {t.strip().lower() for t in object_types}
    dx, dy = float(offset_l0[0]), float(offset_l0[1])
    slide_box = _slide_box(slide_shape_l0)
    found: list[Annotation] = []
    warnings: list[str] = []
    skipped: dict[str, int] = {}
    polygonal = 0
    wanted_features: list[tuple[int, dict[str, Any]]] = []
    for index, feature in enumerate(features):
        if not isinstance(feature, dict) or feature.get("type") != "Feature":
            wanted_features.append((index, {}))  # warned about below, in file order
            continue
        kind = object_type(feature)
        if kind not in wanted:  # before any geometry is built: detections can be 10⁶
            skipped[kind] = skipped.get(kind, 0) + 1
            continue
        wanted_features.append((index, feature))
    fast = _fast_polygons([f for _, f in wanted_features], (dx, dy), slide_box)
    for (index, feature), quick in zip(wanted_features, fast, strict=True):
        where = f"{path.name}: feature {index}"
        if not feature:
            warnings.append(f"{where}: not a GeoJSON Feature, skipped")
            continue
        raw = feature.get("geometry")
        if isinstance(raw, dict) and raw.get("type") in _POLYGONAL:
            polygonal += 1
        properties = feature.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        if quick is not None:  # a plain valid polygon inside the slide: nothing to repair or clip
            cleaned: Geometry | None = quick
        else:
            geometry, why = _geojson_geometry(raw)
            if geometry is None:
                warnings.append(f"{where}: {why}")
                continue
            if dx or dy:
                geometry = shapely.transform(geometry, lambda xy: xy + np.array([dx, dy]))
            with np.errstate(all="ignore"):
                try:
                    cleaned = _clean(geometry, where, warnings, slide_box)
                except (shapely.errors.GEOSException, ValueError) as exc:
                    warnings.append(f"{where}: geometry could not be repaired ({exc}), skipped")
                    continue
        if cleaned is None:
            continue
        fid = feature.get("id")
        if isinstance(fid, str) and fid in _LEGACY_OBJECT_TYPES:
            fid = None
        found.append(
            Annotation(
                cleaned,
                qupath_class(properties),
                properties,
                str(fid) if isinstance(fid, str | int) and not isinstance(fid, bool) else None,
            )
        )
    if polygonal == 0:
        if skipped and not warnings:
            what = ", ".join(f"{n} {k}" for k, n in skipped.items())
            raise InputError(
                f"{path}: no annotations to read (skipped {what}; only {', '.join(sorted(wanted))} "
                "objects are regions)"
            )
        raise InputError(f"{path}: no polygon features (found {len(features)} features of other kinds)")
    return _finish(path, "GeoJSON", found, warnings, skipped)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")
