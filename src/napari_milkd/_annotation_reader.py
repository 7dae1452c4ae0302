"""napari reader contribution: QuPath GeoJSON and ASAP XML annotation files as one Shapes layer.

Owns recognising an annotation file quickly (a ``.geojson`` holding GeoJSON Features, an ``.xml`` whose
root element is ``<ASAP_Annotations>``; anything else is left to other readers: ``None``) and turning
what ``core.annotations`` reads into a Shapes layer: one polygon per region, coloured by class. The
files are parsed by :func:`napari_milkd.core.annotations.io.read_annotations` (the same reader as the
widget's Import… and ``milkd annotations``); nothing here parses geometry. Touches no Qt, and uses
napari only when it is already loaded (there is no viewer otherwise): to find the slide in the current
viewer and to notify (without napari, notices are Python :class:`AnnotationWarning` warnings).

Coordinates:

- the files hold level-0 ``(x, y)`` pixels with the origin at the top-left **corner** of pixel
  ``(0, 0)`` (QuPath, ASAP; QuPath's relative to the slide's bounds on MRXS slides, corrected with the
  slide's ``bounds_l0`` offset when the slide is known);
- the file is read whole, as it is (not clipped to the slide); offsets and repairs are the core
  reader's, listed under ``metadata["milkd_annotations"]["warnings"]``;
- the layer's data are napari ``(row, col)`` = ``(y, x)`` level-0 coordinates with napari's
  pixel-**centre** origin, i.e. ``(y − ½, x − ½)`` (:func:`~napari_milkd._layers.l0_xy_to_napari`),
  exactly like the slide layer's level 0;
- placement: a reader is not handed the viewer, so when ``napari.current_viewer()`` holds exactly one
  slide opened by napari-milkd (an image layer with ``metadata["milkd_slide"]``), the layer takes that
  layer's ``scale``, ``translate`` and ``units`` (µm when the slide's µm/px is known) and lies on it;
  with none or several, it gets ``scale = (1, 1)``: world units are level-0 pixels, a napari warning
  says so and which slide is needed. ``metadata["milkd_annotations"]["placed_on"]`` says which.

Geometry napari cannot show: a napari shape has no holes. Each region is one polygon (its exterior,
faint fill, class-coloured edge) and each of its holes a closed, unfilled ``path`` in the same colour
(feature ``ring = "hole"``), so holes show as outlines; the region's faint fill also covers its
holes. Saving this layer back (File ▸ Save, the milkd writers) writes the regions only — paths are not
regions — so holes are not written back; ``milkd annotations FILE --to OUT`` converts files keeping
them. Multipolygons become one polygon per part.

Colours: the file's own colour of the object (QuPath ``classification.color``, ASAP ``Color``), else
QuPath's default class colours (``Tumor``, ``Normal``, ``Stroma``, ``Other``, ...; ``Ignore*`` grey),
else a colour hashed from the class name (the same as the milkd writers use); unclassified objects are
light grey. Faces are drawn at :data:`FACE_ALPHA` so the tissue stays visible. ``features`` hold
``class`` (the base class; ``"(unclassified)"`` when none), ``meaning`` (what milkd makes of it:
``positive``/``negative``/``ignored``/``exclusion``, or ``unknown`` for a missing class or one the default
map does not know: both are ignored, never painted), ``ring`` (``region``/``hole``), ``annotation``
(its index in the file) and ``id``.
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from napari_milkd._layers import SLIDE_META, LayerDataTuple, l0_xy_to_napari
from napari_milkd.core.annotations.classes import UNCLASSIFIED, class_label
from napari_milkd.core.annotations.common import DEFAULT_CLASS_COLORS, _class_color
from napari_milkd.core.annotations.geometry import polygonal_parts
from napari_milkd.core.annotations.io import annotation_report, read_annotations
from napari_milkd.core.annotations.model import RGB, Annotation, AnnotationWarning, ImportResult

ReaderFunction = Callable[[str | list[str]], list[LayerDataTuple]]

#: Metadata key under which the file, its format, placement and class table travel with the layer.
ANNOTATIONS_META = "milkd_annotations"
#: Metadata key of the slide's µm/px the milkd writers read (see ``_writer.py``).
MPP_META = "milkd_mpp"
#: Layer names: ``"<file stem> (<format name>)"``.
FORMAT_NAMES = {"geojson": "GeoJSON", "asap": "ASAP XML"}
#: Opacity of the faces (edges are opaque): outlines with a hint of fill, tissue stays visible.
FACE_ALPHA = 0.12
#: Opacity of hole outlines (region edges are opaque).
HOLE_EDGE_ALPHA = 0.7
#: Colour of objects without a class, and of QuPath's ``Ignore*`` class.
UNCLASSIFIED_COLOR: RGB = (200, 200, 200)
IGNORE_COLOR: RGB = (180, 180, 180)
#: What the layer's metadata says about holes.
HOLES_NOTE = (
    "napari shapes have no holes: each hole is a closed unfilled path (feature ring='hole') in its "
    "region's colour, and the region's faint fill also covers it; saving this layer writes regions "
    "without holes"
)

#: How much of a file is looked at to decide whether it is ours.
_SNIFF_BYTES = 64 * 1024
_GEOJSON_TYPE = re.compile(rb'"type"\s*:\s*"Feature(Collection)?"')


def _single(path: str | list[str]) -> str | None:
    if isinstance(path, list):
        return path[0] if len(path) == 1 else None
    return path


def is_geojson_features(path: str | Path) -> bool:
    """True when ``path`` starts like GeoJSON Features: a JSON object or list whose first 64 KiB name a
    ``"Feature"`` or ``"FeatureCollection"`` (a bare geometry or other JSON is not ours)."""
    try:
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError:
        return False
    head = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    return head[:1] in (b"{", b"[") and _GEOJSON_TYPE.search(head) is not None


def is_asap_xml(path: str | Path) -> bool:
    """True when the root element of the XML file ``path`` is ``<ASAP_Annotations>`` (read up to the
    root's start tag only, with defusedxml: no DTDs, no entities)."""
    import defusedxml.ElementTree as DET

    try:
        for _event, element in DET.iterparse(
            str(path), events=("start",), forbid_dtd=True, forbid_entities=True, forbid_external=True
        ):
            return element.tag == "ASAP_Annotations"
    except Exception:  # not XML, unsafe XML, unreadable: not ours
        return False
    return False


def napari_get_reader(path: str | list[str]) -> ReaderFunction | None:
    """Return :func:`read_annotation_layer` for one QuPath GeoJSON (``.geojson`` with Features) or ASAP
    XML file (``.xml`` whose root is ``<ASAP_Annotations>``), else ``None``."""
    single = _single(path)
    if single is None:
        return None
    p = Path(single)
    if p.is_dir():
        return None
    suffix = p.suffix.lower()
    if suffix == ".geojson" and is_geojson_features(p):
        return read_annotation_layer
    if suffix == ".xml" and is_asap_xml(p):
        return read_annotation_layer
    return None


# --- where the layer goes ---------------------------------------------------------------------------


def _viewer_slides() -> list[Any]:
    """Image layers of ``napari.current_viewer()`` opened by napari-milkd (one per slide file)."""
    if "napari" not in sys.modules:  # no viewer without napari: stay light (CLI, scripts, npe2.read)
        return []
    import napari
    from napari.layers import Image

    viewer = napari.current_viewer()
    if viewer is None:
        return []
    found: dict[str, Any] = {}
    for layer in viewer.layers:
        facts = layer.metadata.get(SLIDE_META) if isinstance(layer, Image) else None
        if isinstance(facts, Mapping):
            found.setdefault(str(facts.get("path", layer.name)), layer)
    return list(found.values())


def _units(layer: Any) -> tuple[str, str] | None:
    units = getattr(layer, "units", None)
    if units is None:
        return None
    names = tuple(str(u) for u in list(units)[-2:])
    return None if all(n in ("pixel", "px", "") for n in names) else (names[0], names[1])


def _offset_l0(facts: Mapping[str, Any]) -> tuple[float, float]:
    bounds = facts.get("bounds_l0")
    if isinstance(bounds, list | tuple) and len(bounds) >= 2:
        return float(bounds[0]), float(bounds[1])
    return 0.0, 0.0


def _placement(file_name: str) -> tuple[dict[str, Any], dict[str, Any], tuple[float, float], str | None]:
    """``(layer kwargs, metadata, offset_l0, warning)`` for the slide of the current viewer, if one."""
    slides = _viewer_slides()
    if len(slides) == 1:
        layer = slides[0]
        facts = dict(layer.metadata[SLIDE_META])
        kwargs: dict[str, Any] = {
            "scale": tuple(float(v) for v in layer.scale[-2:]),
            "translate": tuple(float(v) for v in layer.translate[-2:]),
        }
        units = _units(layer)
        if units:
            kwargs["units"] = units
        meta: dict[str, Any] = {SLIDE_META: facts}
        mpp_y, mpp_x = facts.get("mpp_y"), facts.get("mpp_x")
        if isinstance(mpp_y, int | float) and isinstance(mpp_x, int | float) and mpp_y > 0 and mpp_x > 0:
            meta[MPP_META] = (float(mpp_y), float(mpp_x))
        placed = {
            "placed_on": layer.name,
            "slide_path": facts.get("path"),
            "scale_source": f"the scale and translate of slide layer {layer.name!r}, the only slide "
            "opened by napari-milkd in the viewer",
        }
        return kwargs, meta | {ANNOTATIONS_META: placed}, _offset_l0(facts), None
    if slides:
        names = ", ".join(repr(s.name) for s in slides)
        why = f"several slides are open ({names}), so none was chosen"
    else:
        why = "no slide opened by napari-milkd is in the viewer"
    warning = (
        f"{file_name}: shapes are in level-0 pixels (scale 1), not on a slide: {why}. Open the slide "
        "these annotations were drawn on with napari-milkd (alone), then open this file again."
    )
    placed = {"placed_on": None, "slide_path": None, "scale_source": f"level-0 pixels (scale 1): {why}"}
    return {"scale": (1.0, 1.0)}, {ANNOTATIONS_META: placed}, (0.0, 0.0), warning


# --- colours and shapes -----------------------------------------------------------------------------


def _rgb_from(value: Any) -> RGB | None:
    """A colour a file gives: ``[r, g, b]`` (QuPath), a packed integer (old QuPath), ``"#RRGGBB"`` (ASAP)."""
    if isinstance(value, list | tuple) and len(value) >= 3:
        try:
            rgb = tuple(int(v) for v in value[:3])
        except (TypeError, ValueError):
            return None
        return rgb if all(0 <= c <= 255 for c in rgb) else None  # type: ignore[return-value]
    if isinstance(value, int) and not isinstance(value, bool):
        v = value & 0xFFFFFF
        return (v >> 16) & 255, (v >> 8) & 255, v & 255
    if isinstance(value, str):
        text = value.strip().lstrip("#")
        if re.fullmatch(r"[0-9a-fA-F]{6}", text):
            return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)
    return None


