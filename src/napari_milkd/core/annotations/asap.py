"""ASAP XML (Camelyon16): :func:`write_asap_xml` and :func:`read_asap_xml`.

Owns every byte of the ASAP files, the Camelyon16 groups (tumour groups, the ``_2`` exclusions) and
nested group chains. May import numpy, shapely, defusedxml (parsing is always defused), the standard
library, :mod:`.model`, :mod:`.geometry`, :mod:`.classes`, :mod:`.common`, ``core.atomic`` and
``core.errors``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon

from napari_milkd.core.annotations.classes import EXCLUSION, IGNORED, class_key, class_label
from napari_milkd.core.annotations.common import (
    MAX_COORDINATE_L0,
    _class_color,
    _clean,
    _finish,
    _items,
    _slide_box,
)
from napari_milkd.core.annotations.geometry import polygonal_parts
from napari_milkd.core.annotations.model import Annotation, Geometry, ImportResult
from napari_milkd.core.atomic import atomic_path
from napari_milkd.core.errors import InputError

#: ASAP groups that mean "tumour" (Camelyon16) and the group of exclusion holes.
ASAP_POSITIVE_GROUPS = frozenset({"tumor", "_0", "_1"})
ASAP_EXCLUSION_GROUP = "_2"


def _xml_number(value: float) -> str:
    return f"{value:.10g}"


def _cut_line_x(hole: Polygon) -> float | None:
    """An ``x`` whose vertical line crosses ``hole``'s interior, off integer and half-integer pixels."""
    rx = hole.representative_point().x
    miny, maxy = hole.bounds[1] - 1, hole.bounds[3] + 1
    for x in (math.floor(rx) + 0.25, math.floor(rx) + 0.75, rx):
        if shapely.LineString([(x, miny), (x, maxy)]).intersection(hole).length > 0:
            return x
    return None


def _without_occupied_holes(
    polygon: Polygon, tree: shapely.STRtree, others: np.ndarray, me: int, depth: int = 0
) -> list[Polygon]:
    """``polygon`` cut into pieces whose holes hold no other polygon (islands), same area.

    ASAP's own mask conversion paints exclusions (``_2``) after every other group, so a hole written as
    ``_2`` would erase an island drawn inside it. Cutting the polygon with a vertical line through such
    a hole turns the hole into notches of the pieces; the islands stay their own polygons.
    """
    for ring in polygon.interiors:
        hole = Polygon(ring)
        occupied = any(i != me and hole.contains(others[i].representative_point()) for i in tree.query(hole))
        if not occupied or depth > 64:
            continue
        x = _cut_line_x(hole)
        if x is None:
            continue
        minx, miny, maxx, maxy = polygon.bounds
        pieces: list[Polygon] = []
        for half in (
            shapely.box(minx - 1, miny - 1, x, maxy + 1),
            shapely.box(x, miny - 1, maxx + 1, maxy + 1),
        ):
            for part in polygonal_parts(shapely.intersection(polygon, half)):
                pieces.extend(_without_occupied_holes(part, tree, others, me, depth + 1))
        return pieces
    return [polygon]


def write_asap_xml(
    path: str | os.PathLike[str],
    polygons: Iterable[Geometry | Annotation],
    *,
    group: str = "Tumor",
    color: str = "#F4FA58",
    colors: Mapping[str, str] | None = None,
    hole_color: str = "#64FE2E",
    offset_l0: tuple[float, float] = (0.0, 0.0),
) -> int:
    """Write ASAP XML (the Camelyon16 format): one ``Polygon`` annotation per polygon exterior.

    Coordinates are level-0 ``(x, y)`` pixels, corner origin, rings not repeated at the end, minus
    ``offset_l0``. Polygons go to ``group`` (``Annotation`` objects to their own class name); their
    holes are written as separate polygons in the exclusion group ``_2``, except holes that hold
    another polygon (an island): ASAP paints ``_2`` last and would erase the island, so such a polygon
    is cut through that hole into hole-free pieces of the same area. Every group used is declared
    under ``AnnotationGroups``. Streamed into a temporary file that replaces ``path`` when complete.
    Returns the number of ``Annotation`` elements written (exteriors and holes).
    """
    items = list(_items(polygons, group))
    shapes = np.array([p for p, _, _ in items], dtype=object)
    tree = shapely.STRtree(shapes)
    dx, dy = float(offset_l0[0]), float(offset_l0[1])
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
                cx, cy = _xml_number(x - dx), _xml_number(y - dy)
                f.write(f'\t\t\t\t<Coordinate Order="{order}" X="{cx}" Y="{cy}" />\n')
            f.write("\t\t\t</Coordinates>\n\t\t</Annotation>\n")
            count += 1

        for index, (polygon, name, _source) in enumerate(items):
            class_name = "None" if name is None else name  # ASAP's "no group"
            if class_name == group:
                c = color
            elif colors and class_name in colors:
                c = colors[class_name]
            else:
                c = "#{:02X}{:02X}{:02X}".format(*_class_color(class_name, None, (255, 0, 0)))
            if name is not None:
                group_colors.setdefault(class_name, c)
            pieces = _without_occupied_holes(polygon, tree, shapes, index) if polygon.interiors else [polygon]
            for piece in pieces:
                ring(np.asarray(piece.exterior.coords)[:, :2], class_name, c)
                for hole in piece.interiors:
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


