"""Training data from many whole slides: region annotations → tile bags per slide → one split.

Owns what ``milkd train --slides`` needs between the manifest (:mod:`.cohort_manifest`) and the trainers
(:func:`~napari_milkd.core.engine.train.train_teacher`,
:func:`~napari_milkd.core.engine.train.distill_student`):

* :func:`slide_regions`: a slide's annotations as a weak-label map at the working resolution, with the same
  class semantics as :meth:`SlideSession.import_annotations` (``core.annotations.classes``: positive →
  contains tumour, negative → tumour-free, unknown classes ignored, never negative; ``class_map``
  overrides); a slide labelled negative has all its tissue tumour-free;
* :func:`cohort_bags`: the tile bags of every slide (tiles read through the slide's lazy view), at most
  ``max_bags_per_slide`` per slide (a seeded draw that keeps the slide's positive/negative proportion), so
  a large slide cannot drown the others — the balancing is a *cap per slide*, not sample weights;
* :func:`split_by_slide`: validation by slide (the manifest's ``split`` column; else whole slides held
  out; a single slide falls back to the per-bag split, and says so).

Qt-free; may import numpy and every core package below ``session``; torch only through the engine.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from napari_milkd.core.engine.datasets import BagSet
from napari_milkd.core.errors import InputError
from napari_milkd.core.session.cohort_manifest import TrainingSlide, slide_mpp
from napari_milkd.core.session.labels import NO_OPINION
from napari_milkd.core.session.weak_labels import (
    BAG_IGNORE,
    REGION_FREE,
    REGION_TUMOUR,
    bag_labels_from_regions,
)
from napari_milkd.core.slides.geometry import SlideWork, plan_work, read_tiles, tile_crops, tissue_map
from napari_milkd.core.slides.slide import SlideSource, open_slide

#: Default cap on the bags (tiles) one slide contributes.
DEFAULT_MAX_BAGS_PER_SLIDE = 512
#: Tiles read between two progress events.
_READ_CHUNK = 32


@dataclass(frozen=True)
class BagProgress:
    """Tiles of one slide read so far (``stage`` names the slide), for progress bars and logs."""

    stage: str
    done: int
    total: int


@dataclass(frozen=True)
class SlideBags:
    """What one slide gives: its manifest row, its bags (``None`` when it gave none), the labelled tiles
    before the cap (``n_positive``, ``n_negative``), and one-line warnings about it."""

    slide: TrainingSlide
    bags: BagSet | None
    n_positive: int
    n_negative: int
    warnings: tuple[str, ...] = ()

    @property
    def n_used(self) -> int:
        """Bags kept after the per-slide cap."""
        return 0 if self.bags is None else len(self.bags)


@dataclass(frozen=True)
class CohortSplit:
    """The training and validation bags (``val`` ``None`` when nothing is held out), the slide names on
    each side, and how the split was made, in words."""

    train: BagSet
    val: BagSet | None
    train_slides: list[str]
    val_slides: list[str]
    how: str
    notes: list[str] = field(default_factory=list)


def slide_regions(
    slide: TrainingSlide,
    source: SlideSource,
    work: SlideWork,
    tissue: np.ndarray,
    class_map: Mapping[str, str] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """The weak-label map of ``slide`` at ``work``'s resolution (1 contains tumour, 2 tumour-free, 0 none)
    and one-line warnings (unknown classes, skipped objects).

    Annotations are read as :meth:`SlideSession.import_annotations` reads them (QuPath coordinates shifted
    by the slide's bounds offset; exclusions erase). A slide labelled negative gets all its tissue
    tumour-free; tumour regions on it are refused (:class:`InputError`), since they contradict the label.
    """
    from napari_milkd.core.annotations import NEGATIVE, POSITIVE, regions_from_annotations
    from napari_milkd.core.annotations.io import annotation_report, read_annotations

    regions = np.zeros(work.shape, np.uint8)
    excluded = np.zeros(work.shape, bool)
    warnings: list[str] = []
    if slide.annotations is not None:
        info = source.info
        result = read_annotations(
            slide.annotations, slide_shape_l0=info.shape, offset_l0=info.offset_l0, class_map=class_map
        )
        report = annotation_report(result, class_map)
        labels, excluded = regions_from_annotations(
            result.annotations,
            work.shape,
            work.downsample,
            class_map,
            values={POSITIVE: REGION_TUMOUR, NEGATIVE: REGION_FREE},
        )
        regions[labels > 0] = labels[labels > 0]
        regions[excluded] = 0
        warnings += [f"{slide.annotations.name}: {w}" for w in ([report.message] if report.message else [])]
        warnings += [f"{slide.annotations.name}: {w}" for w in result.warnings]
    if slide.negative:
        if (regions == REGION_TUMOUR).any():
            raise InputError(
                f"{slide.name} is labelled tumour-free but {slide.annotations} has tumour regions; "
                "fix the label or the annotations"
            )
        regions[tissue & ~excluded] = REGION_FREE
    return regions, warnings


def _capped(labels: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of at most ``cap`` labelled tiles, keeping the positive/negative proportion."""
    pos = np.flatnonzero(labels == 1)
    neg = np.flatnonzero(labels == 0)
    n = len(pos) + len(neg)
    if n <= cap:
        return np.sort(np.concatenate([pos, neg]))
    take_pos = min(len(pos), max(1 if len(pos) else 0, round(cap * len(pos) / n)))
    take_neg = min(len(neg), cap - take_pos)
    chosen = np.concatenate(
        [rng.choice(pos, take_pos, replace=False), rng.choice(neg, take_neg, replace=False)]
    )
    return np.sort(chosen)


def read_slide_bags(
    source: SlideSource,
    work: SlideWork,
    labels: np.ndarray,
    *,
    name: str,
    group: str,
    max_bags: int,
    rng: np.random.Generator,
    hard_labels: np.ndarray | None = None,
) -> Generator[BagProgress, None, BagSet | None]:
    """The bags of one open slide from every tile's bag label ``labels`` (``BAG_IGNORE`` = none): at most
    ``max_bags`` of them (a draw by ``rng`` that keeps the positive/negative proportion), read through
    the lazy view with :class:`BagProgress` (``stage`` "bags of ``name``"), named ``<name>:tile_<i>``,
    grouped by ``group`` (for a split by slide); ``hard_labels`` (a working-resolution corrections map,
    ``NO_OPINION`` elsewhere) become the bags' per-pixel overrides. None when no tile is a bag. Shared by
    :func:`cohort_bags` and the widget's slide group (:mod:`~napari_milkd.core.session.slide_group`), so
    both read the same bags from the same labels."""
    index = np.flatnonzero(labels != BAG_IGNORE)
    index = index[_capped(labels[index], max_bags, rng)]
    if len(index) == 0:
        return None
    parts = []
    for start in range(0, len(index), _READ_CHUNK):
        yield BagProgress(f"bags of {name}", start, len(index))
        parts.append(read_tiles(source, work.grid, index[start : start + _READ_CHUNK]))
    yield BagProgress(f"bags of {name}", len(index), len(index))
    hard = None
    if hard_labels is not None:
        hard = tile_crops(hard_labels.astype(np.uint8), work, index, fill=NO_OPINION)
    return BagSet.from_arrays(
        np.concatenate(parts),
        labels[index].astype(np.uint8),
        hard_labels=hard,
        groups=[group] * len(index),
        names=[f"{name}:tile_{i}" for i in index],
    )


def cohort_bags(
    slides: Sequence[TrainingSlide],
    *,
    work_mpp: float,
    tile: int,
    class_map: Mapping[str, str] | None = None,
    max_bags_per_slide: int = DEFAULT_MAX_BAGS_PER_SLIDE,
    seed: int = 0,
) -> Generator[BagProgress, None, list[SlideBags]]:
    """Tile bags of every slide of ``slides`` at ``work_mpp`` µm/px with ``tile``-px tiles (a job generator:
    yields :class:`BagProgress`, returns one :class:`SlideBags` per slide, in order).

    Each slide is opened under the manifest's µm/px rule (:func:`~.cohort_manifest.slide_mpp`), planned
    (tissue, tile grid), its regions made (:func:`slide_regions`) and its bag labels taken with the rules
    of :mod:`~napari_milkd.core.session.weak_labels`. At most ``max_bags_per_slide`` labelled tiles are
    read per slide (seeded by ``seed`` and the slide's position). Bags are named ``<slide>:tile_<i>`` and
    grouped by slide. A slide without labelled tiles gives no bags and a warning; a cohort without
    positive or without negative bags is an :class:`InputError`.
    """
    if not work_mpp > 0:
        raise InputError(f"--work-mpp must be positive, got {work_mpp}")
    if max_bags_per_slide < 1:
        raise InputError(f"--max-bags-per-slide must be at least 1, got {max_bags_per_slide}")
    out: list[SlideBags] = []
    for k, slide in enumerate(slides):
        given, warning = slide_mpp(slide.slide, slide.mpp)
        warnings = [warning] if warning else []
        source = open_slide(slide.slide, mpp=given)
        try:
            work = plan_work(source, work_mpp=work_mpp, tile=tile)
            tissue = tissue_map(work)
            regions, notes = slide_regions(slide, source, work, tissue, class_map)
            warnings += notes
            labels = bag_labels_from_regions(work.grid, regions, work.downsample)
            bags = yield from read_slide_bags(
                source,
                work,
                labels.labels,
                name=slide.name,
                group=str(slide.slide),
                max_bags=max_bags_per_slide,
                rng=np.random.default_rng([seed, k]),
            )
        finally:
            source.close()
        if bags is None:
            warnings.append(f"{slide.name}: no tile is covered enough by a region to be a bag; skipped")
            out.append(SlideBags(slide, None, 0, 0, tuple(warnings)))
            continue
        out.append(SlideBags(slide, bags, labels.n_positive, labels.n_negative, tuple(warnings)))
    n_pos = sum(s.bags.n_pos for s in out if s.bags is not None)
    n_neg = sum(s.bags.n_neg for s in out if s.bags is not None)
    if not n_pos or not n_neg:
        missing = "positive (tumour-region)" if not n_pos else "negative (tumour-free)"
        raise InputError(
            f"the manifest's slides give no {missing} bags ({n_pos} positive, {n_neg} negative); "
            "annotate both kinds of region, or add a slide labelled negative"
        )
    return out


def split_by_slide(per_slide: Sequence[SlideBags], val_fraction: float, seed: int) -> CohortSplit:
    """Training and validation bags, split by slide.

    Slides whose row says ``split=val`` are the validation set when any does (the others train). Else,
    with at least two slides, whole slides are held out by :meth:`BagSet.split` (about ``val_fraction`` of
    the bags, seeded; slides marked ``split=train`` always train). With a single slide the bags themselves
    are split (tiles of one slide on both sides: the fallback, said in ``how``).
    """
    given = [s for s in per_slide if s.bags is not None]
    if not given:
        raise InputError("no slide gave any bags")

    def names(items: Sequence[SlideBags]) -> list[str]:
        return [s.slide.name for s in items]

    def joined(items: Sequence[SlideBags]) -> BagSet:
        return BagSet.concat([s.bags for s in items if s.bags is not None])

    explicit = [s for s in given if s.slide.split == "val"]
    if explicit:
        train = [s for s in given if s.slide.split != "val"]
        if not train:
            raise InputError("every slide with bags has split=val; leave at least one for training")
        return CohortSplit(
            joined(train), joined(explicit), names(train), names(explicit), "the manifest's split column"
        )
    if len(given) == 1:
        only = given[0]
        assert only.bags is not None
        ungrouped = replace(only.bags, groups=None)
        train_bags, val_bags = ungrouped.split(val_fraction, seed)
        note = (
            f"one slide only: its bags are split {len(train_bags)}/{len(val_bags)} for validation (tiles of "
            "the same slide on both sides; add slides for a validation by slide)"
        )
        return CohortSplit(train_bags, val_bags, names(given), names(given), "bags of the one slide", [note])
    forced = [s for s in given if s.slide.split == "train"]
    free = [s for s in given if s.slide.split != "train"]
    if not free:
        note = "every slide has split=train: nothing is held out, the last epoch is kept"
        return CohortSplit(joined(given), None, names(given), [], "none", [note])
    if len(free) == 1:
        return CohortSplit(joined(forced), joined(free), names(forced), names(free), "whole slides held out")
    train_part, val_part = joined(free).split(val_fraction, seed)
    val_groups = {str(g) for g in val_part.groups} if val_part.groups is not None else set()
    val_slides = [s for s in free if str(s.slide.slide) in val_groups]
    train_slides = forced + [s for s in free if str(s.slide.slide) not in val_groups]
    train = BagSet.concat([train_part, *[s.bags for s in forced if s.bags is not None]])
    return CohortSplit(train, val_part, names(train_slides), names(val_slides), "whole slides held out")


def sha256_of(paths: Sequence[str | os.PathLike[str] | None]) -> list[str | None]:
    """SHA-256 (hex) of each file of ``paths`` (``None`` stays ``None``), to recognise a run's inputs on
    ``--resume``; :class:`InputError` when one cannot be read."""
    import hashlib

    out: list[str | None] = []
    for p in paths:
        if p is None:
            out.append(None)
            continue
        try:
            out.append(hashlib.sha256(Path(p).read_bytes()).hexdigest())
        except OSError as exc:
            raise InputError(f"cannot read {p}: {exc.strerror or exc}") from None
    return out
