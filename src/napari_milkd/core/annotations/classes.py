"""What a class means: class names → ``positive`` / ``negative`` / ``ignored`` / ``exclusion``.

Owns the default class map (:data:`DEFAULT_CLASS_MAP`), class-map files (:func:`load_class_map`),
QuPath's derived classes (:func:`base_class`), the per-class table a front end shows before painting
(:func:`class_table`, :func:`describe_classes`), and painting classified annotations into a label map
(:func:`regions_from_annotations`; the older :func:`labels_from_annotations` for explicit values).
May import numpy, the standard library, :mod:`.model`, :mod:`.geometry` and ``core.errors``.

Rules (see ``docs/formats.md``): a user's class map wins; then the default map; then any class whose
name starts with ``Ignore`` (QuPath's ``Ignore*``) is ``ignored``; an **unknown or missing class is
``ignored``, never ``negative``**, and reported. ``exclusion`` regions (ASAP/Camelyon16 ``_2``) erase
whatever lies under them, after everything else is painted (ASAP's own conversion order).
"""

from __future__ import annotations

import csv
import json
import os
import warnings as _warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_milkd.core.annotations.model import Annotation, AnnotationWarning, Geometry
from napari_milkd.core.errors import InputError

POSITIVE = "positive"
NEGATIVE = "negative"
IGNORED = "ignored"
EXCLUSION = "exclusion"
#: The labels a class can get, in the order tables list them.
CLASS_LABELS = (POSITIVE, NEGATIVE, IGNORED, EXCLUSION)
#: How an annotation without a class is named in tables and messages.
UNCLASSIFIED = "(unclassified)"

#: The default class map (keys compared after :func:`class_key`: case, surrounding and repeated
#: spaces, ``-``/``_`` between words do not matter). Documented in ``docs/formats.md``.
DEFAULT_CLASS_MAP: dict[str, str] = {
    # tumour (QuPath "Tumor", British spelling, Camelyon16 "_0"/"_1", Camelyon17 "metastases")
    "tumor": POSITIVE,
    "tumour": POSITIVE,
    "tumor region": POSITIVE,
    "tumour region": POSITIVE,
    "tumor area": POSITIVE,
    "tumour area": POSITIVE,
    "invasive tumor": POSITIVE,
    "invasive tumour": POSITIVE,
    "carcinoma": POSITIVE,
    "metastasis": POSITIVE,
    "metastases": POSITIVE,
    "_0": POSITIVE,
    "_1": POSITIVE,
    # tumour-free
    "normal": NEGATIVE,
    "normal tissue": NEGATIVE,
    "stroma": NEGATIVE,
    "non tumor": NEGATIVE,
    "non tumour": NEGATIVE,
    "nontumor": NEGATIVE,
    "nontumour": NEGATIVE,
    "tumor free": NEGATIVE,
    "tumour free": NEGATIVE,
    "benign": NEGATIVE,
    "healthy": NEGATIVE,
    # ASAP / Camelyon16 exclusion holes
    "_2": EXCLUSION,
}

#: Label values :func:`regions_from_annotations` paints by default (the weak-label map's values).
DEFAULT_REGION_VALUES: dict[str, int] = {POSITIVE: 1, NEGATIVE: 2}

#: The older name → value map of :func:`labels_from_annotations` (tumour 1, tumour-free 2).
DEFAULT_CLASS_TO_LABEL: dict[str, int] = {
    k: DEFAULT_REGION_VALUES[v] for k, v in DEFAULT_CLASS_MAP.items() if v in DEFAULT_REGION_VALUES
}


def class_key(name: str) -> str:
    """The form class names are compared in: case-folded, ``-`` and inner ``_`` as spaces, spaces collapsed.

    A leading ``_`` is kept (``_0``, ``_2`` are Camelyon16 group names).
    """
    text = name.strip().casefold()
    lead = "_" if text.startswith("_") else ""
    body = text[len(lead) :].replace("-", " ").replace("_", " ")
    return lead + " ".join(body.split())


def base_class(name: str | None) -> str | None:
    """A QuPath derived class's base: ``"Tumor: Positive"`` → ``"Tumor"``; other names unchanged."""
    if name is None:
        return None
    base = name.split(":", 1)[0].strip()
    return base or None