def annotation_color(annotation: Annotation) -> RGB:
    """The colour of an annotation: the file's (QuPath ``classification.color``, ASAP ``Color``), else
    QuPath's default for its class (``Ignore*`` grey), else a colour hashed from the class name."""
    props = annotation.properties
    cls = props.get("classification")
    own = None
    if isinstance(cls, Mapping):  # QuPath 0.4+: "color": [r, g, b]; older: "colorRGB": packed int
        own = _rgb_from(cls.get("color", cls.get("colorRGB")))
    if own is None and "Color" in props:  # ASAP
        own = _rgb_from(props.get("Color"))
    if own is not None:
        return own
    name = annotation.class_name
    if name is None:
        return UNCLASSIFIED_COLOR
    if name.strip().casefold().startswith("ignore"):
        return IGNORE_COLOR
    if name in DEFAULT_CLASS_COLORS:
        return DEFAULT_CLASS_COLORS[name]
    return _class_color(name, None, UNCLASSIFIED_COLOR)


def meaning(class_name: str | None) -> str:
    """What milkd makes of a class under the default map: its label, or ``unknown`` (ignored)."""
    label, known = class_label(class_name)
    return label if known else "unknown"


def _ring_rc(ring: Any, closed: bool) -> np.ndarray:
    xy = np.asarray(ring.coords, dtype=float)[:, :2]
    if not closed and len(xy) > 1 and np.array_equal(xy[0], xy[-1]):
        xy = xy[:-1]
    return l0_xy_to_napari(xy)


