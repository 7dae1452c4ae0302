"""The annotation data model: :class:`Annotation`, :class:`ImportResult`, :class:`AnnotationWarning`.

Owns the types every other module of the package shares (and the ``RGB``/``RGBA``/``Geometry`` aliases).
May import shapely and the standard library; nothing else of the package, so it sits at the bottom.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from shapely.geometry import MultiPolygon, Polygon

RGB = tuple[int, int, int]
RGBA = tuple[int, int, int, int]
Geometry = Polygon | MultiPolygon


class AnnotationWarning(UserWarning):
    """Something in the annotations was skipped or repaired (see the message)."""


@dataclass(frozen=True)
class Annotation:
    """One imported annotation: a polygonal region in level-0 ``(x, y)`` pixels (corner origin).

    ``class_name`` is the QuPath classification name or the ASAP group (``None`` when unclassified);
    ``properties`` are the file's own properties of the feature (GeoJSON) or attributes (ASAP);
    ``id`` is the feature's id when the file has one.
    """

    geometry: Geometry
    class_name: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    id: str | None = None


@dataclass(frozen=True)
class ImportResult:
    """What an importer found: the usable annotations, one line per skipped or repaired item, and how
    many objects were skipped by kind (QuPath ``objectType``: ``{"detection": n, "cell": n, ...}``)."""

    annotations: tuple[Annotation, ...]
    warnings: tuple[str, ...] = ()
    skipped: Mapping[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.annotations)

    def __iter__(self) -> Iterator[Annotation]:
        return iter(self.annotations)
