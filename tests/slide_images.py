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


#: The two-tone slide's level-0 size and the column where "tumour" turns into normal tissue.
TWO_TONE_SHAPE, TWO_TONE_SPLIT = (512, 768), 384


def two_tone_slide(path: Path, seed: int = 0, mpp: float | None = 0.5) -> Path:
    """A slide with a purple ("tumour") left half and a pink right half of tissue on white glass
    (:data:`TWO_TONE_SHAPE`, split at column :data:`TWO_TONE_SPLIT`), two levels; ``mpp=None`` writes
    a single-level TIFF without resolution tags."""
    (h, w), split = TWO_TONE_SHAPE, TWO_TONE_SPLIT
    rng = np.random.default_rng(seed)
    image = np.full((h, w, 3), 245, np.uint8)
    image[32 : h - 32, 32:split] = (120, 60, 160)
    image[32 : h - 32, split : w - 32] = (230, 140, 190)
    tissue = image[32 : h - 32, 32 : w - 32].astype(float) + rng.normal(0, 6, (h - 64, w - 64, 3))
    image[32 : h - 32, 32 : w - 32] = np.clip(tissue, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    if mpp is None:
        import tifffile

        tifffile.imwrite(path, image, tile=(128, 128), photometric="rgb", compression="jpeg")
        return path
    write_pyramidal_tiff(path, [image, image[::4, ::4].copy()], mpp=mpp, tile=128)
    return path
