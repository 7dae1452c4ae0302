"""The napari reader contribution (no viewer needed: layer-data tuples are plain data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_milkd._reader import napari_get_reader, read_slide
from napari_milkd.core.errors import SlideError


def test_reader_returns_none_for_foreign_files(tmp_path: Path) -> None:
    png = tmp_path / "a.png"
    png.write_bytes(b"\x89PNG\r\n")
    plain_tif = tmp_path / "plain.tif"
    tifffile.imwrite(plain_tif, np.zeros((64, 64), np.uint8))  # strips, not tiles: not a slide
    assert napari_get_reader(str(png)) is None
    assert napari_get_reader(str(plain_tif)) is None
    assert napari_get_reader(str(tmp_path)) is None  # folder without .dcm
    assert napari_get_reader([str(png), str(plain_tif)]) is None


def test_reader_on_real_svs(cmu_svs: Path) -> None:
    reader = napari_get_reader(str(cmu_svs))
    assert reader is not None
    [(data, kwargs, layer_type)] = reader(str(cmu_svs))
    assert layer_type == "image"
    assert kwargs["multiscale"] is True and kwargs["rgb"] is True
    assert kwargs["scale"] == pytest.approx((0.499, 0.499))
    assert kwargs["units"] == ("micrometer", "micrometer")
    assert data[0].shape == (2967, 2220, 3)
    facts = kwargs["metadata"]["milkd_slide"]
    assert facts["vendor"] == "aperio" and facts["mpp_known"] is True


def test_reader_without_mpp_uses_pixels(tcga_svs: Path) -> None:
    [(data, kwargs, _)] = read_slide(str(tcga_svs))
    assert len(data) == 2
    assert kwargs["scale"] == (1.0, 1.0)
    assert "units" not in kwargs
    assert kwargs["metadata"]["milkd_slide"]["mpp_known"] is False
    assert kwargs["metadata"]["milkd_slide"]["mpp_x"] is None


def test_reader_on_dicom_folder_and_generated_pyramid(dicom_dcm: Path, exact_pyramid: Path) -> None:
    reader = napari_get_reader(str(dicom_dcm.parent))
    assert reader is not None
    [(data, kwargs, _)] = reader(str(dicom_dcm.parent))
    assert kwargs["metadata"]["milkd_slide"]["vendor"] == "dicom"
    [(data, kwargs, _)] = napari_get_reader(str(exact_pyramid))(str(exact_pyramid))
    assert [a.shape[:2] for a in data] == [(1200, 1530), (400, 510), (200, 255), (80, 102)]
    assert kwargs["scale"] == pytest.approx((0.25, 0.25))


def test_damaged_vendor_file_gets_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "broken.svs"
    bad.write_text("not a slide")
    reader = napari_get_reader(str(bad))
    assert reader is not None  # ours, so the user hears why it failed
    with pytest.raises(SlideError, match=r"broken\.svs"):
        reader(str(bad))
