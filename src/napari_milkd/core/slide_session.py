"""Slide-level glue between tiles, weak labels, human corrections and the training engine.

Owns the working-resolution geometry of one slide (:class:`SlideWork`), turning painted regions and
corrections into tile bags (:func:`slide_bags`), recording corrections from an edited mask
(:func:`record_corrections`), and scoring a mask against ground truth. Both front-ends (widget, headless
demo) call these, so they train on exactly the same data. May import numpy and core modules.

All maps here are at the working resolution: downsample ``SlideWork.downsample`` from level 0, one map
pixel per tile pixel (see :mod:`napari_milkd.core.infer`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_milkd.core.datasets import BagSet
from napari_milkd.core.errors import InputError
from napari_milkd.core.infer import map_geometry, read_tiles, tile_map_origins
from napari_milkd.core.slide import SlideSource
from napari_milkd.core.tiling import TileGrid, tile_grid
from napari_milkd.core.tissue import TissueMask, slide_tissue
from napari_milkd.core.weak_labels import BAG_IGNORE, BagLabels, bag_labels_from_regions

#: Value of "no opinion" in a hard-label (correction) map; 0 = not tumour, 1 = tumour.
NO_OPINION = 255


@dataclass(frozen=True)
class SlideWork:
    """Tile grid and working-resolution map geometry of one slide."""

    grid: TileGrid
    tissue: TissueMask
    downsample: float
    shape: tuple[int, int]


def plan_work(source: SlideSource, *, work_mpp: float, tile: int, overlap: int = 0) -> SlideWork:
    """Tissue, tile grid and map geometry for ``source`` at ``work_mpp`` µm/px with ``tile``-px tiles."""
    tissue = slide_tissue(source)
    grid = tile_grid(source.info, mpp=work_mpp, tile=tile, overlap=overlap, tissue=tissue)
    ds, shape = map_geometry(source, grid)
    return SlideWork(grid=grid, tissue=tissue, downsample=ds, shape=shape)


def tissue_map(work: SlideWork) -> np.ndarray:
    """The tissue mask resampled (nearest) onto the working map, bool."""
    rows = np.minimum(
        ((np.arange(work.shape[0]) + 0.5) * work.downsample / work.tissue.downsample).astype(int),
        work.tissue.mask.shape[0] - 1,
    )
    cols = np.minimum(
        ((np.arange(work.shape[1]) + 0.5) * work.downsample / work.tissue.downsample).astype(int),
        work.tissue.mask.shape[1] - 1,
    )
    return work.tissue.mask[np.ix_(rows, cols)]


def tile_crops(array: np.ndarray, work: SlideWork, index: np.ndarray, fill: int | float = 0) -> np.ndarray:
    """Crops of a working map under tiles ``index``: ``(N, tile, tile)``, padded with ``fill``."""
    t = work.grid.tile
    out = np.full((len(index), t, t), fill, dtype=array.dtype)
    origins = tile_map_origins(work.grid, work.downsample)
    for k, i in enumerate(index):
        r0, c0 = origins[i]
        crop = array[r0 : r0 + t, c0 : c0 + t]
        out[k, : crop.shape[0], : crop.shape[1]] = crop
    return out


def slide_bags(
    source: SlideSource,
    work: SlideWork,
    regions: np.ndarray,
    *,
    hard_labels: np.ndarray | None = None,
    min_positive: float = 0.25,
    min_negative: float = 0.9,
) -> tuple[BagSet, BagLabels, np.ndarray]:
    """Tile bags of ``source`` from a region label map (1 tumour, 2 tumour-free) at the working resolution.

    Returns the bags (labelled tiles only), every tile's bag label, and the tile indices of the bags.
    ``hard_labels`` (working map, 0/1, ``NO_OPINION`` elsewhere) become the bags' per-pixel overrides.
    Raises :class:`InputError` when positive or negative bags are missing.
    """
    if regions.shape != work.shape:
        raise InputError(f"weak-label map is {regions.shape}, expected {work.shape} (working resolution)")
    labels = bag_labels_from_regions(
        work.grid, regions, work.downsample, min_positive=min_positive, min_negative=min_negative
    )
    missing = labels.missing_kind()
    if missing:
        hint = "paint 'contains tumour' regions" if missing == "positive" else "paint 'tumour-free' regions"
        raise InputError(
            f"no {missing} bags: {labels.n_positive} positive, {labels.n_negative} negative tiles; {hint}"
        )
    index = np.flatnonzero(labels.labels != BAG_IGNORE)
    images = read_tiles(source, work.grid, index)
    hard = None
    if hard_labels is not None:
        if hard_labels.shape != work.shape:
            raise InputError(f"corrections map is {hard_labels.shape}, expected {work.shape}")
        hard = tile_crops(hard_labels.astype(np.uint8), work, index, fill=NO_OPINION)
    bags = BagSet.from_arrays(
        images,
        labels.labels[index].astype(np.uint8),
        hard_labels=hard,
        names=[f"tile_{i}" for i in index],
    )
    return bags, labels, index


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


def mask_from_probability(
    probability: np.ndarray, tissue: np.ndarray, *, sigma: float = 2.0, min_object_px: int = 16
) -> np.ndarray:
    """The editable mask of a probability map: Gaussian-smoothed (``sigma`` map pixels, as the paper
    smooths before its 0.5 threshold), thresholded at 0.5, restricted to tissue, specks under
    ``min_object_px`` pixels removed. uint8 0/1."""
    from scipy import ndimage
    from skimage.morphology import remove_small_objects

    smooth = ndimage.gaussian_filter(probability.astype(np.float32), sigma) if sigma > 0 else probability
    mask = (smooth > 0.5) & tissue
    if min_object_px > 0 and mask.any():
        mask = remove_small_objects(mask, max_size=min_object_px)
    return mask.astype(np.uint8)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice (= F1) of two boolean masks; 1.0 when both are empty."""
    p, t = pred.astype(bool), truth.astype(bool)
    denom = p.sum() + t.sum()
    return 1.0 if denom == 0 else float(2 * (p & t).sum() / denom)
