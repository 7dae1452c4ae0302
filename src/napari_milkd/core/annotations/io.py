"""Any annotation file in, any out: :func:`read_annotations`, :func:`annotation_report`,
:func:`write_annotations`.

Owns choosing the format of a file (extension, else its first character), the class-map argument
(a file or a mapping), and the report every front end shows before painting (classes with counts and
labels, objects skipped by type, one message). May import the standard library, :mod:`.model`,
:mod:`.classes`, :mod:`.geojson`, :mod:`.asap` and ``core.errors``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_milkd.core.annotations.asap import read_asap_xml, write_asap_xml
from napari_milkd.core.annotations.classes import (
    EXCLUSION,
    ClassCount,
    class_label,
    class_table,
    describe_classes,
    load_class_map,
)
from napari_milkd.core.annotations.geojson import read_geojson, write_geojson
from napari_milkd.core.annotations.model import Annotation, ImportResult
from napari_milkd.core.errors import InputError

#: File formats by name; :func:`annotation_format` picks one for a path.
FORMATS = ("geojson", "asap")


def annotation_format(path: str | os.PathLike[str], *, sniff: bool = True) -> str:
    """``"geojson"`` or ``"asap"`` for a path: by extension (``.geojson``/``.json``, ``.xml``), else
    (``sniff``) by the file's first non-blank character (``{``/``[`` or ``<``)."""
    suffix = Path(path).suffix.lower()
    if suffix in (".geojson", ".json"):
        return "geojson"
    if suffix == ".xml":
        return "asap"
    if sniff:
        try:
            with open(path, "rb") as f:
                head = f.read(4096).lstrip()
        except OSError:
            head = b""
        if head[:1] in (b"{", b"["):
            return "geojson"
        if head[:1] == b"<":
            return "asap"
    raise InputError(f"{path}: unknown annotation format (use .geojson/.json for QuPath, .xml for ASAP)")


def class_map_from(class_map: str | os.PathLike[str] | Mapping[str, str] | None) -> dict[str, str] | None:
    """A class map given as a file (:func:`load_class_map`) or a mapping; ``None`` stays ``None``."""
    if class_map is None:
        return None
    if isinstance(class_map, Mapping):
        return dict(class_map)
    return load_class_map(class_map)


def read_annotations(
    path: str | os.PathLike[str],
    *,
    slide_shape_l0: tuple[int, int] | None = None,
    offset_l0: tuple[float, float] = (0.0, 0.0),
    class_map: Mapping[str, str] | None = None,
) -> ImportResult:
    """Read a QuPath GeoJSON or ASAP XML file (:func:`annotation_format`); see :func:`read_geojson`
    and :func:`read_asap_xml`. ``offset_l0`` is the slide's bounds offset for QuPath files; ASAP
    addresses OpenSlide's full level-0 grid, so ASAP files get no offset (see ``docs/formats.md``)."""
    if annotation_format(path) == "asap":
        return read_asap_xml(path, slide_shape_l0=slide_shape_l0, class_map=class_map)
    return read_geojson(path, slide_shape_l0=slide_shape_l0, offset_l0=offset_l0)


@dataclass(frozen=True)
class AnnotationReport:
    """What a file means: every class with its label and count, objects skipped by type, warnings,
    and one ``message`` naming unknown classes and skipped objects (``None`` when there are none)."""

    classes: tuple[ClassCount, ...]
    skipped: Mapping[str, int] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """``{"classes": [{"name", "label", "count"}, ...], "skipped": {type: n}}`` (the CLI contract)."""
        return {"classes": [row.to_dict() for row in self.classes], "skipped": dict(self.skipped)}


def annotation_report(result: ImportResult, class_map: Mapping[str, str] | None = None) -> AnnotationReport:
    """The :class:`AnnotationReport` of an import under ``class_map`` (defaults when ``None``)."""
    table = class_table(result.annotations, class_map)
    return AnnotationReport(
        table, dict(result.skipped), result.warnings, describe_classes(table, result.skipped)
    )


def write_annotations(
    path: str | os.PathLike[str],
    annotations: Iterable[Annotation],
    *,
    class_map: Mapping[str, str] | None = None,
    offset_l0: tuple[float, float] = (0.0, 0.0),
    mpp: float | None = None,
) -> int:
    """Write annotations as QuPath GeoJSON or ASAP XML (by ``path``'s extension), keeping their classes
    and holes. Going to ASAP, annotations whose class is an ``exclusion`` go to group ``_2``; going to
    QuPath, ``offset_l0`` (the slide's bounds offset) is subtracted. Returns the number written."""
    items = list(annotations)
    if annotation_format(path, sniff=False) == "asap":
        renamed = [
            Annotation(a.geometry, "_2", a.properties, a.id)
            if a.class_name is not None and class_label(a.class_name, class_map)[0] == EXCLUSION
            else a
            for a in items
        ]
        return write_asap_xml(path, renamed)
    return write_geojson(path, items, mpp=mpp, offset_l0=offset_l0)
