"""Tissue detection reads a bounded thumbnail tile by tile (issue 18 case 11): a slide with no small
pyramid level must not be read whole."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from napari_milkd.core.slides.native import TILE_CACHE_BYTES
from napari_milkd.core.slides.sample import write_pyramidal_tiff
from napari_milkd.core.slides.slide import ArraySlideSource, SlideSource, open_slide
from napari_milkd.core.slides.tissue import MAX_READ_PX, slide_thumbnail, slide_tissue, tissue_mask
from napari_milkd.core.slides.types import SlideInfo


class CountingSource:
    """A slide source that records the area of every read of the source it wraps."""

    def __init__(self, source: SlideSource) -> None:
        self.source = source
        self.reads: list[int] = []

    @property
    def info(self) -> SlideInfo:
        return self.source.info

    def tile_size(self, level: int) -> tuple[int, int]:
        return self.source.tile_size(level)

    def read(self, level: int, y: int, x: int, height: int, width: int) -> np.ndarray:
        self.reads.append(height * width)
        return self.source.read(level, y, x, height, width)

    def close(self) -> None:
        self.source.close()


def _tissue_image(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """White glass with two pink ellipses of tissue (JPEG-friendly), and the ellipses' mask."""
    yy, xx = np.ogrid[0:height, 0:width]
    inside = ((yy - height * 0.5) / (height * 0.35)) ** 2 + ((xx - width * 0.3) / (width * 0.2)) ** 2 < 1
    inside |= ((yy - height * 0.4) / (height * 0.25)) ** 2 + ((xx - width * 0.75) / (width * 0.15)) ** 2 < 1
    image = np.full((height, width, 3), 242, np.uint8)
    image[inside] = (215, 120, 175)
    return image, inside


def _whole_level_reference(image: np.ndarray, max_side: int = 1024) -> np.ndarray:
    """What the old code computed: the whole level in memory, block means, then the mask."""
    step = int(np.ceil(max(image.shape[:2]) / max_side))
    h, w = image.shape[0] // step, image.shape[1] // step
    small = image[: h * step, : w * step].reshape(h, step, w, step, 3).mean(axis=(1, 3)).astype(np.uint8)
    return tissue_mask(small)


@pytest.fixture(scope="module")
def single_level_tiff(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A 3000×9000 single-level tiled JPEG TIFF (27 Mpx, no smaller level) and the tissue it shows."""
    image, _ = _tissue_image(3000, 9000)
    path = tmp_path_factory.mktemp("flat") / "flat.tiff"
    write_pyramidal_tiff(path, [image], mpp=0.5, tile=256)
    return path, _whole_level_reference(image)


def test_a_single_level_slide_is_read_in_bounded_tiles(single_level_tiff: tuple[Path, np.ndarray]) -> None:
    """Regression: tissue detection read all 27 Mpx of level 0 in one read (a 200 000² slide: 160 GB)."""
    path, reference = single_level_tiff
    opened = open_slide(path)
    # Native TIFF reading keeps a fixed-size decoded-tile cache (independent of the slide's size).
    cache = TILE_CACHE_BYTES if opened.reader == "native" else 0
    source = CountingSource(opened)
    try:
        assert len(source.info.levels) == 1
        tracemalloc.start()
        tissue = slide_tissue(source)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        source.close()
    assert max(source.reads) <= MAX_READ_PX
    assert sum(source.reads) >= 3000 * 9000 * 0.99  # every block is seen (exact block means)
    # The whole level as RGBA alone is 108 MB (the old code peaked at 309 MB); tiles stay small.
    assert peak < 48 * 2**20 + cache, f"peak traced memory {peak / 2**20:.0f} MB"
    assert tissue.downsample == pytest.approx(9.0) and tissue.mask.shape == reference.shape
    assert (tissue.mask == reference).mean() > 0.999  # the same answer as reading the level whole


def test_tiled_thumbnail_equals_the_whole_level_thumbnail() -> None:
    rng = np.random.default_rng(3)
    for shape in [(3000, 5000), (700, 900), (2500, 2100), (1025, 1030)]:
        image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        source = CountingSource(ArraySlideSource(image, mpp=0.5, min_size=10**9))
        thumb, downsample = slide_thumbnail(source)
        step = int(np.ceil(max(shape) / 1024))
        h, w = shape[0] // step, shape[1] // step
        whole = image[: h * step, : w * step].reshape(h, step, w, step, 3).mean(axis=(1, 3)).astype(np.uint8)
        assert downsample == step and np.array_equal(thumb, whole)
        assert max(source.reads) <= MAX_READ_PX


def test_a_very_large_level_is_probed_with_memory_flat_in_its_area() -> None:
    """Past 32 level pixels per thumbnail pixel each block is probed at its centre: reads stay bounded
    and a fraction of the slide, and the mask still finds the tissue."""
    image, inside = _tissue_image(1200, 48000)
    source = CountingSource(ArraySlideSource(image, mpp=0.5, min_size=10**9))
    tissue = slide_tissue(source)
    assert tissue.downsample == pytest.approx(47.0) and tissue.mask.shape == (25, 1021)
    assert max(source.reads) <= MAX_READ_PX
    assert sum(source.reads) < image.shape[0] * image.shape[1] / 4
    truth = inside[23::47, 23::47][: tissue.mask.shape[0], : tissue.mask.shape[1]]
    assert (tissue.mask == truth).mean() > 0.97
