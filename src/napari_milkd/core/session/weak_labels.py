"""Weak labels → bag labels: which tiles of a tile grid are positive, negative or ignored MIL bags.

Owns the rules that turn a pathologist's coarse regions into per-tile bag labels. Regions are a label
image at some downsample of level 0 (``REGION_TUMOUR`` = "contains tumour", ``REGION_FREE`` =
"tumour-free", 0 = unlabelled), as painted in the widget or rasterised from QuPath/ASAP annotations.
May import numpy only.

Rules (per tile, from the share of the tile covered by each region kind; :class:`BagRule`):

* **positive** when "contains tumour" covers at least ``min_positive`` of the tile: a positive bag
  only has to *contain* tumour, so a tile at the edge of a painted region still counts;
* **negative** when no "contains tumour" paint touches the tile and "tumour-free" paint is there:
  with :data:`REGIONS_RULE` it must cover at least 90 % of the tile (drawn or imported *regions*: a tile
  half outside a "Normal" rectangle may hold tumour); with :data:`SCRIBBLE_RULE` every painted pixel in
  the tile is tumour-free and the tile is mostly tissue (quick *scribbles* say "this area is clean");
* **ignore** otherwise (unlabelled, or mixed).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from napari_milkd.core.slides.tiling import TileGrid, coverage_fractions

REGION_TUMOUR = 1
REGION_FREE = 2

BAG_POSITIVE = 1
BAG_NEGATIVE = 0
BAG_IGNORE = -1


@dataclass(frozen=True)
class BagRule:
    """How painted regions make a tile a bag: ``min_positive`` of the tile painted "contains tumour"
    makes it positive; "tumour-free" paint over more than 0 and at least ``min_negative`` of it, no
    tumour paint and at least ``min_tissue`` of it tissue make it negative. ``explanation`` says so in
    words for the user."""

    name: str
    min_positive: float = 0.25
    min_negative: float = 0.9
    min_tissue: float = 0.0
    explanation: str = ""


#: For drawn or imported regions (QuPath, ASAP): a tumour-free tile is ≥ 90 % covered.
REGIONS_RULE = BagRule(
    "regions",
    min_negative=0.9,
    explanation="a tile is tumour-free when tumour-free paint covers ≥ 90 % of it, with no tumour paint",
)
#: For quick strokes: a tile is tumour-free when all paint in it is tumour-free and it is mostly tissue.
SCRIBBLE_RULE = BagRule(
    "scribbles",
    min_negative=0.0,
    min_tissue=0.5,
    explanation="a tile is tumour-free when all paint in it is tumour-free and at least half of it is tissue",
)
#: The rules by name, the default first.
BAG_RULES = {rule.name: rule for rule in (SCRIBBLE_RULE, REGIONS_RULE)}


def bag_rule(name: str) -> BagRule:
    """The rule called ``name`` (``"scribbles"`` or ``"regions"``); :class:`ValueError` otherwise."""
    try:
        return BAG_RULES[name]
    except KeyError:
        raise ValueError(f"unknown bag rule {name!r}; choose {' or '.join(BAG_RULES)}") from None


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
    rule: BagRule = REGIONS_RULE,
    min_positive: float | None = None,
    min_negative: float | None = None,
) -> BagLabels:
    """Bag label of every tile of ``grid`` from a region label image made at ``downsample``, by ``rule``
    (``min_positive`` / ``min_negative`` override its thresholds; a tile's tissue share is the grid's
    ``tissue_fraction``)."""
    if regions.ndim != 2:
        raise ValueError(f"regions must be a 2-D label image, got shape {regions.shape}")
    rule = _with_thresholds(rule, min_positive, min_negative)
    if len(grid) == 0:
        return BagLabels(np.zeros(0, np.int8))
    tumour = coverage_fractions(regions == REGION_TUMOUR, downsample, grid.origins_l0, grid.tile_l0)
    free = coverage_fractions(regions == REGION_FREE, downsample, grid.origins_l0, grid.tile_l0)
    return _labels_from_fractions(tumour, free, np.asarray(grid.tissue_fraction), rule)


def _with_thresholds(rule: BagRule, min_positive: float | None, min_negative: float | None) -> BagRule:
    if min_positive is not None:
        rule = replace(rule, min_positive=min_positive)
    if min_negative is not None:
        rule = replace(rule, min_negative=min_negative)
    return rule


def _labels_from_fractions(
    tumour: np.ndarray, free: np.ndarray, tissue: np.ndarray, rule: BagRule
) -> BagLabels:
    labels = np.full(len(tumour), BAG_IGNORE, np.int8)
    negative = (free > 0) & (free >= rule.min_negative) & (tumour == 0) & (tissue >= rule.min_tissue)
    labels[negative] = BAG_NEGATIVE
    labels[tumour >= rule.min_positive] = BAG_POSITIVE
    return BagLabels(labels)


class BagCounter:
    """Per-tile painted-pixel counts ("contains tumour", "tumour-free") of a region map, kept current
    by box: after a brush stroke only the tiles under the changed box are recounted, so a stroke costs
    the size of the stroke, not of the slide. :meth:`labels` equals :func:`bag_labels_from_regions` on
    the same map (the same tile boxes and rules; counts are exact integers)."""

    def __init__(
        self,
        grid: TileGrid,
        downsample: float,
        regions: np.ndarray,
        *,
        rule: BagRule = REGIONS_RULE,
        min_positive: float | None = None,
        min_negative: float | None = None,
    ) -> None:
        self.shape = regions.shape
        self.rule = _with_thresholds(rule, min_positive, min_negative)
        self.tissue = np.asarray(grid.tissue_fraction)
        o = np.asarray(grid.origins_l0, dtype=np.float64).reshape(-1, 2)
        rows, cols = regions.shape
        # The tile boxes of :func:`coverage_fractions`, in map pixels.
        self.r0 = np.clip(np.floor(o[:, 0] / downsample).astype(np.int64), 0, rows)
        self.c0 = np.clip(np.floor(o[:, 1] / downsample).astype(np.int64), 0, cols)
        self.r1 = np.clip(np.ceil((o[:, 0] + grid.tile_l0) / downsample).astype(np.int64), 0, rows)
        self.c1 = np.clip(np.ceil((o[:, 1] + grid.tile_l0) / downsample).astype(np.int64), 0, cols)
        self.area = np.maximum((self.r1 - self.r0) * (self.c1 - self.c0), 1)
        self.tumour = np.zeros(len(o), np.int64)
        self.free = np.zeros(len(o), np.int64)
        self.update(regions)

    def update(self, regions: np.ndarray, box: tuple[int, int, int, int] | None = None) -> None:
        """Recount the tiles that overlap ``box`` (``(row0, col0, row1, col1)``, end exclusive, in map
        pixels; None: every tile) after ``regions`` changed there."""
        if regions.shape != self.shape:
            raise ValueError(f"regions are {regions.shape}, the counter was made for {self.shape}")
        if box is None:
            hit = np.arange(len(self.r0))
        else:
            y0, x0, y1, x1 = box
            hit = np.flatnonzero((self.r0 < y1) & (self.r1 > y0) & (self.c0 < x1) & (self.c1 > x0))
        if hit.size == 0:
            return
        # Pixel counts summed block by block between the tiles' edges (one pass over the union of the
        # hit tiles), then an integral image of those few blocks, read at the tiles' corners.
        uy0, ux0 = int(self.r0[hit].min()), int(self.c0[hit].min())
        uy1, ux1 = int(self.r1[hit].max()), int(self.c1[hit].max())
        part = regions[uy0:uy1, ux0:ux1]
        if part.size == 0:
            self.tumour[hit] = self.free[hit] = 0
            return
        r0, c0 = self.r0[hit] - uy0, self.c0[hit] - ux0
        r1, c1 = self.r1[hit] - uy0, self.c1[hit] - ux0
        rows = np.unique(np.concatenate([[0], r0, r1]))
        cols = np.unique(np.concatenate([[0], c0, c1]))
        rows, cols = rows[rows < part.shape[0]], cols[cols < part.shape[1]]
        ra, rb = np.searchsorted(rows, r0), np.searchsorted(rows, r1)
        ca, cb = np.searchsorted(cols, c0), np.searchsorted(cols, c1)
        for value, counts in ((REGION_TUMOUR, self.tumour), (REGION_FREE, self.free)):
            by_rows = np.add.reduceat(part == value, rows, axis=0, dtype=np.int64)
            blocks = np.add.reduceat(by_rows, cols, axis=1)
            integral = np.zeros((len(rows) + 1, len(cols) + 1), np.int64)
            integral[1:, 1:] = blocks.cumsum(0).cumsum(1)
            counts[hit] = integral[rb, cb] - integral[ra, cb] - integral[rb, ca] + integral[ra, ca]

    def labels(self) -> BagLabels:
        """The bag labels the current counts give."""
        return _labels_from_fractions(self.tumour / self.area, self.free / self.area, self.tissue, self.rule)

    def use_rule(self, rule: BagRule) -> None:
        """Count by ``rule`` from now on (the counts stay: only how they become bags changes)."""
        self.rule = rule

    def counts(self) -> tuple[int, int]:
        """``(positive, negative)`` bags."""
        labels = self.labels()
        return labels.n_positive, labels.n_negative


def whole_slide_negative(grid: TileGrid) -> BagLabels:
    """Every tile negative: the pathologist marked the whole slide tumour-free."""
    return BagLabels(np.full(len(grid), BAG_NEGATIVE, np.int8))
