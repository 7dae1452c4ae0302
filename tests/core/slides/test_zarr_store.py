"""The lazy zarr view equals OpenSlide's read_region, chunk = tile, read-only, no copy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pytest
import zarr

from napari_milkd.core.slides.slide import open_slide, rgba_to_rgb_on_white
from napari_milkd.core.slides.zarr_store import SlideStore, slide_group, slide_levels


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
