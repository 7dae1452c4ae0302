"""Tissue detection on a low-resolution view of a slide.

Owns "which pixels are tissue": HSV saturation after a median blur, thresholded at a **fixed floor**
(CLAM's 8/255), optionally raised to Otsu's threshold. Pure Otsu drifts to ~0 on grey or empty
backgrounds and then calls everything tissue; the floor prevents that. May import numpy, scikit-image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_milkd.core.slides.slide import SlideSource

#: CLAM's saturation floor (8 on a 0–255 scale).
SATURATION_FLOOR = 8 / 255


@dataclass(frozen=True)
class TissueMask:
    """A boolean tissue mask and where it sits: ``mask[r, c]`` covers level-0 pixels
    ``[r*downsample, (r+1)*downsample) × [c*downsample, (c+1)*downsample)``."""

    mask: np.ndarray
    downsample: float

    @property
    def fraction(self) -> float:
        """Fraction of the mask that is tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0


def tissue_mask(
    rgb: np.ndarray,
    *,
    floor: float = SATURATION_FLOOR,
    use_otsu: bool = False,
    median_size: int = 7,
    min_object_px: int = 16,
) -> np.ndarray:
    """Boolean tissue mask of an ``(H, W, 3)`` uint8 RGB image (True = tissue).

    Threshold = ``floor``, or ``max(floor, otsu)`` when ``use_otsu``. Small specks below
    ``min_object_px`` are removed and small holes filled.
    """
    from scipy import ndimage
    from skimage.color import rgb2hsv
    from skimage.filters import threshold_otsu
    from skimage.morphology import remove_small_holes, remove_small_objects

    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {rgb.shape}")
    saturation = rgb2hsv(rgb[..., :3])[..., 1]
    if median_size > 1:
        saturation = ndimage.median_filter(saturation, size=median_size)
    threshold = floor
    if use_otsu and saturation.max() > saturation.min():
        threshold = max(floor, float(threshold_otsu(saturation)))
    mask = saturation > threshold
    if min_object_px > 0 and mask.any():
        mask = remove_small_objects(mask, max_size=min_object_px)
        mask = remove_small_holes(mask, max_size=min_object_px)
    return mask


def slide_tissue(source: SlideSource, *, max_side: int = 1024, **kwargs: object) -> TissueMask:
    """Tissue mask of a whole slide, computed on the coarsest level whose longest side ≥ ``max_side``
    (or level 0 if the slide is smaller), then reduced to at most ``max_side`` pixels per side.
    Keyword arguments go to :func:`tissue_mask`."""
    levels = source.info.levels
    level = 0
    for i, lvl in enumerate(levels):
        if max(lvl.width, lvl.height) >= max_side:
            level = i
    lvl = levels[level]
    rgb = source.read(level, 0, 0, lvl.height, lvl.width)
    step = max(1, int(np.ceil(max(lvl.width, lvl.height) / max_side)))
    if step > 1:
        h, w = lvl.height // step, lvl.width // step
        rgb = rgb[: h * step, : w * step].reshape(h, step, w, step, 3).mean(axis=(1, 3)).astype(np.uint8)
    mask = tissue_mask(rgb, **kwargs)  # type: ignore[arg-type]
    return TissueMask(mask=mask, downsample=lvl.downsample * step)
