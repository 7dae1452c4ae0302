"""Masks ↔ polygons, and the annotation formats: QuPath GeoJSON, ASAP XML, OME-Zarr labels.

Owns the geometry of exported and imported annotations and every byte of those files. Headless: may
import numpy, scipy, shapely (2.x), defusedxml, zarr, the standard library, ``core.atomic`` and
``core.errors``; never torch, napari or Qt.

Modules (each imports only those above it; this package re-exports their public names):

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

from .asap import ASAP_EXCLUSION_GROUP, ASAP_POSITIVE_GROUPS, read_asap_xml, write_asap_xml
from .classes import (
    CLASS_LABELS,
    DEFAULT_CLASS_MAP,
    DEFAULT_CLASS_TO_LABEL,
    EXCLUSION,
    IGNORED,
    NEGATIVE,
    POSITIVE,
    ClassCount,
    base_class,
    class_label,
    class_table,
    describe_classes,
    labels_from_annotations,
    load_class_map,
    regions_from_annotations,
)
from .common import DEFAULT_CLASS_COLORS, MAX_COORDINATE_L0
from .geojson import measurement_name, object_type, qupath_class, read_geojson, write_geojson
from .geometry import (
    labels_to_polygons,
    mask_to_polygons,
    polygonal_parts,
    polygons_to_index,
    polygons_to_mask,
)
from .model import RGB, RGBA, Annotation, AnnotationWarning, Geometry, ImportResult
from .omezarr import (
    DEFAULT_CLASS_NAMES,
    DEFAULT_LABEL_COLORS,
    extend_pyramid,
    ome_multiscales,
    ome_zarr_transform,
    pyramid_levels,
    read_ome_zarr_labels,
    write_ome_zarr_labels,
)

__all__ = [
    "ASAP_EXCLUSION_GROUP",
    "ASAP_POSITIVE_GROUPS",
    "CLASS_LABELS",
    "DEFAULT_CLASS_COLORS",
    "DEFAULT_CLASS_MAP",
    "DEFAULT_CLASS_NAMES",
    "DEFAULT_CLASS_TO_LABEL",
    "DEFAULT_LABEL_COLORS",
    "EXCLUSION",
    "IGNORED",
    "MAX_COORDINATE_L0",
    "NEGATIVE",
    "POSITIVE",
    "RGB",
    "RGBA",
    "Annotation",
    "AnnotationWarning",
    "ClassCount",
    "Geometry",
    "ImportResult",
    "base_class",
    "class_label",
    "class_table",
    "describe_classes",
    "extend_pyramid",
    "labels_from_annotations",
    "labels_to_polygons",
    "load_class_map",
    "mask_to_polygons",
    "measurement_name",
    "object_type",
    "ome_multiscales",
    "ome_zarr_transform",
    "polygonal_parts",
    "polygons_to_index",
    "polygons_to_mask",
    "pyramid_levels",
    "qupath_class",
    "read_asap_xml",
    "read_geojson",
    "read_ome_zarr_labels",
    "regions_from_annotations",
    "write_asap_xml",
    "write_geojson",
    "write_ome_zarr_labels",
]
