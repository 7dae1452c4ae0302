"""Slide-level glue between tiles, weak labels, human corrections and the training engine.

Owns the working-resolution geometry of one slide (:class:`SlideWork`), turning painted regions and
corrections into tile bags (:func:`slide_bags`), recording corrections from an edited mask
(:func:`record_corrections`), and scoring a mask against ground truth. Both front-ends (widget, headless
demo) call these, so they train on exactly the same data. May import numpy and core modules.

All maps here are at the working resolution: downsample ``SlideWork.downsample`` from level 0, one map
pixel per tile pixel (see :mod:`napari_milkd.core.inference.stream`).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import numpy as np

from napari_milkd.core.engine.datasets import BagSet
from napari_milkd.core.errors import InputError
from napari_milkd.core.progress import drain
from napari_milkd.core.session.weak_labels import (
    BAG_IGNORE,
    REGIONS_RULE,
    BagLabels,
    BagRule,
    bag_labels_from_regions,
)
from napari_milkd.core.slides.geometry import SlideWork, read_tiles, tile_crops
from napari_milkd.core.slides.slide import SlideSource

#: Value of "no opinion" in a hard-label (correction) map; 0 = not tumour, 1 = tumour.
NO_OPINION = 255


#: Tiles read between two :class:`ReadingTiles` events.
READ_CHUNK = 16


@dataclass(frozen=True)
class ReadingTiles:
    """Progress of reading a job's bag tiles from the slide: ``done`` of ``total`` tiles read."""

    stage: str
    done: int
    total: int
    activity: str = "reading"


def slide_bags_job(
    source: SlideSource,
    work: SlideWork,
    regions: np.ndarray,
    *,
    hard_labels: np.ndarray | None = None,
    rule: BagRule = REGIONS_RULE,
    min_positive: float | None = None,
    min_negative: float | None = None,
    stage: str = "bags",
) -> Generator[ReadingTiles, None, tuple[BagSet, BagLabels, np.ndarray]]:
    """Tile bags of ``source`` from a region label map (1 tumour, 2 tumour-free) at the working resolution,
    as a job: yields :class:`ReadingTiles` every :data:`READ_CHUNK` tiles (the first at 0, before any
    read), so a front end shows a determinate bar from the start.

    Tiles become bags by ``rule`` (see :mod:`~napari_milkd.core.session.weak_labels`). Returns the
    bags (labelled tiles only), every tile's bag label, and the tile indices of the bags.
    ``hard_labels`` (working map, 0/1, ``NO_OPINION`` elsewhere) become the bags' per-pixel overrides.
    Raises :class:`InputError` when positive or negative bags are missing.
    """
    if regions.shape != work.shape:
        raise InputError(f"weak-label map is {regions.shape}, expected {work.shape} (working resolution)")
    if hard_labels is not None and hard_labels.shape != work.shape:
        raise InputError(f"corrections map is {hard_labels.shape}, expected {work.shape}")
    labels = bag_labels_from_regions(
        work.grid,
        regions,
        work.downsample,
        rule=rule,
        min_positive=min_positive,
        min_negative=min_negative,
    )
    missing = labels.missing_kind()
    if missing:
        hint = "paint 'contains tumour' regions" if missing == "positive" else "paint 'tumour-free' regions"
        raise InputError(
            f"no {missing} bags: {labels.n_positive} positive, {labels.n_negative} negative tiles; {hint}"
        )
    index = np.flatnonzero(labels.labels != BAG_IGNORE)
    chunks: list[np.ndarray] = []
    yield ReadingTiles(stage, 0, len(index))
    for start in range(0, len(index), READ_CHUNK):
        chunks.append(read_tiles(source, work.grid, index[start : start + READ_CHUNK]))
        yield ReadingTiles(stage, min(start + READ_CHUNK, len(index)), len(index))
    images = np.concatenate(chunks)
    hard = (
        None
        if hard_labels is None
        else tile_crops(hard_labels.astype(np.uint8), work, index, fill=NO_OPINION)
    )
    bags = BagSet.from_arrays(
        images,
        labels.labels[index].astype(np.uint8),
        hard_labels=hard,
        names=[f"tile_{i}" for i in index],
    )
    return bags, labels, index


def slide_bags(
    source: SlideSource,
    work: SlideWork,
    regions: np.ndarray,
    *,
    hard_labels: np.ndarray | None = None,
    rule: BagRule = REGIONS_RULE,
    min_positive: float | None = None,
    min_negative: float | None = None,
) -> tuple[BagSet, BagLabels, np.ndarray]:
    """:func:`slide_bags_job` run to its end (no progress): the bags, every tile's label, the bags' tiles."""
    return drain(
        slide_bags_job(
            source,
            work,
            regions,
            hard_labels=hard_labels,
            rule=rule,
            min_positive=min_positive,
            min_negative=min_negative,
        )
    )


def record_corrections(hard: np.ndarray, before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Hard labels updated with what changed between two versions of an edited mask.

    Pixels where ``after`` differs from ``before`` become ground truth (1 where ``after`` > 0, else 0);
    all other pixels keep their previous hard label (``NO_OPINION`` when untouched).
    """
    if not (hard.shape == before.shape == after.shape):
        raise InputError("corrections, previous and edited masks must have the same shape")
    changed = before != after
    out = hard.copy()
    out[changed] = (after[changed] > 0).astype(hard.dtype)
    return out


def apply_corrections(mask: np.ndarray, hard: np.ndarray) -> np.ndarray:
    """``mask`` with every corrected pixel forced to its hard label (corrections survive new predictions)."""
    out = mask.copy()
    known = hard != NO_OPINION
    out[known] = hard[known]
    return out
