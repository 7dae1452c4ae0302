"""Slide manifests: the CSV files ``milkd train --slides`` and ``milkd evaluate --slides`` read.

Owns reading a manifest (one row per slide) strictly and the one rule for a slide's µm/px. May import the
standard library, numpy and the slides package; never torch.

A manifest is a UTF-8 CSV with a header. Column names are compared case-insensitively with surrounding
spaces removed; unknown columns are ignored. Relative paths are resolved against the manifest's folder.
Every problem is one line naming the manifest and its line (:class:`InputError`); a slide that cannot be
opened or lacks a µm/px is a :class:`SlideError`.

Columns (see ``docs/cli.md``):

* training (:func:`read_training_manifest`): ``slide`` (required), ``annotations`` (QuPath GeoJSON or ASAP
  XML; optional only when ``label`` says the whole slide is tumour-free), ``label`` (``negative``,
  ``tumour-free``/``tumor-free``, ``benign``, ``normal``: every tissue tile is a negative bag; ``positive``,
  ``tumour``/``tumor`` or empty: the annotations say), ``mpp`` (level-0 µm/px, only for a slide that does
  not record it), ``split`` (``train``, ``val`` or empty);
* evaluation (:func:`read_truth_manifest`): ``slide``, ``mpp``, and per slide either ``truth`` (a label
  image, non-zero = tumour, made at ``truth_downsample`` from level 0, default 1) or ``truth_annotations``
  (GeoJSON/ASAP whose tumour-class polygons are the truth).
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

from napari_milkd.core.errors import InputError, SlideError
from napari_milkd.core.slides.slide import open_slide

#: ``label`` values meaning "the whole slide is tumour-free" (compared lower-case).
NEGATIVE_LABELS = frozenset(
    {"negative", "tumour-free", "tumor-free", "tumour free", "tumor free", "benign", "normal"}
)
#: ``label`` values meaning "the annotations say where the tumour is" (compared lower-case).
POSITIVE_LABELS = frozenset({"", "positive", "tumour", "tumor", "malignant"})
#: ``split`` values (compared lower-case); empty means "let the trainer choose".
SPLITS = ("train", "val")


@dataclass(frozen=True)
class TrainingSlide:
    """One row of a training manifest: the slide, its region annotations (or ``None``), whether the whole
    slide is tumour-free, the µm/px given for it (``None``: the file's), its split (``"train"``, ``"val"``
    or ``None``) and the manifest line it came from."""

    slide: Path
    annotations: Path | None
    negative: bool
    mpp: float | None
    split: str | None
    line: int

    @property
    def name(self) -> str:
        """The slide's file name."""
        return self.slide.name


@dataclass(frozen=True)
class TruthSlide:
    """One row of an evaluation manifest: the slide, the µm/px given for it, and its ground truth: a label
    image ``truth`` made at ``truth_downsample`` from level 0, or tumour polygons ``truth_annotations``."""

    slide: Path
    mpp: float | None
    truth: Path | None
    truth_downsample: float
    truth_annotations: Path | None
    line: int

    @property
    def name(self) -> str:
        """The slide's file name."""
        return self.slide.name


def _read_rows(
    path: str | os.PathLike[str], required: tuple[str, ...]
) -> tuple[Path, list[tuple[int, dict[str, str]]]]:
    """``(manifest, [(line, {column: value})])`` with lower-case column names; refuses a missing column."""
    manifest = Path(path)
    if not manifest.is_file():
        raise InputError(f"manifest not found: {manifest}")
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{manifest} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise InputError(f"cannot read manifest {manifest}: {exc.strerror or exc}") from None
    reader = csv.reader(text.splitlines())
    try:
        header = next(reader, None)
        if header is None:
            raise InputError(f"{manifest} is empty; it needs a header with the column {required[0]!r}")
        columns = [h.strip().lower() for h in header]
        missing = [c for c in required if c not in columns]
        if missing:
            raise InputError(
                f"{manifest} has no column {missing[0]!r} (its columns: {', '.join(columns) or 'none'})"
            )
        rows: list[tuple[int, dict[str, str]]] = []
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue
            if len(cells) > len(columns):
                raise InputError(
                    f"{manifest} line {reader.line_num}: {len(cells)} fields, the header has {len(columns)}"
                )
            row = {c: (cells[i].strip() if i < len(cells) else "") for i, c in enumerate(columns)}
            rows.append((reader.line_num, row))
    except csv.Error as exc:
        raise InputError(f"{manifest} line {reader.line_num}: malformed CSV ({exc})") from None
    if not rows:
        raise InputError(f"{manifest} lists no slides")
    return manifest, rows


def _file(manifest: Path, line: int, column: str, value: str) -> Path:
    """The existing file (or DICOM folder, for slides) ``value`` names, relative to the manifest's folder."""
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = manifest.parent / path
    if not path.exists():
        raise InputError(f"{manifest} line {line}: {column} not found: {path}")
    return path


