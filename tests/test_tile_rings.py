"""The tiles layer draws each tile as a ring in its data (issue 16: napari computes no contour over the
whole map): ``tile_map`` and ``repaint_tiles`` agree, and a repaint touches only the changed tiles' rings."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from napari.layers import Labels

from napari_milkd._widget.slide_layers import TILE_RING_PX, repaint_tiles, ring_pixels, tile_map, tile_values
from napari_milkd.core.session.weak_labels import BAG_IGNORE, BAG_NEGATIVE, BAG_POSITIVE


def _work(shape: tuple[int, int], tile: int, step: int) -> SimpleNamespace:
    rows = np.arange(0, shape[0], step)
    cols = np.arange(0, shape[1], step)
    origins = np.array([(r, c) for r in rows for c in cols], np.float64)
    grid = SimpleNamespace(origins_l0=origins, tile=tile, tile_l0=tile, level=0, downsample=1.0)
    return SimpleNamespace(grid=grid, downsample=1.0, shape=shape)


def test_ring_pixels_outline_a_tile_clipped_to_the_map() -> None:
    yy, xx = ring_pixels(0, 0, 8, (100, 100))
    on = np.zeros((100, 100), bool)
    on[yy, xx] = True
    assert on[:8, :8].sum() == 64 - (8 - 2 * TILE_RING_PX) ** 2 and on.sum() == on[:8, :8].sum()
    yy, xx = ring_pixels(96, 96, 8, (100, 100))  # clipped at the map's corner
    assert yy.max() == 99 and xx.max() == 99 and yy.min() == 96
    assert ring_pixels(100, 0, 8, (100, 100))[0].size == 0


def test_tile_map_and_repaint_agree() -> None:
    from napari_milkd.core.slides import geometry

    work = _work((70, 90), 16, 16)
    n = len(work.grid.origins_l0)
    origins = geometry.tile_map_origins(work.grid, work.downsample)
    assert len(origins) == n
    rng = np.random.default_rng(0)
    before = rng.choice([BAG_IGNORE, BAG_NEGATIVE, BAG_POSITIVE], n).astype(np.int8)
    after = before.copy()
    after[[0, 5, n - 1]] = np.where(before[[0, 5, n - 1]] == BAG_POSITIVE, BAG_NEGATIVE, BAG_POSITIVE)
    drawn = tile_map(work, before)
    assert drawn[TILE_RING_PX + 1, TILE_RING_PX + 1] == 0 and drawn[0, 0] != 0  # rings, empty inside
    layer = Labels(drawn.copy())
    changed = repaint_tiles(layer, work, tile_values(work, before), tile_values(work, after))
    assert changed == 3
    assert np.array_equal(layer.data, tile_map(work, after))
    moved = np.argwhere(layer.data != drawn)
    assert moved[:, 0].max() < 70 and len(moved) <= 3 * (16 * 16 - 12 * 12)
