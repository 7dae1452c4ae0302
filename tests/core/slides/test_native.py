"""Native TIFF tile reading: same metadata as OpenSlide, same pixels (identical on lossless and, with the
same decoder libraries, on JPEG / JPEG 2000 too; tolerance ``LOSSY_TOLERANCE``), OpenSlide kept for
everything else and as a fallback."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile

from napari_milkd.core.errors import SlideError
from napari_milkd.core.slides.native import TiffTileSource
from napari_milkd.core.slides.sample import write_pyramidal_tiff
from napari_milkd.core.slides.slide import OpenSlideSource, open_slide, rgba_to_rgb_on_white
from napari_milkd.core.slides.zarr_store import slide_levels
from slide_images import mean_levels, textured_image

#: Largest per-channel difference allowed on lossy (JPEG, JPEG 2000) slides: both readers use
#: libjpeg-turbo / OpenJPEG, and every slide measured so far is identical (0); 2 allows for a
#: different build of the same decoder.
LOSSY_TOLERANCE = 2


@pytest.fixture(autouse=True)
def _auto_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests describe the default choice: no reader forced from the environment."""
    monkeypatch.delenv("MILKD_SLIDE_READER", raising=False)


@pytest.fixture(scope="module", params=["jpeg", "zlib", "lzw"])
def generated(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A 4-level generic TIFF (downsamples 1, 2, 4, 8; sizes not multiples of the 128² tile)."""
    path = tmp_path_factory.mktemp("native") / f"pyramid-{request.param}.tiff"
    levels = mean_levels(textured_image(1000, 1240, seed=3), (2, 4, 8))
    write_pyramidal_tiff(path, levels, mpp=0.5, tile=128, compression=request.param)
    return path, request.param


def _read_region_rgb(path: Path, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
    with openslide.OpenSlide(str(path)) as s:
        ds = s.level_downsamples[level]
        rgba = np.asarray(s.read_region((round(x * ds), round(y * ds)), level, (w, h)))
    return rgba_to_rgb_on_white(rgba)


def _windows(height: int, width: int, n: int, seed: int) -> list[tuple[int, int, int, int]]:
    rng = np.random.default_rng(seed)
    wins = []
    for _ in range(n):
        h, w = int(rng.integers(1, 400)), int(rng.integers(1, 400))
        wins.append((int(rng.integers(-60, height)), int(rng.integers(-60, width)), h, w))
    wins += [
        (height - 37, width - 53, 37, 53),  # partial edge tiles
        (height - 10, width - 10, 40, 40),  # past the corner: white
        (-5, -5, 20, 20),  # before the origin: white
        (height + 5, 0, 8, 8),  # wholly outside
        (0, 0, 128, 128),  # exactly one tile: the zarr chunk fast path
    ]
    return wins


def _max_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def test_open_slide_reads_generated_tiffs_natively(generated: tuple[Path, str]) -> None:
    path, _ = generated
    with open_slide(path) as native, open_slide(path, reader="openslide") as plain:
        assert isinstance(native, TiffTileSource) and native.reader == "native"
        assert type(plain) is OpenSlideSource and plain.reader == "openslide"
        assert native.info == plain.info  # levels, downsamples, µm/px, tiles, bounds: OpenSlide's
        assert native.properties == plain.properties


def test_env_var_forces_openslide(generated: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MILKD_SLIDE_READER", "openslide")
    with open_slide(generated[0]) as source:
        assert source.reader == "openslide"
    monkeypatch.setenv("MILKD_SLIDE_READER", "bogus")
    with pytest.raises(SlideError, match="unknown slide reader"):
        open_slide(generated[0])


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_generated_pixels_match_read_region(generated: tuple[Path, str], level: int) -> None:
    path, compression = generated
    tolerance = LOSSY_TOLERANCE if compression == "jpeg" else 0
    with open_slide(path, reader="native") as source:
        lvl = source.info.levels[level]
        for y, x, h, w in _windows(lvl.height, lvl.width, 10, seed=level):
            got = source.read(level, y, x, h, w)
            assert _max_diff(got, _read_region_rgb(path, level, y, x, h, w)) <= tolerance, (y, x, h, w)


def test_generated_zarr_view_is_the_tiff_page(generated: tuple[Path, str]) -> None:
    """The native zarr view is the decoded TIFF page, chunk for chunk, at every level."""
    path, _ = generated
    with open_slide(path, reader="native") as source, tifffile.TiffFile(path) as tif:
        for level, arr in enumerate(slide_levels(source)):
            np.testing.assert_array_equal(arr[:], tif.pages[level].asarray())


def test_inexact_levels_read_the_stored_pixels(inexact_pyramid: Path) -> None:
    """Where OpenSlide's downsample is measured (3.0027), native reads return the level's stored pixel
    (y, x) exactly; OpenSlide interpolates at the sub-pixel level position round(x * ds) / ds, so the two
    differ by that resampling only."""
    with open_slide(inexact_pyramid, reader="native") as source, tifffile.TiffFile(inexact_pyramid) as tif:
        page = tif.pages[1].asarray()
        np.testing.assert_array_equal(source.read(1, 100, 50, 200, 350), page[100:300, 50:400])
        approx = _read_region_rgb(inexact_pyramid, 1, 100, 50, 200, 350)
        assert np.abs(page[100:300, 50:400].astype(int) - approx).mean() < 3


def test_failed_tile_decode_falls_back_to_openslide(
    generated: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = generated
    with open_slide(path) as source:

        def broken(*args: object) -> None:
            raise ValueError("corrupt tile")

        monkeypatch.setattr(source, "_decode_tile", broken)
        np.testing.assert_array_equal(
            source.read(0, 10, 20, 300, 200), _read_region_rgb(path, 0, 10, 20, 300, 200)
        )


def test_read_native_refuses_ineligible_and_bad_levels(exact_pyramid: Path, tmp_path: Path) -> None:
    with open_slide(exact_pyramid) as source, pytest.raises(SlideError, match="level 9 does not exist"):
        source.read(9, 0, 0, 4, 4)
    # 16-bit samples are not served natively: OpenSlide's reading (if any) stays.
    path = tmp_path / "rgb16.tiff"
    image = textured_image(300, 300).astype(np.uint16) * 257
    tifffile.imwrite(path, image, tile=(128, 128), photometric="rgb", metadata=None)
    try:
        with open_slide(path) as source:  # OpenSlide opens it: auto falls back quietly
            assert source.reader == "openslide"
    except SlideError:
        pass  # OpenSlide refuses 16-bit generic TIFFs: nothing to fall back to
    with pytest.raises(SlideError):
        open_slide(path, reader="native")


def test_real_svs_jpeg_matches_read_region(cmu_svs: Path) -> None:
    with open_slide(cmu_svs) as source:
        assert source.reader == "native"
        lvl = source.info.levels[0]
        for y, x, h, w in _windows(lvl.height, lvl.width, 20, seed=7):
            got = source.read(0, y, x, h, w)
            assert _max_diff(got, _read_region_rgb(cmu_svs, 0, y, x, h, w)) <= LOSSY_TOLERANCE


def test_real_svs_jpeg2000_matches_read_region(tcga_svs: Path) -> None:
    with open_slide(tcga_svs) as source:
        assert source.reader == "native"
        assert [(lv.width, lv.height) for lv in source.info.levels] == [(4443, 3567), (2221, 1783)]
        lvl = source.info.levels[0]
        for y, x, h, w in _windows(lvl.height, lvl.width, 8, seed=8):
            got = source.read(0, y, x, h, w)
            assert _max_diff(got, _read_region_rgb(tcga_svs, 0, y, x, h, w)) <= LOSSY_TOLERANCE
        # Level 1 (downsample 2.0005): the stored pixels, close to OpenSlide's resampled ones.
        got = source.read(1, 512, 1024, 256, 256).astype(int)
        assert np.abs(got - _read_region_rgb(tcga_svs, 1, 512, 1024, 256, 256)).mean() < 6


def test_dicom_stays_on_openslide(dicom_dcm: Path) -> None:
    with open_slide(dicom_dcm) as source:
        assert source.reader == "openslide"
    with pytest.raises(SlideError, match="TIFF-family"):
        open_slide(dicom_dcm, reader="native")


def test_reads_are_fresh_writable_arrays(generated: tuple[Path, str]) -> None:
    """Cached tiles never leak: a caller scribbling on a read (chunk or region) changes no later read."""
    path, _ = generated
    with open_slide(path, reader="native") as source:
        for args in [(0, 0, 0, 128, 128), (0, 50, 70, 200, 150)]:
            first = source.read(*args)
            expected = first.copy()
            first[:] = 0
            np.testing.assert_array_equal(source.read(*args), expected)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_parallel_reads_work_in_a_forked_child(generated: tuple[Path, str]) -> None:
    """The decode pool is per process: a worker forked after the parent used it still reads."""
    import multiprocessing

    path, _ = generated
    with open_slide(path, reader="native") as source:
        expected = source.read(0, 10, 20, 400, 400)  # several tiles: the pool starts in the parent
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        got = pool.apply_async(_read_in_child, (str(path),)).get(timeout=60)
    np.testing.assert_array_equal(got, expected)


def _read_in_child(path: str) -> np.ndarray:
    with open_slide(path, reader="native") as source:
        return source.read(0, 10, 20, 400, 400)
