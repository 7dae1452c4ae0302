"""Masks ↔ polygons, and the annotation formats: QuPath GeoJSON, ASAP XML, OME-Zarr labels.

Owns the geometry of exported and imported annotations and every byte of those files. Headless: may
import numpy, scipy, shapely (2.x), defusedxml, zarr, the standard library, ``core.atomic`` and
``core.errors``; never torch, napari or Qt.

Modules (each imports only those above it; this package re-exports their public names):

- :mod:`.model`: :class:`Annotation`, :class:`ImportResult`, :class:`AnnotationWarning` and the
  ``RGB``/``RGBA``/``Geometry`` aliases;
- :mod:`.geometry`: masks ↔ polygons (:func:`mask_to_polygons`, :func:`labels_to_polygons`,
  :func:`polygons_to_mask`, :func:`polygonal_parts`);
- :mod:`.common`: what the importers and writers share (class colours, coordinate limit, repairing and
  clipping imported geometry);
- :mod:`.geojson`: QuPath GeoJSON (:func:`write_geojson`, :func:`read_geojson`);
- :mod:`.asap`: ASAP XML, Camelyon16 (:func:`write_asap_xml`, :func:`read_asap_xml`; defusedxml);
- :mod:`.classes`: class names → label maps (:func:`labels_from_annotations`);
- :mod:`.omezarr`: OME-Zarr labels (:func:`write_ome_zarr_labels`, :func:`read_ome_zarr_labels`,
  :func:`ome_zarr_transform`, :func:`ome_multiscales`).

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
from .classes import DEFAULT_CLASS_TO_LABEL, labels_from_annotations
from .common import DEFAULT_CLASS_COLORS, MAX_COORDINATE_L0
from .geojson import read_geojson, write_geojson
from .geometry import labels_to_polygons, mask_to_polygons, polygonal_parts, polygons_to_mask
from .model import RGB, RGBA, Annotation, AnnotationWarning, Geometry, ImportResult
from .omezarr import (
    DEFAULT_LABEL_COLORS,
    ome_multiscales,
    ome_zarr_transform,
    read_ome_zarr_labels,
    write_ome_zarr_labels,
)

__all__ = [
    "ASAP_EXCLUSION_GROUP",
    "ASAP_POSITIVE_GROUPS",
    "DEFAULT_CLASS_COLORS",
    "DEFAULT_CLASS_TO_LABEL",
    "DEFAULT_LABEL_COLORS",
    "MAX_COORDINATE_L0",
    "RGB",
    "RGBA",
    "Annotation",
    "AnnotationWarning",
    "Geometry",
    "ImportResult",
    "labels_from_annotations",
    "labels_to_polygons",
    "mask_to_polygons",
    "ome_multiscales",
    "ome_zarr_transform",
    "polygonal_parts",
    "polygons_to_mask",
    "read_asap_xml",
    "read_geojson",
    "read_ome_zarr_labels",
    "write_asap_xml",
    "write_geojson",
    "write_ome_zarr_labels",
]