def _check_label(label: object, where: str) -> str:
    text = str(label).strip().casefold() if isinstance(label, str) else ""
    if text in ("ignore", "ignored"):
        return IGNORED
    if text in ("exclude", "excluded"):
        return EXCLUSION
    if text not in CLASS_LABELS:
        raise InputError(f"{where}: label {label!r} is not one of {', '.join(CLASS_LABELS)}")
    return text


def load_class_map(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read a class-map file: JSON ``{"class": "label", ...}`` or CSV ``class,label`` (header optional).

    Labels are ``positive``, ``negative``, ``ignored`` or ``exclusion``. Returns ``{class key: label}``
    (keys as :func:`class_key`). Raises :class:`InputError` naming the file and line on bad input.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"{path}: no such class-map file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, not a class-map file") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: class map is not UTF-8 text") from None
    out: dict[str, str] = {}
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
        except RecursionError:
            raise InputError(f"{path}: not JSON (nested too deeply)") from None
        if not isinstance(payload, dict):
            raise InputError(f'{path}: a JSON class map is one object {{"class": "label", ...}}')
        for name, label in payload.items():
            out[class_key(str(name))] = _check_label(label, f"{path}: class {name!r}")
    else:
        for number, row in enumerate(csv.reader(text.splitlines()), start=1):
            cells = [c.strip() for c in row]
            if not any(cells) or cells[0].startswith("#"):
                continue
            if len(cells) != 2 or not cells[0]:
                raise InputError(f"{path}: line {number}: expected 'class,label', got {','.join(row)!r}")
            if number == 1 and cells[1].casefold() == "label":
                continue  # header
            out[class_key(cells[0])] = _check_label(cells[1], f"{path}: line {number}")
    if not out:
        raise InputError(f"{path}: the class map is empty")
    return out


def _user_map(class_map: Mapping[str, str] | None) -> dict[str, str]:
    return {class_key(k): _check_label(v, f"class map: class {k!r}") for k, v in (class_map or {}).items()}


def class_label(name: str | None, class_map: Mapping[str, str] | None = None) -> tuple[str, bool]:
    """``(label, known)`` of a class name: the user's map, then the default map, then ``Ignore*``;
    an unknown or missing class is ``("ignored", False)``."""
    if name is None:
        return IGNORED, False
    key = class_key(name)
    user = _user_map(class_map)
    if key in user:
        return user[key], True
    base = class_key(base_class(name) or "")
    if base in user:
        return user[base], True
    for candidate in (key, base):
        if candidate in DEFAULT_CLASS_MAP:
            return DEFAULT_CLASS_MAP[candidate], True
    if base.startswith("ignore"):
        return IGNORED, True
    return IGNORED, False


@dataclass(frozen=True)
class ClassCount:
    """One row of the class table: a class as the file names it, the label it gets, how many regions."""

    name: str
    label: str
    count: int
    known: bool = True

    def to_dict(self) -> dict[str, object]:
        """JSON form ``{"name", "label", "count"}`` (the ``milkd annotations --json`` contract)."""
        return {"name": self.name, "label": self.label, "count": self.count}


def class_table(
    annotations: Iterable[Annotation], class_map: Mapping[str, str] | None = None
) -> tuple[ClassCount, ...]:
    """Every class found (in first-seen order) with the label it gets and its number of annotations."""
    user = _user_map(class_map)
    counts: dict[str | None, int] = {}
    for annotation in annotations:
        counts[annotation.class_name] = counts.get(annotation.class_name, 0) + 1
    rows = []
    for name, count in counts.items():
        label, known = class_label(name, user)
        rows.append(ClassCount(UNCLASSIFIED if name is None else name, label, count, known))
    return tuple(rows)


def describe_classes(table: Iterable[ClassCount], skipped: Mapping[str, int] | None = None) -> str | None:
    """One line naming the unknown classes (and the skipped objects), or ``None`` when there are none."""
    unknown = [f"{row.name!r} ×{row.count}" for row in table if not row.known]
    parts = []
    if unknown:
        parts.append(
            f"unknown class{'es' if len(unknown) > 1 else ''} ignored (not painted; map them with a "
            f"class map): {', '.join(unknown)}"
        )
    if skipped:
        parts.append("skipped " + ", ".join(f"{n} {kind}" for kind, n in skipped.items()))
    return "; ".join(parts) if parts else None