def shapes_from_annotations(
    result: ImportResult,
) -> tuple[list[np.ndarray], list[str], np.ndarray, np.ndarray, dict[str, list[Any]]]:
    """``(data, shape types, face colours, edge colours, features)`` of the Shapes layer (see module)."""
    data: list[np.ndarray] = []
    types: list[str] = []
    faces: list[tuple[float, ...]] = []
    edges: list[tuple[float, ...]] = []
    features: dict[str, list[Any]] = {"class": [], "meaning": [], "ring": [], "annotation": [], "id": []}
    for index, annotation in enumerate(result.annotations):
        rgb = np.asarray(annotation_color(annotation), dtype=float) / 255.0
        name = UNCLASSIFIED if annotation.class_name is None else annotation.class_name
        what = meaning(annotation.class_name)
        for polygon in polygonal_parts(annotation.geometry):
            rings = [("region", polygon.exterior), *(("hole", r) for r in polygon.interiors)]
            for ring_kind, ring in rings:
                hole = ring_kind == "hole"
                data.append(_ring_rc(ring, closed=hole))
                types.append("path" if hole else "polygon")
                faces.append((*rgb, 0.0 if hole else FACE_ALPHA))
                edges.append((*rgb, HOLE_EDGE_ALPHA if hole else 1.0))
                features["class"].append(name)
                features["meaning"].append(what)
                features["ring"].append(ring_kind)
                features["annotation"].append(index)
                features["id"].append(annotation.id or "")
    return data, types, np.asarray(faces, float), np.asarray(edges, float), features


