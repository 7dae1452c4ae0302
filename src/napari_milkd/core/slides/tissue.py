"""Tissue detection on a low-resolution view of a slide.

Owns "which pixels are tissue": HSV saturation after a median blur, thresholded at a **fixed floor**
(CLAM's 8/255), optionally raised to Otsu's threshold. Pure Otsu drifts to ~0 on grey or empty
backgrounds and then calls everything tissue; the floor prevents that. The picture comes from a bounded
thumbnail read tile by tile (:func:`slide_thumbnail`), so a slide without a small pyramid level (one
level of 200 000² px) costs no more memory than a pyramidal one. May import numpy, scikit-image.
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


#: Largest region, in pixels, one read may ask of the slide (1024², 4 MB of RGBA).
MAX_READ_PX = 1024 * 1024
#: Above this many level pixels per thumbnail pixel (per side), each thumbnail pixel is the mean of a
#: centred ``PROBE``² patch of its block instead of the whole block: reads stay a fraction of the slide.
EXACT_STEP = 32
PROBE = 8


def slide_thumbnail(source: SlideSource, *, max_side: int = 1024) -> tuple[np.ndarray, float]:
    """An RGB thumbnail of at most ``max_side`` pixels per side and its downsample from level 0, read
    tile by tile so that memory stays flat in the slide's area, whatever its pyramid.

    The source level is the coarsest whose longest side is ≥ ``max_side`` (level 0 when the slide is
    smaller); each thumbnail pixel is the mean of its ``step × step`` block of that level (truncated to
    uint8), or of a centred ``PROBE × PROBE`` patch of it when ``step > EXACT_STEP`` (a single-level
    slide of 200 000² px). No read is larger than :data:`MAX_READ_PX` pixels.
    """
    levels = source.info.levels
    level = 0
    for i, lvl in enumerate(levels):
        if max(lvl.width, lvl.height) >= max_side:
            level = i
    lvl = levels[level]
    step = max(1, int(np.ceil(max(lvl.width, lvl.height) / max_side)))
    # A side shorter than one block (a sliver of a slide) still gets one row or column; its block reads
    # past the edge, where slides are white.
    h, w = max(1, lvl.height // step), max(1, lvl.width // step)
    out = np.empty((h, w, 3), np.uint8)
    if step <= EXACT_STEP:
        # Whole blocks: chunks of whole blocks, so the result equals reducing the full level at once.
        per_side = max(1, int(np.sqrt(MAX_READ_PX)) // step)
        for r0 in range(0, h, per_side):
            r1 = min(h, r0 + per_side)
            for c0 in range(0, w, per_side):
                c1 = min(w, c0 + per_side)
                rgb = source.read(level, r0 * step, c0 * step, (r1 - r0) * step, (c1 - c0) * step)
                out[r0:r1, c0:c1] = _block_mean(rgb[..., :3], step)
        return out, lvl.downsample * step
    # Probes: for each row of blocks, one strip PROBE rows high through the blocks' centres, read in
    # pieces of whole blocks; each block keeps the mean of its centred PROBE × PROBE patch.
    offset = (step - PROBE) // 2
    per_read = max(1, MAX_READ_PX // (PROBE * step))
    for r in range(h):
        for c0 in range(0, w, per_read):
            c1 = min(w, c0 + per_read)
            strip = source.read(level, r * step + offset, c0 * step, PROBE, (c1 - c0) * step)[..., :3]
            blocks = strip.reshape(PROBE, c1 - c0, step, 3)[:, :, offset : offset + PROBE]
            out[r, c0:c1] = blocks.mean(axis=(0, 2)).astype(np.uint8)
    return out, lvl.downsample * step


def _block_mean(rgb: np.ndarray, step: int) -> np.ndarray:
    if step == 1:
        return rgb
    h, w = rgb.shape[0] // step, rgb.shape[1] // step
    return rgb[: h * step, : w * step].reshape(h, step, w, step, 3).mean(axis=(1, 3)).astype(np.uint8)


def slide_tissue(source: SlideSource, *, max_side: int = 1024, **kwargs: object) -> TissueMask:
    """Tissue mask of a whole slide, computed on a bounded thumbnail (:func:`slide_thumbnail`: at most
    ``max_side`` pixels per side, read tile by tile, memory flat in slide area). Keyword arguments go to
    :func:`tissue_mask`."""
    rgb, downsample = slide_thumbnail(source, max_side=max_side)
    mask = tissue_mask(rgb, **kwargs)  # type: ignore[arg-type]
    return TissueMask(mask=mask, downsample=downsample)