def regions_from_annotations(
    annotations: Iterable[Annotation],
    shape: tuple[int, int],
    downsample: float = 1.0,
    class_map: Mapping[str, str] | None = None,
    *,
    values: Mapping[str, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint classified annotations into ``(labels, excluded)`` maps of ``shape`` made at ``downsample``.

    Each annotation's class gets its label through :func:`class_label`; ``positive`` and ``negative``
    regions are painted with ``values`` (default 1 and 2), in the order given, later over earlier;
    ``ignored`` ones (unknown classes included) are not painted; ``exclusion`` regions are applied
    last and erase everything under them (ASAP's conversion order ``_0, _1, _2``), so an island drawn
    inside an exclusion is erased too. ``excluded`` is the boolean map of the exclusions. One pass over
    all polygons whatever their number (:func:`polygons_to_index`).
    """
    values = dict(DEFAULT_REGION_VALUES if values is None else values)
    for value in values.values():
        if not 0 <= int(value) <= 255:
            raise InputError(f"label values must be 0..255, got {value}")
    user = _user_map(class_map)
    painted: list[Annotation] = []
    lut = [0]
    exclusions: list[Annotation] = []
    cache: dict[str | None, str] = {}
    for annotation in annotations:
        name = annotation.class_name
        if name not in cache:
            cache[name] = class_label(name, user)[0]
        label = cache[name]
        if label == EXCLUSION:
            exclusions.append(annotation)
        elif label in values:
            painted.append(annotation)
            lut.append(int(values[label]))
    from napari_milkd.core.annotations.geometry import polygons_to_index  # scipy, shapely: on first use

    index = polygons_to_index([*painted, *exclusions], shape, downsample)
    table = np.asarray(lut + [0] * len(exclusions), dtype=np.uint8)
    excluded = index > len(painted)
    return table[index], excluded


def labels_from_annotations(
    annotations: Iterable[Annotation | Geometry],
    shape: tuple[int, int],
    downsample: float = 1.0,
    class_to_label: Mapping[str, int] | None = None,
    *,
    unknown_label: int | None = None,
) -> np.ndarray:
    """Rasterise annotations into a ``uint8`` label image of explicit values (lower-level than
    :func:`regions_from_annotations`).

    Class names map to values through ``class_to_label`` (compared as :func:`class_key`; default
    :data:`DEFAULT_CLASS_TO_LABEL`: tumour → 1, tumour-free → 2). Annotations of an unknown class (or
    none; bare polygons count as ``"Tumor"``) get ``unknown_label``; when that is ``None`` they are
    ignored with an :class:`AnnotationWarning`. Painted in the order given, later over earlier, in one
    pass; pixel centres decide (see :func:`polygons_to_mask`).
    """
    mapping = {class_key(k): int(v) for k, v in (class_to_label or DEFAULT_CLASS_TO_LABEL).items()}
    for value in [*mapping.values(), unknown_label]:
        if value is not None and not 0 <= value <= 255:
            raise InputError(f"label values must be 0..255, got {value}")
    items: list[Annotation | Geometry] = []
    lut = [0]
    ignored: dict[str, int] = {}
    for item in annotations:
        name = item.class_name if isinstance(item, Annotation) else "Tumor"
        value = None
        if name:
            value = mapping.get(class_key(name), mapping.get(class_key(base_class(name) or "")))
        if value is None:
            value = unknown_label
        if value is None:
            key = name or UNCLASSIFIED
            ignored[key] = ignored.get(key, 0) + 1
            continue
        items.append(item)
        lut.append(value)
    from napari_milkd.core.annotations.geometry import polygons_to_index

    out = np.asarray(lut, dtype=np.uint8)[polygons_to_index(items, shape, downsample)]
    for key, n in ignored.items():
        _warnings.warn(
            f"{n} annotation(s) of class {key!r} ignored (no label for it)", AnnotationWarning, stacklevel=2
        )
    return out
