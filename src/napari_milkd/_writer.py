"""napari writer contributions: Labels and Shapes layers → QuPath GeoJSON / ASAP XML in level-0 pixels.

Owns the translation from a napari layer's data and state (``scale``, ``translate``, ``metadata``)
to level-0 polygons; the files themselves are written by ``core.annotations``. napari adapter ring:
Qt-free, and imports nothing from napari at all (napari hands us plain data and a state dict).

Geometry: a layer's world units come from its ``units`` and the slide's µm/px, from
``metadata["milkd_mpp"]`` (a number, or ``(mpp_y, mpp_x)``) or slide facts under
``metadata["milkd_slide"]`` (:func:`world_per_l0`): physical units (µm, nm, mm, ...) are converted and
need that µm/px — a layer in µm without one is refused, never guessed; pixel units mean µm when the
metadata has a µm/px (layers napari-milkd placed), else level-0 pixels. GeoJSON subtracts the slide's
bounds offset (``milkd_slide["bounds_l0"]``, MRXS), as QuPath expects.
A mask made at downsample ``ds`` sits at ``scale = mpp·ds``, ``translate = mpp·(ds−1)/2``
(``_layers.mask_layer_kwargs``); the writers invert exactly that, and handle any other scale/translate
the same way. Rotated, sheared or affine-transformed layers are refused.

Label value 1 is class ``"Tumor"``; other values are ``"label N"`` unless ``metadata["milkd_classes"]``
maps them (``{value: name}``). Shapes: polygons and rectangles as drawn, ellipses as 64-gons; paths
and lines are skipped; a ``class`` (or ``class_name``) feature column names each shape's class.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import shapely
from shapely.affinity import affine_transform
from shapely.geometry import MultiPolygon, Polygon

from napari_milkd._layers import SLIDE_META, napari_to_l0_xy
from napari_milkd.core.annotations import (
    Annotation,
    labels_to_polygons,
    polygonal_parts,
    write_asap_xml,
    write_geojson,
)
from napari_milkd.core.errors import InputError

#: Layer metadata keys the writers read.
MPP_META = "milkd_mpp"
CLASSES_META = "milkd_classes"

_SNAP = 1e-6


def _snap(value: float) -> float:
    """Round away floating-point noise (``0.499·4 / 0.499``) so exact pixel grids stay exact."""
    nearest = round(value * 2) / 2
    return float(nearest) if abs(value - nearest) < _SNAP * max(1.0, abs(value)) else float(value)


def layer_mpp(meta: Mapping[str, Any]) -> tuple[float, float] | None:
    """``(mpp_y, mpp_x)`` of the slide under a layer, from its metadata; ``None`` when unknown."""
    metadata = meta.get("metadata") or {}
    value = metadata.get(MPP_META)
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value), float(value)
    if isinstance(value, Sequence) and len(value) == 2 and all(isinstance(v, int | float) for v in value):
        y, x = (float(v) for v in value)
        if y > 0 and x > 0:
            return y, x
    facts = metadata.get(SLIDE_META)
    if isinstance(facts, Mapping):
        y, x = facts.get("mpp_y"), facts.get("mpp_x")
        if isinstance(y, int | float) and isinstance(x, int | float) and y > 0 and x > 0:
            return float(y), float(x)
    return None


#: World units napari may give a layer → µm per unit (``None``: pixels, no physical size).
_UNIT_UM: dict[str, float | None] = {
    "pixel": None,
    "px": None,
    "": None,
    "micrometer": 1.0,
    "micron": 1.0,
    "um": 1.0,
    "µm": 1.0,
    "nanometer": 1e-3,
    "nm": 1e-3,
    "millimeter": 1e3,
    "mm": 1e3,
    "centimeter": 1e4,
    "cm": 1e4,
    "meter": 1e6,
    "m": 1e6,
}


def _units_um(meta: Mapping[str, Any]) -> tuple[float | None, float | None] | None:
    """µm per world unit of the last two axes (``None`` per axis: pixels); ``None`` when no units given.

    napari layers carry ``units`` (pint units, or strings in a state dict); unknown units are refused.
    """
    units = meta.get("units")
    if units is None:
        return None
    if isinstance(units, str) or not isinstance(units, Sequence):
        units = [units, units]
    out: list[float | None] = []
    for unit in list(units)[-2:]:
        text = "" if unit is None else str(unit).strip().lower()
        if text not in _UNIT_UM:
            raise InputError(
                f"layer {meta.get('name', '')!r} is in {text!r} units: only pixels and metric lengths export"
            )
        out.append(_UNIT_UM[text])
    return out[0], out[1]


def _unit_names(meta: Mapping[str, Any]) -> str:
    units = meta.get("units")
    if isinstance(units, Sequence) and not isinstance(units, str):
        return ", ".join(str(u) for u in list(units)[-2:])
    return str(units)


def world_per_l0(meta: Mapping[str, Any]) -> np.ndarray:
    """World units per level-0 pixel of a layer's last two axes, ``(y, x)``, from its ``units`` and the
    slide's µm/px (:func:`layer_mpp`); refuses what it cannot know rather than guess.

    - physical units (µm, nm, mm, ...): the slide's µm/px is required (else :class:`InputError`);
    - pixel units with a µm/px in the metadata: the layer was placed by napari-milkd, world = µm;
    - pixel units without one: world units are level-0 pixels (slides of unknown µm/px).
    """
    mpp = layer_mpp(meta)
    units = _units_um(meta)
    if units is not None and any(u is not None for u in units):
        if mpp is None:
            raise InputError(
                f"layer {meta.get('name', '')!r} is in physical units ({_unit_names(meta)}) but carries "
                "no slide µm/px (metadata 'milkd_mpp' or 'milkd_slide'): cannot place it on level-0 "
                "pixels; draw it over a slide opened with napari-milkd, or set metadata['milkd_mpp']"
            )
        per_unit = np.array([u if u is not None else np.nan for u in units], dtype=float)
        if np.isnan(per_unit).any():
            raise InputError(f"layer {meta.get('name', '')!r} mixes pixel and physical units across axes")
        return np.asarray(mpp, dtype=float) / per_unit
    return np.asarray(mpp or (1.0, 1.0), dtype=float)


def layer_offset_l0(meta: Mapping[str, Any]) -> tuple[float, float]:
    """``(x, y)`` bounds offset of the slide under a layer (``milkd_slide`` facts' ``bounds_l0``), or 0.

    QuPath shows slides with ``openslide.bounds-*`` (MRXS) cropped to their bounds: its coordinates
    are level-0 minus this offset."""
    facts = (meta.get("metadata") or {}).get(SLIDE_META)
    bounds = facts.get("bounds_l0") if isinstance(facts, Mapping) else None
    if (
        isinstance(bounds, Sequence)
        and len(bounds) >= 2
        and all(isinstance(v, int | float) for v in bounds[:2])
    ):
        return float(bounds[0]), float(bounds[1])
    return 0.0, 0.0


def _plane_transform(meta: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The last two axes' ``(scale, translate)``; refuses rotated, sheared or affine layers."""
    ndim = len(meta.get("scale", (1, 1)))
    scale = np.asarray(meta.get("scale", np.ones(ndim)), dtype=float)[-2:]
    translate = np.asarray(meta.get("translate", np.zeros(ndim)), dtype=float)[-2:]
    checks = (
        ("rotate", np.eye(ndim)),
        ("shear", np.zeros(ndim * (ndim - 1) // 2)),
        ("affine", np.eye(ndim + 1)),
    )
    for key, identity in checks:
        value = meta.get(key)
        if value is None:
            continue
        array = np.asarray(value, dtype=float)
        if array.shape == identity.shape and not np.allclose(array, identity):
            raise InputError(
                f"layer {meta.get('name', '')!r} is {key}d: only scaled/translated layers export"
            )
    if np.any(scale <= 0):
        raise InputError(f"layer {meta.get('name', '')!r} has a non-positive scale {scale.tolist()}")
    return scale, translate


def _class_names(meta: Mapping[str, Any]) -> dict[int, str]:
    names = {1: "Tumor"}
    given = (meta.get("metadata") or {}).get(CLASSES_META)
    if isinstance(given, Mapping):
        for key, value in given.items():
            try:
                names[int(key)] = str(value)
            except (TypeError, ValueError):
                continue
    return names


def labels_annotations(data: Any, meta: Mapping[str, Any]) -> list[Annotation]:
    """Polygons (level-0 ``(x, y)`` pixels, corner origin) of every non-zero value of a Labels layer."""
    if isinstance(data, list | tuple):  # multiscale: the finest level
        data = data[0]
    labels = np.asarray(data)
    while labels.ndim > 2 and labels.shape[0] == 1:
        labels = labels[0]
    if labels.ndim != 2:
        raise InputError(f"only 2-D label layers export, this one has shape {labels.shape}")
    scale, translate = _plane_transform(meta)
    mpp = world_per_l0(meta)  # world units per level-0 pixel
    ds_y, ds_x = (_snap(v) for v in scale / mpp)
    # Pixel (r, c) centre: world r·s + t → level-0 (napari data) (r·s + t)/mpp → corner convention + ½;
    # its left/top edge is half a pixel (ds/2 level-0 pixels) before the centre.
    off_y, off_x = (_snap(v) for v in translate / mpp + 0.5 - np.array([ds_y, ds_x]) / 2)
    names = _class_names(meta)
    out: list[Annotation] = []
    for value, polygons in labels_to_polygons(labels, 1.0, simplify_px=0.5).items():
        name = names.get(value, f"label {value}")
        for polygon in polygons:
            placed = affine_transform(polygon, [ds_x, 0, 0, ds_y, off_x, off_y])
            out.append(Annotation(placed, name, {"label": value}))
    return out


def _ellipse(vertices: np.ndarray, n: int = 64) -> np.ndarray:
    """napari stores an ellipse as its bounding box's 4 corners; sample the ellipse itself."""
    centre = vertices.mean(axis=0)
    u = (vertices[1] - vertices[0]) / 2
    w = (vertices[3] - vertices[0]) / 2
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return centre + np.cos(t)[:, None] * u + np.sin(t)[:, None] * w


def _shape_classes(meta: Mapping[str, Any], count: int) -> list[str]:
    for table in (meta.get("features"), meta.get("properties")):
        if table is None:
            continue
        for column in ("class", "class_name", "classification"):
            try:
                values = list(table[column])
            except (KeyError, TypeError, IndexError):
                continue
            if len(values) == count:
                return [str(v) if v is not None and str(v) not in ("", "nan") else "Tumor" for v in values]
    return ["Tumor"] * count


def shapes_annotations(data: Any, meta: Mapping[str, Any]) -> list[Annotation]:
    """Polygons (level-0 ``(x, y)`` pixels, corner origin) of the closed shapes of a Shapes layer."""
    shapes = list(data) if data is not None else []
    types = meta.get("shape_type") or ["polygon"] * len(shapes)
    if isinstance(types, str):
        types = [types] * len(shapes)
    scale, translate = _plane_transform(meta)
    mpp = world_per_l0(meta)  # world units per level-0 pixel
    classes = _shape_classes(meta, len(shapes))
    out: list[Annotation] = []
    for index, (vertices, kind) in enumerate(zip(shapes, types, strict=False)):
        if kind not in ("polygon", "rectangle", "ellipse"):
            continue
        rc = np.asarray(vertices, dtype=float)[:, -2:]
        if kind == "ellipse" and len(rc) == 4:
            rc = _ellipse(rc)
        if len(rc) < 3:
            continue
        xy_l0 = napari_to_l0_xy((rc * scale + translate) / mpp)
        polygon = Polygon(xy_l0)
        geometry = polygon if polygon.is_valid else shapely.make_valid(polygon)
        parts = polygonal_parts(geometry)
        if not parts:
            continue
        merged = parts[0] if len(parts) == 1 else MultiPolygon(parts)
        out.append(Annotation(merged, classes[index], {"shape": index}))
    return out


def _write(
    path: str,
    annotations: list[Annotation],
    meta: Mapping[str, Any],
    writer: Callable[..., int],
    what: str,
) -> list[str]:
    if not annotations:
        raise InputError(f"layer {meta.get('name', '')!r} has no {what} to save")
    writer(path, annotations)
    return [path]


def _geojson_writer(meta: Mapping[str, Any]) -> Callable[..., int]:
    mpp = layer_mpp(meta)

    offset = layer_offset_l0(meta)

    def write(path: str, annotations: list[Annotation]) -> int:
        return write_geojson(
            path, annotations, mpp=None if mpp is None else (mpp[0] + mpp[1]) / 2, offset_l0=offset
        )

    return write


def write_labels_geojson(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """napari writer: a Labels layer → QuPath GeoJSON (one Feature per connected region and label)."""
    return _write(path, labels_annotations(data, meta), meta, _geojson_writer(meta), "labelled pixels")


def write_labels_asap(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """napari writer: a Labels layer → ASAP XML (holes as group ``_2``)."""
    return _write(path, labels_annotations(data, meta), meta, write_asap_xml, "labelled pixels")


def write_shapes_geojson(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """napari writer: the polygons, rectangles and ellipses of a Shapes layer → QuPath GeoJSON."""
    return _write(path, shapes_annotations(data, meta), meta, _geojson_writer(meta), "closed shapes")


def write_shapes_asap(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """napari writer: the polygons, rectangles and ellipses of a Shapes layer → ASAP XML."""
    return _write(path, shapes_annotations(data, meta), meta, write_asap_xml, "closed shapes")
