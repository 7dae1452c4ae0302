"""Class names → label values: :func:`labels_from_annotations` and :data:`DEFAULT_CLASS_TO_LABEL`.

Owns turning imported (classified) annotations into a ``uint8`` label map. May import numpy, the
standard library, :mod:`.model`, :mod:`.geometry` and ``core.errors``.
"""

from __future__ import annotations

import warnings as _warnings
from collections.abc import Iterable, Mapping

import numpy as np

from napari_milkd.core.annotations.geometry import polygons_to_mask
from napari_milkd.core.annotations.model import Annotation, AnnotationWarning, Geometry
from napari_milkd.core.errors import InputError

#: Class name (lower case) → label value used by :func:`labels_from_annotations` by default.
DEFAULT_CLASS_TO_LABEL: dict[str, int] = {
    "tumor": 1,
    "tumour": 1,
    "positive": 1,
    "_0": 1,
    "_1": 1,
    "normal": 2,
    "negative": 2,
    "stroma": 2,
    "benign": 2,
    "tumour-free": 2,
    "tumor-free": 2,
}


def labels_from_annotations(
    annotations: Iterable[Annotation | Geometry],
    shape: tuple[int, int],
    downsample: float = 1.0,
    class_to_label: Mapping[str, int] | None = None,
    *,
    unknown_label: int | None = None,
) -> np.ndarray:
    """Rasterise annotations into a ``uint8`` label image of ``shape`` made at ``downsample``.

    Class names map to labels case-insensitively through ``class_to_label`` (default
    :data:`DEFAULT_CLASS_TO_LABEL`: tumour → 1, tumour-free/normal/stroma/benign → 2). Annotations of an
    unknown class (or none; bare polygons count as ``"Tumor"``) get ``unknown_label``; when that is
    ``None`` they are ignored with an :class:`AnnotationWarning`. Painted in the order given, later
    annotations over earlier ones; pixel centres decide (see :func:`polygons_to_mask`).
    """
    mapping = {k.lower(): int(v) for k, v in (class_to_label or DEFAULT_CLASS_TO_LABEL).items()}
    for value in [*mapping.values(), unknown_label]:
        if value is not None and not 0 <= value <= 255:
            raise InputError(f"label values must be 0..255, got {value}")
    out = np.zeros(tuple(int(v) for v in shape), dtype=np.uint8)
    ignored: dict[str, int] = {}
    for item in annotations:
        if isinstance(item, Annotation):
            geometry, name = item.geometry, item.class_name
        else:
            geometry, name = item, "Tumor"
        value = mapping.get(name.lower()) if name else None
        if value is None:
            value = unknown_label
        if value is None:
            key = name or "(unclassified)"
            ignored[key] = ignored.get(key, 0) + 1
            continue
        out[polygons_to_mask([geometry], out.shape, downsample)] = value
    for key, n in ignored.items():
        _warnings.warn(
            f"{n} annotation(s) of class {key!r} ignored (no label for it)", AnnotationWarning, stacklevel=2
        )
    return out
