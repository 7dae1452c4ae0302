"""The mask policy: how a probability map becomes the mask users see and the polygons they export.

One policy for every front end (widget, headless demo, ``milkd predict``): Gaussian smoothing before the
0.5 threshold (as the paper smooths), restricted to tissue, specks removed. May import numpy, scipy and
scikit-image only.
"""

from __future__ import annotations

import numpy as np


def mask_from_probability(
    probability: np.ndarray, tissue: np.ndarray, *, sigma: float = 2.0, min_object_px: int = 16
) -> np.ndarray:
    """The editable mask of a probability map: Gaussian-smoothed (``sigma`` map pixels, as the paper
    smooths before its 0.5 threshold), thresholded at 0.5, restricted to tissue, specks under
    ``min_object_px`` pixels removed. uint8 0/1."""
    from scipy import ndimage
    from skimage.morphology import remove_small_objects

    smooth = ndimage.gaussian_filter(probability.astype(np.float32), sigma) if sigma > 0 else probability
    mask = (smooth > 0.5) & tissue
    if min_object_px > 0 and mask.any():
        mask = remove_small_objects(mask, max_size=min_object_px)
    return mask.astype(np.uint8)
