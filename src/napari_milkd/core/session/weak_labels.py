"""Weak labels → bag labels: which tiles of a tile grid are positive, negative or ignored MIL bags.

Owns the rules that turn a pathologist's coarse regions into per-tile bag labels. Regions are a label
image at some downsample of level 0 (``REGION_TUMOUR`` = "contains tumour", ``REGION_FREE`` =
"tumour-free", 0 = unlabelled), as painted in the widget or rasterised from QuPath/ASAP annotations.
May import numpy only.

Rules (per tile, from the share of the tile covered by each region kind):

* **positive** when "contains tumour" covers at least ``min_positive`` of the tile: a positive bag
  only has to *contain* tumour, so a tile at the edge of a painted region still counts;
* **negative** when "tumour-free" covers at least ``min_negative`` of the tile and no "contains
  tumour" paint touches it: a negative bag must be clean everywhere;
* **ignore** otherwise (unlabelled, or mixed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_milkd.core.slides.tiling import TileGrid, coverage_fractions

REGION_TUMOUR = 1
REGION_FREE = 2

BAG_POSITIVE = 1
BAG_NEGATIVE = 0
BAG_IGNORE = -1


@dataclass(frozen=True)
class BagLabels:
    """Per-tile bag labels (``BAG_POSITIVE``/``BAG_NEGATIVE``/``BAG_IGNORE``, int8) and their counts."""

    labels: np.ndarray

    @property
    def n_positive(self) -> int:
        """Number of positive bags."""
        return int((self.labels == BAG_POSITIVE).sum())

    @property
    def n_negative(self) -> int:
        """Number of negative bags."""
        return int((self.labels == BAG_NEGATIVE).sum())

    @property
    def n_ignored(self) -> int:
        """Number of tiles without a usable label."""
        return int((self.labels == BAG_IGNORE).sum())

    def missing_kind(self) -> str | None:
        """``"positive"`` or ``"negative"`` when that kind of bag is absent (training needs both)."""
        if self.n_positive == 0:
            return "positive"
        if self.n_negative == 0:
            return "negative"
        return None


def bag_labels_from_regions(
    grid: TileGrid,
    regions: np.ndarray,
    downsample: float,
    *,
    min_positive: float = 0.25,
    min_negative: float = 0.9,
) -> BagLabels:
    """Bag label of every tile of ``grid`` from a region label image made at ``downsample``."""
    if regions.ndim != 2:
        raise ValueError(f"regions must be a 2-D label image, got shape {regions.shape}")
    if len(grid) == 0:
        return BagLabels(np.zeros(0, np.int8))
    tumour = coverage_fractions(regions == REGION_TUMOUR, downsample, grid.origins_l0, grid.tile_l0)
    free = coverage_fractions(regions == REGION_FREE, downsample, grid.origins_l0, grid.tile_l0)
    labels = np.full(len(grid), BAG_IGNORE, np.int8)
    labels[(free >= min_negative) & (tumour == 0)] = BAG_NEGATIVE
    labels[tumour >= min_positive] = BAG_POSITIVE
    return BagLabels(labels)


def whole_slide_negative(grid: TileGrid) -> BagLabels:
    """Every tile negative: the pathologist marked the whole slide tumour-free."""
    return BagLabels(np.full(len(grid), BAG_NEGATIVE, np.int8))