def _positive_number(manifest: Path, line: int, column: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise InputError(f"{manifest} line {line}: {column} must be a positive number, got {value!r}")
    return number


def _slide_and_mpp(manifest: Path, line: int, row: dict[str, str]) -> tuple[Path, float | None]:
    if not row.get("slide"):
        raise InputError(f"{manifest} line {line}: the slide cell is empty")
    slide = _file(manifest, line, "slide", row["slide"])
    mpp = _positive_number(manifest, line, "mpp", row["mpp"]) if row.get("mpp") else None
    return slide, mpp


def _check_unique(manifest: Path, slides: list[tuple[int, Path]]) -> None:
    seen: dict[Path, int] = {}
    for line, slide in slides:
        key = slide.resolve()
        if key in seen:
            raise InputError(f"{manifest} line {line}: {slide.name} is already listed on line {seen[key]}")
        seen[key] = line


def read_training_manifest(path: str | os.PathLike[str]) -> list[TrainingSlide]:
    """The rows of a training manifest (see the module docstring), checked: files exist, labels and splits
    are known values, numbers are positive, no slide is listed twice. Opens no slide."""
    manifest, rows = _read_rows(path, ("slide",))
    out: list[TrainingSlide] = []
    for line, row in rows:
        slide, mpp = _slide_and_mpp(manifest, line, row)
        label = row.get("label", "").lower()
        if label not in NEGATIVE_LABELS and label not in POSITIVE_LABELS:
            raise InputError(
                f"{manifest} line {line}: unknown label {row['label']!r}; use 'negative' (the whole slide "
                "is tumour-free) or leave it empty (the annotations say)"
            )
        negative = label in NEGATIVE_LABELS
        annotations = None
        if row.get("annotations"):
            annotations = _file(manifest, line, "annotations", row["annotations"])
        elif not negative:
            raise InputError(
                f"{manifest} line {line}: {slide.name} has no annotations; give its annotation file, or "
                "label=negative when the whole slide is tumour-free"
            )
        split = row.get("split", "").lower() or None
        if split is not None and split not in SPLITS:
            raise InputError(
                f"{manifest} line {line}: unknown split {row['split']!r}; use train, val or leave it empty"
            )
        out.append(TrainingSlide(slide, annotations, negative, mpp, split, line))
    _check_unique(manifest, [(s.line, s.slide) for s in out])
    return out


def read_truth_manifest(path: str | os.PathLike[str]) -> list[TruthSlide]:
    """The rows of an evaluation manifest (see the module docstring), checked like
    :func:`read_training_manifest`; each row needs exactly one of ``truth`` and ``truth_annotations``."""
    manifest, rows = _read_rows(path, ("slide",))
    out: list[TruthSlide] = []
    for line, row in rows:
        slide, mpp = _slide_and_mpp(manifest, line, row)
        truth, annotations = row.get("truth", ""), row.get("truth_annotations", "")
        if bool(truth) == bool(annotations):
            raise InputError(
                f"{manifest} line {line}: give {slide.name}'s ground truth in exactly one of the columns "
                "truth (a label image) and truth_annotations (tumour polygons)"
            )
        downsample = 1.0
        if row.get("truth_downsample"):
            downsample = _positive_number(manifest, line, "truth_downsample", row["truth_downsample"])
        out.append(
            TruthSlide(
                slide=slide,
                mpp=mpp,
                truth=_file(manifest, line, "truth", truth) if truth else None,
                truth_downsample=downsample,
                truth_annotations=_file(manifest, line, "truth_annotations", annotations)
                if annotations
                else None,
                line=line,
            )
        )
    _check_unique(manifest, [(s.line, s.slide) for s in out])
    return out


def slide_mpp(slide: str | os.PathLike[str], given: float | None) -> tuple[float | None, str | None]:
    """``(mpp to open the slide with, warning)`` under the one µm/px rule (as ``milkd predict --slide-mpp``).

    The file's own µm/px wins: ``given`` fills only a slide that records none (then it is returned); a
    ``given`` that contradicts the file (more than 1 %) is not used and the warning says so. A slide with
    neither is a :class:`SlideError` telling to fill the manifest's ``mpp`` column.
    """
    source = open_slide(slide)
    try:
        recorded = source.info.mpp
    finally:
        source.close()
    name = Path(slide).name
    if recorded is None:
        if given is None:
            raise SlideError(
                f"{name} does not record its µm/px; give its level-0 µm/px in the manifest's mpp column"
            )
        return given, None
    if given is not None and not math.isclose(given, recorded, rel_tol=0.01):
        return None, (
            f"{name} records {recorded:g} µm/px; the manifest's mpp {given:g} is only for slides that lack "
            "it, so it is not used for this one"
        )
    return None, None
