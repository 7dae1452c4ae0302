"""Property tests of the tile grid at arbitrary slide sizes, resolutions, tile sizes and overlaps.

A tile covers level-0 ``[origin, origin + tile_l0)`` on each axis; a level-0 pixel ``p`` is "in" a tile
when ``[p, p + 1)`` meets that interval, and is a tissue pixel when it meets a tissue cell of the
tissue mask. For every grid:

* every tissue pixel is in a kept tile (with ``min_tissue=0``);
* no tile starts outside the slide;
* a tile extends past the slide's edge only when the slide is smaller than one tile (then the single
  tile on that axis starts at 0); otherwise by at most the half pixel of rounding its start.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from napari_milkd.core.slides.tiling import tile_grid
from napari_milkd.core.slides.tissue import TissueMask
from napari_milkd.core.slides.types import LevelInfo, SlideInfo


@st.composite
def grids(draw: st.DrawFn) -> tuple[SlideInfo, float, int, int, TissueMask]:
    """A slide (size, µm/px), a target µm/px, a tile size and overlap, and a random tissue mask."""
    height, width = draw(st.integers(1, 1500)), draw(st.integers(1, 1500))
    mpp = draw(st.one_of(st.sampled_from([0.25, 0.5, 0.499]), st.floats(0.1, 2.0)))
    target = draw(st.one_of(st.sampled_from([0.5, 1.0, 2.0]), st.floats(0.1, 16.0)))
    tile = draw(st.integers(1, 512))
    overlap = draw(st.integers(0, tile - 1))
    stride_l0 = (tile - overlap) * target / mpp
    assume(max(height, width) / stride_l0 <= 40)  # keep each example small
    ds = max(draw(st.floats(1.0, 32.0)), max(height, width) / 48)
    shape = (math.ceil(height / ds), math.ceil(width / ds))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    mask = rng.random(shape) < draw(st.sampled_from([0.0, 0.02, 0.3, 1.0]))
    info = SlideInfo(
        path="fuzz", vendor="array", levels=(LevelInfo(width, height, 1.0),), mpp_x=mpp, mpp_y=mpp
    )
    return info, target, tile, overlap, TissueMask(mask=mask, downsample=ds)


def _meets(lo: np.ndarray, hi: np.ndarray, starts: np.ndarray, side: float) -> np.ndarray:
    """``(len(lo), len(starts))`` float32: 1 where ``[start, start + side)`` meets ``[lo, hi)``."""
    return ((starts[None, :] < hi[:, None]) & (starts[None, :] + side > lo[:, None])).astype(np.float32)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)
@given(grids())
def test_property_tile_grid_covers_tissue_and_stays_inside(case: tuple) -> None:
    info, target, tile, overlap, tissue = case
    grid = tile_grid(info, mpp=target, tile=tile, overlap=overlap, tissue=tissue)
    height, width = info.shape
    t = grid.tile_l0
    ys, xs = grid.origins_l0[:, 0], grid.origins_l0[:, 1]

    # No tile starts outside; past the edge only when the slide is smaller than a tile.
    for starts, length in ((ys, height), (xs, width)):
        assert (starts >= 0).all() and (starts < length).all()
        if length < t:
            assert (starts == 0).all()
        else:
            assert (starts + t <= length + 0.5).all()

    # Tissue pixels: level-0 pixels that meet a tissue cell (separable: rows × mask × cols).
    ds = tissue.downsample
    cy, cx = np.arange(tissue.mask.shape[0]), np.arange(tissue.mask.shape[1])
    py, px = np.arange(height, dtype=float), np.arange(width, dtype=float)
    touch_y = _meets(py, py + 1, cy * ds, ds)  # pixel rows × cell rows
    touch_x = _meets(px, px + 1, cx * ds, ds)
    tissue_px = (touch_y @ tissue.mask.astype(np.float32) @ touch_x.T) > 0

    # Pixels in a kept tile: (pixels × tile rows) · kept(tile rows × tile cols) · (tile cols × pixels).
    uy, iy = np.unique(ys, return_inverse=True)
    ux, ix = np.unique(xs, return_inverse=True)
    kept = np.zeros((len(uy), len(ux)), np.float32)
    kept[iy, ix] = 1
    in_tile = (_meets(py, py + 1, uy.astype(float), t) @ kept @ _meets(px, px + 1, ux.astype(float), t).T) > 0
    assert in_tile[tissue_px].all()
    if not tissue.mask.any():
        assert len(grid) == 0


def test_tissue_in_the_seam_after_a_rounded_last_tile_is_covered() -> None:
    """Found by the property test: tile_l0 ≈ 6.74 px, the last start rounds down from 57.26 to 57, so that
    tile ends at 63.74 and misses the tissue cell at [63.94, 64); it must still be kept (pixel 63)."""
    info = SlideInfo(
        path="seam", vendor="array", levels=(LevelInfo(64, 1, 1.0),), mpp_x=0.296875, mpp_y=0.296875
    )
    mask = np.zeros((1, 12), bool)
    mask[0, 11] = True
    grid = tile_grid(info, mpp=1.0, tile=2, tissue=TissueMask(mask=mask, downsample=5.8125))
    assert grid.origins_l0[:, 1].tolist() == [57]
    test_property_tile_grid_covers_tissue_and_stays_inside.hypothesis.inner_test(  # type: ignore[attr-defined]
        (info, 1.0, 2, 0, TissueMask(mask=mask, downsample=5.8125))
    )
