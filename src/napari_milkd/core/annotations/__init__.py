"""Masks ↔ polygons, and the annotation formats: QuPath GeoJSON, ASAP XML, OME-Zarr labels.

Owns the geometry of exported and imported annotations and every byte of those files. Headless: may
import numpy, scipy, shapely (2.x), defusedxml, zarr, the standard library, ``core.atomic`` and
``core.errors``; never torch, napari or Qt.

Modules (each imports only those above it; this package re-exports their public names, each imported
on first use, so that reading a constant of :mod:`.classes` does not import scipy and shapely):

- :mod:`.model`: :class:`Annotation`, :class:`ImportResult`, :class:`AnnotationWarning` and the
  ``RGB``/``RGBA``/``Geometry`` aliases;
- :mod:`.geometry`: masks ↔ polygons (:func:`mask_to_polygons`, :func:`labels_to_polygons`,
  :func:`polygons_to_mask`, :func:`polygons_to_index`, :func:`polygonal_parts`);
- :mod:`.classes`: what a class means (``positive``/``negative``/``ignored``/``exclusion``: the default
  map, class-map files, derived classes) and classified annotations → label maps
  (:func:`regions_from_annotations`, :func:`labels_from_annotations`);
- :mod:`.common`: what the importers and writers share (class colours, coordinate limit, repairing and
  clipping imported geometry);
- :mod:`.geojson`: QuPath GeoJSON (:func:`write_geojson`, :func:`read_geojson`; object types);
- :mod:`.asap`: ASAP XML, Camelyon16 (:func:`write_asap_xml`, :func:`read_asap_xml`; defusedxml);
- :mod:`.omezarr`: OME-Zarr labels (:func:`write_ome_zarr_labels`, :func:`read_ome_zarr_labels`,
  :func:`ome_zarr_transform`, :func:`ome_multiscales`, :func:`pyramid_levels`, :func:`extend_pyramid`).

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

import importlib
from typing import Any

#: Submodule → the public names this package re-exports from it (imported when first asked for).
_EXPORTS: dict[str, tuple[str, ...]] = {
    "asap": ("ASAP_EXCLUSION_GROUP", "ASAP_POSITIVE_GROUPS", "read_asap_xml", "write_asap_xml"),
    "classes": (
        "CLASS_LABELS",
        "DEFAULT_CLASS_MAP",
        "DEFAULT_CLASS_TO_LABEL",
        "EXCLUSION",
        "IGNORED",
        "NEGATIVE",
        "POSITIVE",
        "ClassCount",
        "base_class",
        "class_label",
        "class_table",
        "describe_classes",
        "labels_from_annotations",
        "load_class_map",
        "regions_from_annotations",
    ),
    "common": ("DEFAULT_CLASS_COLORS", "MAX_COORDINATE_L0"),
    "geojson": ("measurement_name", "object_type", "qupath_class", "read_geojson", "write_geojson"),
    "geometry": (
        "labels_to_polygons",
        "mask_to_polygons",
        "polygonal_parts",
        "polygons_to_index",
        "polygons_to_mask",
    ),
    "model": ("RGB", "RGBA", "Annotation", "AnnotationWarning", "Geometry", "ImportResult"),
    "omezarr": (
        "DEFAULT_CLASS_NAMES",
        "DEFAULT_LABEL_COLORS",
        "extend_pyramid",
        "ome_multiscales",
        "ome_zarr_transform",
        "pyramid_levels",
        "read_ome_zarr_labels",
        "write_ome_zarr_labels",
    ),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    """Import a re-exported name's submodule on first use (PEP 562)."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE_OF))
