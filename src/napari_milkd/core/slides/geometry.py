"""Working-resolution geometry of one slide: the map a tile grid paints into.

Owns :class:`SlideWork` (tissue, tile grid and map geometry at a working µm/px), the mapping between tiles
and map pixels, and reading tiles. May import numpy and the slides package only.

Geometry. The working map has one pixel per tile pixel: downsample ``ds = grid.tile_l0 / grid.tile`` from
level 0, shape ``ceil(level-0 shape / ds)``, arrays indexed ``(row, col) = (y, x)``. Map pixel ``(r, c)``
covers level-0 ``[r·ds, (r+1)·ds)``; tile ``i`` lands at map ``(round(y_l0 / ds), round(x_l0 / ds))``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_milkd.core.slides.slide import SlideSource
from napari_milkd.core.slides.tiling import TileGrid, read_tile, tile_grid
from napari_milkd.core.slides.tissue import TissueMask, slide_tissue


def map_geometry(source: SlideSource, grid: TileGrid) -> tuple[float, tuple[int, int]]:
    """``(downsample, (rows, cols))`` of the working-resolution map for ``grid`` over ``source``."""
    ds = grid.tile_l0 / grid.tile
    h0, w0 = source.info.shape
    return ds, (int(np.ceil(h0 / ds)), int(np.ceil(w0 / ds)))


def read_tiles(source: SlideSource, grid: TileGrid, index: np.ndarray) -> np.ndarray:
    """Tiles ``index`` of ``grid`` as ``(N, tile, tile, 3)`` uint8."""
    return np.stack([read_tile(source, grid, int(i)) for i in index])


def tile_map_origins(grid: TileGrid, downsample: float) -> np.ndarray:
    """``(N, 2)`` int64 map ``(row, col)`` of each tile's top-left corner (``round(l0 / ds)``)."""
    return np.round(grid.origins_l0 / downsample).astype(np.int64)


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