def _edge_width(data: list[np.ndarray], facts: Mapping[str, Any] | None) -> float:
    """Edges readable at the whole-file view: 1/400 of the annotations' extent, at least one level-0
    pixel, at most 1/800 of the slide (as the sample's outline)."""
    points = np.concatenate(data)
    extent = float((points.max(axis=0) - points.min(axis=0)).max())
    width = max(1.0, extent / 400)
    levels = facts.get("levels") if facts else None
    if levels:
        size = max(float(levels[0].get("width", 0)), float(levels[0].get("height", 0)))
        if size > 0:
            width = min(width, max(1.0, size / 800))
    return width


def _notify(message: str) -> None:
    """A napari warning notification inside napari, else a Python :class:`AnnotationWarning`."""
    if "napari" not in sys.modules:
        warnings.warn(message, AnnotationWarning, stacklevel=3)
        return
    from napari.utils.notifications import show_warning

    show_warning(message)


def read_annotation_layer(path: str | list[str]) -> list[LayerDataTuple]:
    """The annotations of one QuPath GeoJSON / ASAP XML file as a Shapes layer (see the module).

    Raises :class:`~napari_milkd.core.errors.InputError` (napari shows it) when the file holds no
    usable polygons."""
    if isinstance(path, list):
        path = path[0]
    file = Path(path)
    fmt = "asap" if file.suffix.lower() == ".xml" else "geojson"
    kwargs, metadata, offset, warning = _placement(file.name)
    result = read_annotations(file, offset_l0=offset)
    report = annotation_report(result)
    data, types, faces, edges, features = shapes_from_annotations(result)
    info = metadata[ANNOTATIONS_META]
    info.update(
        file=str(file),
        format=fmt,
        coordinates="data are level-0 (row, col) = (y - 0.5, x - 0.5) of the file's corner-origin (x, y)",
        holes=HOLES_NOTE,
        classes=[
            row.to_dict() | {"meaning": meaning(None if row.name == UNCLASSIFIED else row.name)}
            for row in report.classes
        ],
        skipped=dict(report.skipped),
        warnings=list(result.warnings),
    )
    layer_kwargs: dict[str, Any] = {
        "name": f"{file.stem} ({FORMAT_NAMES[fmt]})",
        "shape_type": types,
        "face_color": faces,
        "edge_color": edges,
        "edge_width": _edge_width(data, metadata.get(SLIDE_META)),
        "features": features,
        "metadata": metadata,
        **kwargs,
    }
    if warning:
        _notify(warning)
    notes = [m for m in (report.message, *result.warnings[:2]) if m]
    if notes:
        extra = len(result.warnings) - 2
        more = f" (and {extra} more, see the layer's metadata)" if extra > 0 else ""
        _notify(f"{file.name}: {'; '.join(notes)}{more}")
    return [(data, layer_kwargs, "shapes")]
