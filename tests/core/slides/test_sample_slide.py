"""The built-in sample slide: a real OpenSlide pyramid with a known tumour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_milkd.core.slides.sample import SAMPLE_MPP, SAMPLE_SHAPE, ensure_sample_slide, truth_mask
from napari_milkd.core.slides.slide import open_slide
from napari_milkd.core.slides.tissue import slide_tissue


@pytest.fixture(scope="module")
def sample_path() -> Path:
    return ensure_sample_slide().path


def test_sample_is_a_generic_tiff_pyramid_with_mpp(sample_path: Path, isolated_cache: Path) -> None:
    assert sample_path.parent == isolated_cache
    with open_slide(sample_path) as s:
        info = s.info
    assert info.vendor == "generic-tiff"
    assert len(info.levels) >= 3
    assert (info.levels[0].height, info.levels[0].width) == SAMPLE_SHAPE
    assert info.mpp == pytest.approx(SAMPLE_MPP)
    assert info.mpp_source == "openslide"


def test_sample_is_cached_not_regenerated(sample_path: Path) -> None:
    before = sample_path.stat().st_mtime_ns
    assert ensure_sample_slide().path == sample_path
    assert sample_path.stat().st_mtime_ns == before
    assert not list(sample_path.parent.glob("*.part"))


def test_tumour_is_inside_tissue_and_looks_different(sample_path: Path) -> None:
    with open_slide(sample_path) as s:
        tissue = slide_tissue(s)
        level1 = s.read(1, 0, 0, s.info.levels[1].height, s.info.levels[1].width)
    truth4 = truth_mask(4)
    assert truth4.shape == level1.shape[:2]
    assert 0.05 < truth4.mean() < 0.3
    # Tumour lies in tissue: check at the tissue mask's resolution.
    ds = tissue.downsample
    rows = (np.nonzero(truth4)[0] * 4 / ds).astype(int).clip(0, tissue.mask.shape[0] - 1)
    cols = (np.nonzero(truth4)[1] * 4 / ds).astype(int).clip(0, tissue.mask.shape[1] - 1)
    assert tissue.mask[rows, cols].mean() > 0.98
    # Haematoxylin-rich tumour is darker and bluer than normal tissue.
    normal = np.zeros_like(truth4)
    normal[::4, ::4] = True
    tissue4 = level1.min(axis=2) < 200
    normal &= tissue4 & ~truth4
    tumour_rgb = level1[truth4].mean(axis=0)
    normal_rgb = level1[normal].mean(axis=0)
    assert tumour_rgb.sum() < normal_rgb.sum() - 60
    assert tumour_rgb[0] < normal_rgb[0] - 30  # less red
