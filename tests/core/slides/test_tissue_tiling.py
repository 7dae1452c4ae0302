"""Tissue detection and the tile grid at a target µm/px."""

from __future__ import annotations

import numpy as np
import pytest

from napari_milkd.core.errors import SlideError
from napari_milkd.core.slides.slide import ArraySlideSource
from napari_milkd.core.slides.tiling import read_tile, tile_grid
from napari_milkd.core.slides.tissue import TissueMask, slide_tissue, tissue_mask


def _disk_slide(height: int = 900, width: int = 1400) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:height, 0:width]
    disk = (yy - height / 2) ** 2 + (xx - width / 2) ** 2 < (height / 3) ** 2
    rng = np.random.default_rng(0)
    image = np.full((height, width, 3), 240, np.uint8)
    pink = np.array([230, 150, 190]) + rng.integers(-10, 10, (height, width, 3))
    image[disk] = np.clip(pink[disk], 0, 255)
    return image, disk


def test_tissue_mask_finds_the_stained_disk() -> None:
    image, disk = _disk_slide()
    mask = tissue_mask(image)
    assert (mask == disk).mean() > 0.99


def test_grey_background_is_not_tissue() -> None:
    """Pure Otsu calls noise on a grey, empty slide tissue; the fixed floor does not."""
    rng = np.random.default_rng(1)
    grey = np.clip(200 + rng.normal(0, 3, (400, 400, 1)), 0, 255).astype(np.uint8).repeat(3, axis=2)
    grey[..., 2] = np.clip(grey[..., 2].astype(int) + rng.integers(0, 3, (400, 400)), 0, 255)
    assert tissue_mask(grey, use_otsu=True).mean() < 0.01
    assert tissue_mask(grey).mean() < 0.01


def test_slide_tissue_downsample_maps_to_level0() -> None:
    image, disk = _disk_slide(2000, 3000)
    source = ArraySlideSource(image, mpp=0.5)
    tm = slide_tissue(source, max_side=800)
    assert max(tm.mask.shape) <= 800
    ratio = 3000 / tm.mask.shape[1]
    assert tm.downsample == pytest.approx(ratio, rel=0.01)
    assert tm.fraction == pytest.approx(disk.mean(), abs=0.02)


def test_grid_covers_every_tissue_pixel_and_stays_inside() -> None:
    image, _ = _disk_slide()
    source = ArraySlideSource(image, mpp=0.25)
    tm = TissueMask(mask=tissue_mask(image), downsample=1.0)
    grid = tile_grid(source.info, mpp=1.0, tile=64, tissue=tm)
    assert grid.tile_l0 == pytest.approx(256)
    covered = np.zeros(image.shape[:2], bool)
    for i in range(len(grid)):
        y0, x0, y1, x1 = grid.bounds_l0(i)
        assert y0 >= 0 and x0 >= 0 and y1 <= image.shape[0] and x1 <= image.shape[1]
        covered[y0:y1, x0:x1] = True
    assert covered[tm.mask].all()
    assert len(grid) < 6 * 4  # background-only tiles dropped
    assert (grid.tissue_fraction > 0).all()


def test_grid_overlap_and_level_choice() -> None:
    image, _ = _disk_slide(2048, 2048)
    source = ArraySlideSource(image, mpp=0.5, min_size=256)
    grid = tile_grid(source.info, mpp=2.0, tile=128, overlap=64)
    assert grid.stride == 64 and grid.stride_l0 == pytest.approx(256)
    assert grid.level == 2  # 2.0 µm/px exactly
    ys = np.unique(grid.origins_l0[:, 0])
    assert ys[0] == 0 and ys[-1] == 2048 - 512
    assert np.all(np.diff(ys) == 256)


def test_min_tissue_and_bad_arguments() -> None:
    image, _ = _disk_slide()
    source = ArraySlideSource(image, mpp=0.25)
    tm = TissueMask(mask=tissue_mask(image), downsample=1.0)
    loose = tile_grid(source.info, mpp=1.0, tile=64, tissue=tm)
    strict = tile_grid(source.info, mpp=1.0, tile=64, tissue=tm, min_tissue=0.9)
    assert 0 < len(strict) < len(loose)
    assert (strict.tissue_fraction >= 0.9).all()
    with pytest.raises(SlideError):
        tile_grid(source.info, mpp=1.0, tile=64, overlap=64)
    no_mpp = ArraySlideSource(image)
    with pytest.raises(SlideError, match="µm/px"):
        tile_grid(no_mpp.info, mpp=1.0)


def test_read_tile_resamples_to_target_resolution() -> None:
    image = np.zeros((1024, 1024, 3), np.uint8)
    image[:, 512:] = 255
    source = ArraySlideSource(image, mpp=0.5, min_size=4096)  # one level: must resize
    grid = tile_grid(source.info, mpp=2.0, tile=64)
    tile = read_tile(source, grid, 0)
    assert tile.shape == (64, 64, 3) and tile.dtype == np.uint8
    tile_right = read_tile(source, grid, 2)  # second row of... origin order is (y, x) row-major
    assert grid.origins_l0[2].tolist() == [0, 512]
    assert (tile_right > 250).all() and (tile < 5).all()


def test_small_slide_gets_one_padded_tile() -> None:
    source = ArraySlideSource(np.full((100, 80, 3), 180, np.uint8), mpp=1.0)
    grid = tile_grid(source.info, mpp=1.0, tile=256)
    assert len(grid) == 1 and grid.origins_l0.tolist() == [[0, 0]]
    tile = read_tile(source, grid, 0)
    assert (tile[:100, :80] == 180).all() and (tile[100:] == 255).all()
