"""Generated test images and pyramids, shared by the conftest fixtures and the slide tests.

(``tests/`` is on ``sys.path`` because its ``conftest.py`` is: import as ``from slide_images import ...``.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_milkd.core.slides.sample import write_pyramidal_tiff


def textured_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth, structured RGB test image (JPEG-friendly, every position distinguishable)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [
            128 + 100 * np.sin(xx / 37.0 + rng.uniform(0, 6)),
            128 + 100 * np.cos(yy / 23.0 + rng.uniform(0, 6)),
            128 + 100 * np.sin((xx + yy) / 51.0),
        ],
        axis=-1,
    )
    return np.clip(base, 0, 255).astype(np.uint8)


def mean_levels(level0: np.ndarray, factors: tuple[int, ...]) -> list[np.ndarray]:
    """``level0`` and its 2-D block means at each of ``factors`` (uint8 RGB)."""
    h, w = level0.shape[:2]
    out = [level0]
    for f in factors:
        hh, ww = h // f, w // f
        out.append(level0[: hh * f, : ww * f].reshape(hh, f, ww, f, 3).mean(axis=(1, 3)).astype(np.uint8))
    return out


def tissue_square_slide(path: Path) -> Path:
    """A 384×512 single-level tiled TIFF at 0.5 µm/px: a pink square of "tissue" on white glass."""
    image = np.full((384, 512, 3), 245, np.uint8)
    image[64:320, 96:416] = (220, 120, 180)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_pyramidal_tiff(path, [image], mpp=0.5, tile=128)
    return path
