"""The lazy zarr view equals OpenSlide's read_region, chunk = tile, read-only, no copy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pytest
import zarr

from napari_milkd.core.slides.slide import open_slide, rgba_to_rgb_on_white
from napari_milkd.core.slides.zarr_store import SlideStore, chunk_rectangles, slide_group, slide_levels


def _read_region_rgb(path: Path, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
    """Ground truth straight from openslide-python, independent of our SlideSource."""
    with openslide.OpenSlide(str(path)) as s:
        ds = s.level_downsamples[level]
        rgba = np.asarray(s.read_region((round(x * ds), round(y * ds)), level, (w, h)))
    return rgba_to_rgb_on_white(rgba)


def _random_windows(
    rng: np.random.Generator, height: int, width: int, n: int
) -> list[tuple[int, int, int, int]]:
    wins = []
    for _ in range(n):
        h, w = int(rng.integers(1, min(300, height) + 1)), int(rng.integers(1, min(300, width) + 1))
        wins.append((int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w))
    # The right/bottom edge, where chunks are partial.
    wins.append((height - 37, width - 53, 37, 53))
    wins.append((max(0, height - 300), max(0, width - 300), min(300, height), min(300, width)))
    return wins


def _check_windows(path: Path, level: int, n: int = 12, seed: int = 0) -> None:
    with open_slide(path) as source:
        arr = slide_levels(source)[level]
        rng = np.random.default_rng(seed + level)
        for y, x, h, w in _random_windows(rng, arr.shape[0], arr.shape[1], n):
            np.testing.assert_array_equal(
                arr[y : y + h, x : x + w], _read_region_rgb(path, level, y, x, h, w)
            )


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_generated_pyramid_windows_match_read_region(exact_pyramid: Path, level: int) -> None:
    _check_windows(exact_pyramid, level)


def test_real_svs_windows_match_read_region(cmu_svs: Path) -> None:
    _check_windows(cmu_svs, 0, n=20)


def test_jpeg2000_svs_level0_windows(tcga_svs: Path) -> None:
    _check_windows(tcga_svs, 0, n=6)


def test_dicom_windows(dicom_dcm: Path) -> None:
    _check_windows(dicom_dcm, 0, n=6)


def test_inexact_downsample_chunks_match_read_region(inexact_pyramid: Path) -> None:
    """Where OpenSlide's downsample is measured (3.0027), every chunk of the OpenSlide-backed view equals
    read_region at its origin; across chunks only OpenSlide's own sub-pixel resampling differs. (The
    native view serves the stored level pixels instead, see ``test_native``.)"""
    with open_slide(inexact_pyramid, reader="openslide") as source:
        arr = slide_levels(source)[1]
        th, tw = arr.chunks[:2]
        for i in range(-(-arr.shape[0] // th)):
            for j in range(-(-arr.shape[1] // tw)):
                y, x = i * th, j * tw
                h, w = min(th, arr.shape[0] - y), min(tw, arr.shape[1] - x)
                expected = _read_region_rgb(inexact_pyramid, 1, y, x, h, w)
                np.testing.assert_array_equal(arr[y : y + h, x : x + w], expected)
        window = arr[100:300, 50:400].astype(int)
        approx = _read_region_rgb(inexact_pyramid, 1, 100, 50, 200, 350).astype(int)
        assert np.abs(window - approx).mean() < 3


def test_chunks_are_tiles_and_metadata(tcga_svs: Path) -> None:
    with open_slide(tcga_svs) as source:
        levels = slide_levels(source)
        assert [a.shape for a in levels] == [(3567, 4443, 3), (1783, 2221, 3)]
        assert all(a.chunks == (256, 256, 3) for a in levels)
        assert all(a.dtype == np.uint8 for a in levels)
        group = slide_group(source)
        facts = group.attrs["milkd"]["slide"]
        assert facts["vendor"] == "aperio" and facts["mpp_x"] is None
        assert sorted(group.array_keys()) == ["0", "1"]


def test_store_is_read_only_and_lazy(exact_pyramid: Path) -> None:
    with open_slide(exact_pyramid) as source:
        calls: list[tuple[int, ...]] = []
        original = source.read

        def counting_read(level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
            calls.append((level, y, x, h, w))
            return original(level, y, x, h, w)

        source.read = counting_read  # type: ignore[method-assign]
        arr = zarr.open_array(store=SlideStore(source), path="0", mode="r")
        assert calls == []  # opening reads no pixels
        arr[0:10, 0:10]
        assert calls == [(0, 0, 0, 128, 128)]  # exactly one tile
        with pytest.raises((PermissionError, ValueError, OSError)):
            arr[0:2, 0:2] = 0


def test_a_window_is_read_as_one_rectangle_and_equals_per_chunk_reads(exact_pyramid: Path) -> None:
    """The chunks of one window are one region read (not one per chunk) and give the same pixels."""
    with open_slide(exact_pyramid) as source:
        calls: list[tuple[int, ...]] = []
        original = source.read

        def counting_read(level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
            calls.append((level, y, x, h, w))
            return original(level, y, x, h, w)

        source.read = counting_read  # type: ignore[method-assign]
        arr = zarr.open_array(store=SlideStore(source), path="0", mode="r")
        window = arr[100:400, 200:500]  # chunks rows 0..3, cols 1..3 of 128 px
        assert calls == [(0, 0, 128, 512, 384)]
        assert np.array_equal(window, original(0, 100, 200, 300, 300))
        calls.clear()
        level1 = zarr.open_array(store=SlideStore(source), path="1", mode="r")[10:300, 0:260]
        assert len(calls) == 1 and np.array_equal(level1, original(1, 10, 0, 290, 260))


def test_inexact_levels_keep_one_read_per_chunk(inexact_pyramid: Path) -> None:
    with open_slide(inexact_pyramid) as source:
        calls: list[tuple[int, ...]] = []
        original = source.read
        source.read = lambda *a: calls.append(a) or original(*a)  # type: ignore[method-assign]
        zarr.open_array(store=SlideStore(source), path="1", mode="r")[0:200, 0:200]
        assert len(calls) == 4 and all(c[3:] == (128, 128) for c in calls)


@pytest.mark.parametrize("seed", range(30))
def test_chunk_rectangles_cover_each_cell_once(seed: int) -> None:
    rng = np.random.default_rng(seed)
    if seed % 3 == 0:  # a full block, as a window gives
        i0, j0, h, w = (int(v) for v in rng.integers(0, 6, 4) + np.array([0, 0, 1, 1]))
        cells = {(i, j) for i in range(i0, i0 + h) for j in range(j0, j0 + w)}
    else:
        cells = {(int(i), int(j)) for i, j in rng.integers(0, 8, (int(rng.integers(1, 40)), 2))}
    limit = int(rng.integers(1, 20))
    rectangles = chunk_rectangles(cells, chunk_pixels=100, max_pixels=100 * limit)
    covered = [(i, j) for i0, j0, h, w in rectangles for i in range(i0, i0 + h) for j in range(j0, j0 + w)]
    assert sorted(covered) == sorted(cells)  # every cell once, nothing else
    assert all(h * w <= limit for _, _, h, w in rectangles)
    if seed % 3 == 0 and len(cells) <= limit:
        assert len(rectangles) == 1
