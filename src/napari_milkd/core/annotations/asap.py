"""ASAP XML (Camelyon16): :func:`write_asap_xml` and :func:`read_asap_xml`.

Owns every byte of the ASAP files and the Camelyon16 groups (tumour groups, the ``_2`` exclusions). May
import numpy, shapely, defusedxml (parsing is always defused), the standard library, :mod:`.model`,
:mod:`.geometry`, :mod:`.common`, ``core.atomic`` and ``core.errors``.
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
