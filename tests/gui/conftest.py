"""GUI tests need a real display (xvfb-run in CI). Without one they skip, unless MILKD_REQUIRE_GUI=1
(set by .ci/run), where a missing display is a failure rather than a silent skip."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    has_display = not sys.platform.startswith("linux") or bool(os.environ.get("DISPLAY"))
    for item in items:
        if Path(item.fspath).parent != here:
            continue
        item.add_marker(pytest.mark.gui)
        if not has_display:
            if os.environ.get("MILKD_REQUIRE_GUI") == "1":
                raise pytest.UsageError("GUI tests need a display: run under xvfb-run")
            item.add_marker(pytest.mark.skip(reason="no display (run under xvfb-run)"))


def _save_screenshot(image: np.ndarray, name: str) -> None:
    folder = os.environ.get("MILKD_SCREENSHOT_DIR")
    if folder:
        import imageio.v3 as iio

        Path(folder).mkdir(parents=True, exist_ok=True)
        iio.imwrite(Path(folder) / f"{name}.png", image)


def _canvas_is_not_blank(image: np.ndarray) -> bool:
    rgb = image[..., :3].reshape(-1, 3)
    distinct = len(np.unique(rgb[:: max(1, len(rgb) // 20000)], axis=0))
    return distinct > 50 and float(rgb.std()) > 10


@pytest.fixture
def save_screenshot() -> Callable[[np.ndarray, str], None]:
    """Keep a screenshot for the docs when MILKD_SCREENSHOT_DIR is set (``scripts/screenshots.sh``)."""
    return _save_screenshot


@pytest.fixture
def not_blank() -> Callable[[np.ndarray], bool]:
    """True when a screenshot shows structure: many distinct colours and real contrast."""
    return _canvas_is_not_blank


@pytest.fixture
def fresh_project(isolated_cache: Path) -> Path:
    """The sample slide's project folder, emptied: each GUI test starts without saved work."""
    import shutil

    from napari_milkd.core.session.project import default_project_dir
    from napari_milkd.core.slides.sample import ensure_sample_slide

    folder = default_project_dir(ensure_sample_slide().path)
    shutil.rmtree(folder, ignore_errors=True)
    return folder
