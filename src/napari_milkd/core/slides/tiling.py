"""The tile grid: square tiles at a target resolution (µm/px) over a slide, kept where there is tissue.

Owns tile placement and tile reading. Coordinates: ``TileGrid.origins_l0`` rows are ``(y, x)`` of each
tile's top-left corner in **level-0 pixels**; a tile covers ``tile_l0 × tile_l0`` level-0 pixels and is
returned as ``tile × tile`` pixels at the target resolution. Tiles are read from the coarsest pyramid
level that is at least as fine as the target (:func:`~napari_milkd.core.slides.slide.level_for_mpp`) and
resized, so results do not depend on which levels a scanner happened to write. May import numpy,
scikit-image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_milkd.core.errors import SlideError
from napari_milkd.core.slides.slide import SlideSource, level_for_mpp
from napari_milkd.core.slides.tissue import TissueMask
from napari_milkd.core.slides.types import SlideInfo


@dataclass(frozen=True)
class TileGrid:
    """Tiles over one slide.

    ``tile`` is the side in target pixels, ``stride`` the step in target pixels (``stride < tile``
    means overlap), ``tile_l0``/``stride_l0`` the same in level-0 pixels, ``level`` the pyramid level
    read, ``origins_l0`` an ``(N, 2)`` int64 array of ``(y, x)`` level-0 corners, ``tissue_fraction``
    the tissue fraction of each tile (1.0 when no tissue mask was used).
    """

    mpp: float
    tile: int
    stride: int
    tile_l0: float
    stride_l0: float
    level: int
    origins_l0: np.ndarray
    tissue_fraction: np.ndarray

    def __len__(self) -> int:
        return len(self.origins_l0)

    def bounds_l0(self, index: int) -> tuple[int, int, int, int]:
        """``(y0, x0, y1, x1)`` of tile ``index`` in level-0 pixels (end exclusive)."""
        y0, x0 = (int(v) for v in self.origins_l0[index])
        side = round(self.tile_l0)
        return y0, x0, y0 + side, x0 + side


def _axis_origins(length: float, tile: float, stride: float) -> np.ndarray:
    """Tile starts along one axis (level-0 units): regular steps, the last one moved back so the final
    tile ends at the slide edge; a single tile at 0 when the slide is shorter than a tile."""
    if length <= tile:
        return np.zeros(1)
    starts = np.arange(0.0, length - tile + 1e-9, stride)
    if starts[-1] + tile < length - 1e-9:
        starts = np.append(starts, length - tile)
    return starts


def tile_grid(
    info: SlideInfo,
    *,
    mpp: float,
    tile: int = 256,
    overlap: int = 0,
    tissue: TissueMask | None = None,
    min_tissue: float = 0.0,
) -> TileGrid:
    """Tiles of ``tile`` pixels at ``mpp`` µm/px covering the slide, keeping those whose tissue fraction
    is at least ``min_tissue`` (all tiles when ``tissue`` is None).

    With the default ``min_tissue=0`` every tissue pixel lies in at least one kept tile; no tile starts
    outside the slide; a tile extends past the edge only when the slide is smaller than one tile.
    """
    if info.mpp is None:
        raise SlideError(f"{info.path} has no µm/px; supply it before tiling")
    if tile <= 0 or not 0 <= overlap < tile:
        raise SlideError(f"need tile > 0 and 0 ≤ overlap < tile, got tile={tile}, overlap={overlap}")
    stride = tile - overlap
    scale = mpp / info.mpp  # level-0 pixels per target pixel
    tile_l0, stride_l0 = tile * scale, stride * scale
    height, width = info.shape
    ys = _axis_origins(height, tile_l0, stride_l0)
    xs = _axis_origins(width, tile_l0, stride_l0)
    grid = np.stack(np.meshgrid(ys, xs, indexing="ij"), axis=-1).reshape(-1, 2)
    # Rounding can push a start onto the edge when a tile is under a level-0 pixel (upsampling beyond
    # level 0): keep every start inside the slide, and each start once.
    origins = np.round(grid).astype(np.int64)
    origins[:, 0] = np.clip(origins[:, 0], 0, max(height - 1, 0))
    origins[:, 1] = np.clip(origins[:, 1], 0, max(width - 1, 0))
    origins = np.unique(origins, axis=0)
    if tissue is None:
        fraction = np.ones(len(origins))
    else:
        fraction = _tissue_fractions(tissue, origins, tile_l0)
        near = fraction > 0
        if not (float(tile_l0).is_integer() and float(stride_l0).is_integer()):
            # Rounded starts leave sub-pixel seams between fractional tiles: a tissue pixel in a seam is
            # still touched by its neighbouring tile, so keep tiles with tissue within one level-0 pixel.
            near = _tissue_fractions(tissue, origins - 1, tile_l0 + 2) > 0
        keep = near & (fraction >= min_tissue)
        origins, fraction = origins[keep], fraction[keep]
    return TileGrid(
        mpp=float(mpp),
        tile=int(tile),
        stride=int(stride),
        tile_l0=float(tile_l0),
        stride_l0=float(stride_l0),
        level=level_for_mpp(info, mpp),
        origins_l0=origins,
        tissue_fraction=fraction,
    )


def coverage_fractions(
    mask: np.ndarray, downsample: float, origins_l0: np.ndarray, tile_l0: float
) -> np.ndarray:
    """Share of each square tile (level-0 ``origins_l0`` rows ``(y, x)``, side ``tile_l0``) covered by a
    boolean ``mask`` made at ``downsample``: one integral image, vectorised over tiles."""
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1))
    integral[1:, 1:] = mask.astype(np.float64).cumsum(0).cumsum(1)
    o = np.asarray(origins_l0, dtype=np.float64)
    r0 = np.clip(np.floor(o[:, 0] / downsample).astype(int), 0, mask.shape[0])
    c0 = np.clip(np.floor(o[:, 1] / downsample).astype(int), 0, mask.shape[1])
    r1 = np.clip(np.ceil((o[:, 0] + tile_l0) / downsample).astype(int), 0, mask.shape[0])
    c1 = np.clip(np.ceil((o[:, 1] + tile_l0) / downsample).astype(int), 0, mask.shape[1])
    total = integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]
    return total / np.maximum((r1 - r0) * (c1 - c0), 1)


def _tissue_fractions(tissue: TissueMask, origins_l0: np.ndarray, tile_l0: float) -> np.ndarray:
    return coverage_fractions(tissue.mask, tissue.downsample, origins_l0, tile_l0)


def read_tile(source: SlideSource, grid: TileGrid, index: int) -> np.ndarray:
    """Tile ``index`` of ``grid`` as ``(tile, tile, 3)`` uint8 RGB at the grid's µm/px."""
    from skimage.transform import resize

    ds = source.info.levels[grid.level].downsample
    y0_l0, x0_l0 = (int(v) for v in grid.origins_l0[index])
    y, x = round(y0_l0 / ds), round(x0_l0 / ds)
    side = max(1, round(grid.tile_l0 / ds))
    region = source.read(grid.level, y, x, side, side)
    if side == grid.tile:
        return region
    out = resize(region, (grid.tile, grid.tile), order=1, anti_aliasing=side > grid.tile, preserve_range=True)
    return np.round(out).astype(np.uint8)