def _group_parents(root: Any) -> dict[str, str | None]:
    """``AnnotationGroups/Group``: each group's parent group (``None`` at the top)."""
    parents: dict[str, str | None] = {}
    for element in root.findall("./AnnotationGroups/Group"):
        name = element.get("Name")
        if name:
            parent = element.get("PartOfGroup")
            parents[name] = None if parent in (None, "", "None") else parent
    return parents


def _group_chain(group: str | None, parents: Mapping[str, str | None]) -> list[str]:
    """The annotation's group and its ancestors, nearest first (cycles cut)."""
    chain: list[str] = []
    while group is not None and group not in ("", "None") and group not in chain:
        chain.append(group)
        group = parents.get(group)
    return chain


def _resolve_group(chain: list[str], class_map: Mapping[str, str] | None) -> tuple[str | None, str]:
    """``(class name, label)`` of a group chain: the nearest group whose class is known (the user's
    map, then the defaults), else the top group (unknown → ignored). ``_0``/``_1``/``Tumor`` by the
    defaults are class ``"Tumor"``."""
    if not chain:
        return None, IGNORED
    user = {class_key(k) for k in (class_map or {})}
    for name in chain:
        label, known = class_label(name, class_map)
        if known:
            if class_key(name) in ASAP_POSITIVE_GROUPS and class_key(name) not in user:
                return "Tumor", label
            return name, label
    return chain[-1], IGNORED


def read_asap_xml(
    path: str | os.PathLike[str],
    *,
    slide_shape_l0: tuple[int, int] | None = None,
    offset_l0: tuple[float, float] = (0.0, 0.0),
    class_map: Mapping[str, str] | None = None,
) -> ImportResult:
    """Read ASAP XML (Camelyon16/17) polygon annotations, as ASAP's own mask conversion reads them.

    Parsed with defusedxml, refusing DTDs and entity declarations (no entity expansion, no external
    entities). An annotation's class is its ``PartOfGroup``; nested groups
    (``AnnotationGroups/Group[@PartOfGroup]`` chains) resolve to the nearest group whose class is known
    (``class_map``, then the defaults of :mod:`.classes`), else to the top group. Groups ``Tumor``,
    ``_0`` and ``_1`` become class ``"Tumor"``; ``PartOfGroup="None"`` is unclassified. Polygons of an
    ``exclusion`` group (``_2``) are subtracted from every other polygon they overlap, **islands inside
    them included**: ASAP's ``AnnotationToMask`` with the Camelyon16 order ``_0, _1, _2`` paints the
    exclusions last, over everything. ``offset_l0`` is added to every coordinate. ``Polygon``,
    ``Spline`` (its control points) and ``Rectangle`` annotations are read, in file order; dots and
    point sets, and polygons with fewer than 3 points, are skipped with a warning (and counted in
    ``skipped``). Repairs and clipping as in :func:`read_geojson`. Raises :class:`InputError` for a
    missing or malformed file, unsafe XML, a foreign root element, or no usable annotations.
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
    parents = _group_parents(root)
    dx, dy = float(offset_l0[0]), float(offset_l0[1])
    warnings: list[str] = []
    skipped: dict[str, int] = {}
    labelled: list[tuple[Polygon, str | None, dict[str, Any]]] = []  # in file order
    exclusions: list[Polygon] = []
    resolved: dict[str | None, tuple[str | None, str]] = {}
    for index, element in enumerate(elements):
        attrs = dict(element.attrib)
        where = f"{path.name}: annotation {index} ({attrs.get('Name', 'unnamed')})"
        kind = attrs.get("Type", "Polygon")
        if kind not in ("Polygon", "Spline", "Rectangle"):
            warnings.append(f"{where}: type {kind} ignored (only polygons are read)")
            skipped[kind.lower()] = skipped.get(kind.lower(), 0) + 1
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
        xy = [(x + dx, y + dy) for _, x, y in points]
        if len(set(xy)) < 3:
            warnings.append(f"{where}: fewer than 3 points, skipped")
            continue
        geometry = Polygon(xy)
        group = attrs.get("PartOfGroup", "None")
        if group not in resolved:
            chain = _group_chain(group, parents)
            resolved[group] = _resolve_group(chain, class_map)
            if len(chain) > 1:
                attrs["groups"] = chain
        class_name, label = resolved[group]
        if label == EXCLUSION:
            exclusions.append(geometry)
        else:
            labelled.append((geometry, class_name, attrs))
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
                # Exclusions erase everything under them (ASAP paints them last), islands included.
                cutting = [valid_exclusions[i] for i in tree.query(cleaned)] if cleaned is not None else []
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
    if exclusions and not labelled:
        warnings.append(f"{path.name}: exclusion polygons (_2) without other polygons ignored")
    return _finish(path, "ASAP XML", found, warnings, skipped)
