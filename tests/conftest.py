"""Shared fixtures: real data from ../shared (skipped when absent), generated pyramids, an isolated cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

from napari_milkd.core.slides.sample import write_pyramidal_tiff
from slide_images import mean_levels, textured_image

# CI (scripts/test.sh) runs the property tests derandomized, so a run is repeatable; locally they explore.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MILKD_SHARED_DATA") or (REPO / ".." / "shared" / "data")).resolve()


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated data (the sample slide) and projects go to a per-session folder, never the user's
    cache or data folder."""
    folder = Path(os.environ.get("MILKD_TEST_CACHE_DIR") or tmp_path_factory.mktemp("milkd-cache"))
    os.environ["MILKD_CACHE_DIR"] = str(folder)
    os.environ["MILKD_PROJECTS"] = str(folder / "user-data" / "projects")
    os.environ["MILKD_CONFIG_DIR"] = str(folder / "user-config")
    return folder


REAL_DATA_FIXTURES = frozenset({"cmu_svs", "tcga_svs", "dicom_dcm"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests that need ../shared/data at collection time when it is absent, before any fixture
    (napari's ``make_napari_viewer`` breaks on a skip raised after it was set up)."""
    if SHARED_DATA.exists():
        return
    skip = pytest.mark.skip(reason=f"real data not available: {SHARED_DATA}")
    for item in items:
        if REAL_DATA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(skip)


def shared_path(*parts: str) -> Path:
    """A path under ``../shared/data``, or skip the test when this workplace's data is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path}")
    return path


@pytest.fixture
def cmu_svs() -> Path:
    """Aperio SVS, 1 level 2220×2967, 0.499 µm/px."""
    return shared_path("wsi", "CMU-1-Small-Region.svs")


@pytest.fixture
def tcga_svs() -> Path:
    """Aperio SVS, 2 levels, JPEG2000, no µm/px."""
    return shared_path("wsi", "tcga-cr-7395-01a-01-ts1.svs")


@pytest.fixture
def dicom_dcm() -> Path:
    """The largest .dcm of the DICOM-WSI copy of CMU-1-Small-Region."""
    folder = shared_path("wsi", "CMU-1-Small-Region.dicom")
    return max(folder.glob("*.dcm"), key=lambda p: p.stat().st_size)


@pytest.fixture(scope="session")
def exact_pyramid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generic TIFF, 4 levels, exact non-power-of-two downsamples 1, 3, 6, 15; 0.25 µm/px; tile 128."""
    path = tmp_path_factory.mktemp("slides") / "exact.tiff"
    write_pyramidal_tiff(path, mean_levels(textured_image(1200, 1530), (3, 6, 15)), mpp=0.25, tile=128)
    return path


@pytest.fixture(scope="session")
def inexact_pyramid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generic TIFF, 3 levels whose measured downsamples are not integers (1, ~3.003, ~7.03); 0.5 µm/px."""
    level0 = textured_image(1000, 1300, seed=1)
    levels = [level0, level0[::3, ::3][:333, :433].copy(), level0[::7, ::7][:142, :185].copy()]
    path = tmp_path_factory.mktemp("slides") / "inexact.tiff"
    write_pyramidal_tiff(path, levels, mpp=0.5, tile=128)
    return path
