"""Slide access: real slides, generated pyramids, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_milkd.core.errors import SlideError
from napari_milkd.core.slides.slide import (
    ArraySlideSource,
    SlideSource,
    level_for_mpp,
    open_slide,
    resolve_slide_path,
    rgba_to_rgb_on_white,
)


def test_cmu_svs_facts(cmu_svs: Path) -> None:
    with open_slide(cmu_svs) as s:
        info = s.info
        assert info.vendor == "aperio"
        assert [(lv.width, lv.height) for lv in info.levels] == [(2220, 2967)]
        assert info.mpp_x == pytest.approx(0.499) and info.mpp_y == pytest.approx(0.499)
        assert info.mpp_source == "openslide"
        assert info.objective_power == 20
        assert s.tile_size(0) == (240, 240)
        assert isinstance(s, SlideSource)


def test_tcga_svs_has_no_mpp(tcga_svs: Path) -> None:
    with open_slide(tcga_svs) as s:
        info = s.info
        assert len(info.levels) == 2
        assert info.mpp_x is None and info.mpp_y is None and not info.has_mpp
        assert info.levels[1].downsample == pytest.approx(2.0005, abs=1e-3)
        with pytest.raises(SlideError, match="µm/px"):
            level_for_mpp(info, 1.0)
    with open_slide(tcga_svs, mpp=0.25) as s:
        assert s.info.mpp == 0.25 and s.info.mpp_source == "user"
        assert level_for_mpp(s.info, 0.5) == 1


def test_dicom_file_and_folder(dicom_dcm: Path) -> None:
    with open_slide(dicom_dcm) as s:
        assert s.info.vendor == "dicom"
        assert s.info.dimensions == (2220, 2967)
        assert s.info.mpp == pytest.approx(0.499)
    assert resolve_slide_path(dicom_dcm.parent) == dicom_dcm


def test_dicom_pixels_match_svs(dicom_dcm: Path, cmu_svs: Path) -> None:
    with open_slide(dicom_dcm) as d, open_slide(cmu_svs) as s:
        a = d.read(0, 1000, 800, 64, 64).astype(int)
        b = s.read(0, 1000, 800, 64, 64).astype(int)
    # Same scan, re-encoded: close but not bit-identical.
    assert np.abs(a - b).mean() < 12


def test_generated_pyramid_resolution_from_tiff_tags(exact_pyramid: Path) -> None:
    with open_slide(exact_pyramid) as s:
        info = s.info
        assert info.vendor == "generic-tiff"
        assert [lv.downsample for lv in info.levels] == pytest.approx([1, 3, 6, 15])
        assert info.mpp == pytest.approx(0.25)
        assert info.level_mpp(2) == pytest.approx(1.5)
        assert level_for_mpp(info, 1.0) == 1
        assert level_for_mpp(info, 1.5) == 2
        assert level_for_mpp(info, 100) == 3
        assert level_for_mpp(info, 0.1) == 0


def test_outside_slide_is_white(exact_pyramid: Path) -> None:
    with open_slide(exact_pyramid) as s:
        h, w = s.info.shape
        region = s.read(0, h - 10, w - 10, 20, 20)
    assert region.shape == (20, 20, 3)
    assert (region[10:, :] == 255).all() and (region[:, 10:] == 255).all()
    assert not (region[:10, :10] == 255).all()


def test_missing_level_is_an_error(exact_pyramid: Path) -> None:
    with open_slide(exact_pyramid) as s, pytest.raises(SlideError, match="level 9 does not exist"):
        s.read(9, 0, 0, 4, 4)


@pytest.mark.parametrize("name", ["notes.svs", "notes.ndpi"])
def test_text_file_named_like_a_slide(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("this is not a slide\n")
    with pytest.raises(SlideError, match="not a slide OpenSlide can read"):
        open_slide(path)


def test_truncated_slide(tmp_path: Path, exact_pyramid: Path) -> None:
    data = exact_pyramid.read_bytes()
    for keep in (100_000, len(data) // 2, len(data) - 5000):
        path = tmp_path / f"cut{keep}.tiff"
        path.write_bytes(data[:keep])
        with pytest.raises(SlideError):
            s = open_slide(path)
            # Reading everything must fail somewhere if opening did not.
            for level, lv in enumerate(s.info.levels):
                s.read(level, 0, 0, lv.height, lv.width)


def test_truncated_real_slide(tmp_path: Path, cmu_svs: Path) -> None:
    path = tmp_path / "cut.svs"
    path.write_bytes(cmu_svs.read_bytes()[:100_000])
    with pytest.raises(SlideError, match=r"cut\.svs"):
        open_slide(path)


def test_missing_path_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(SlideError, match="no such file"):
        open_slide(tmp_path / "nope.svs")
    with pytest.raises(SlideError, match=r"without \.dcm"):
        open_slide(tmp_path)


def test_array_source_pyramid_and_padding() -> None:
    image = np.zeros((1100, 2100, 3), np.uint8)
    image[:, :1000] = 200
    s = ArraySlideSource(image, mpp=0.5)
    assert [(lv.width, lv.height) for lv in s.info.levels] == [(2100, 1100), (1050, 550), (525, 275)]
    assert s.info.level_mpp(1) == pytest.approx(1.0, rel=1e-3)
    out = s.read(1, -2, 498, 4, 4)
    assert (out[:2] == 255).all()  # above the image
    assert (out[2:, :2] == 200).all() and (out[2:, 2:] == 0).all()


def test_rgba_compositing() -> None:
    rgba = np.array([[[10, 20, 30, 255], [10, 20, 30, 0], [0, 0, 0, 128]]], np.uint8)
    rgb = rgba_to_rgb_on_white(rgba)
    assert rgb[0, 0].tolist() == [10, 20, 30]
    assert rgb[0, 1].tolist() == [255, 255, 255]
    assert rgb[0, 2].tolist() == [127, 127, 127]
