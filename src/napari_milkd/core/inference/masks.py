"""The mask policy: how a probability map becomes the mask users see and the polygons they export.

One policy for every front end (widget, headless demo, ``milkd predict``): Gaussian smoothing before the
0.5 threshold (as the paper smooths), restricted to tissue, specks removed; polygons simplified, tiny regions
dropped by area in µm², coordinates rounded to 0.01 level-0 px. May import numpy, scipy, scikit-image,
shapely and ``core.annotations``.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def mask_from_probability(
    probability: np.ndarray,
    tissue: np.ndarray,
    *,
    sigma: float = 2.0,
    min_object_px: int = 16,
    threshold: float = 0.5,
) -> np.ndarray:
    """The editable mask of a probability map: Gaussian-smoothed (``sigma`` map pixels, as the paper
    smooths before its 0.5 threshold), thresholded at ``threshold`` (> it), restricted to tissue, specks
    under ``min_object_px`` pixels removed. uint8 0/1."""
    from scipy import ndimage
    from skimage.morphology import remove_small_objects

    smooth = ndimage.gaussian_filter(probability.astype(np.float32), sigma) if sigma > 0 else probability
    mask = (smooth > threshold) & tissue
    if min_object_px > 0 and mask.any():
        mask = remove_small_objects(mask, max_size=min_object_px)
    return mask.astype(np.uint8)


#: Douglas-Peucker tolerance of exported outlines, in working-map pixels.
SIMPLIFY_MAP_PX = 1.0
#: Exported regions smaller than this are dropped (µm²; about a small nucleus).
MIN_REGION_UM2 = 25.0
#: Exported vertices are rounded to this many decimals of a level-0 pixel (0.01 px).
COORD_DECIMALS = 2


def mask_polygons(mask: np.ndarray, downsample: float, mpp: float | None) -> list[Any]:
    """The polygons every export writes for ``mask`` (made at ``downsample`` from level 0): outlines
    simplified by :data:`SIMPLIFY_MAP_PX` map pixels, regions under :data:`MIN_REGION_UM2` µm² dropped
    (when ``mpp``, the level-0 µm/px, is known; else under 4 map pixels), vertices in level-0 ``(x, y)``
    pixels (corner origin) rounded to :data:`COORD_DECIMALS` decimals."""
    import shapely

    from napari_milkd.core.annotations import mask_to_polygons

    map_px_um2 = (downsample * mpp) ** 2 if mpp else None
    min_area_px = MIN_REGION_UM2 / map_px_um2 if map_px_um2 else 4.0
    polygons = mask_to_polygons(mask, downsample, simplify_px=SIMPLIFY_MAP_PX, min_area_px=min_area_px)
    rounded = shapely.transform(polygons, lambda xy: np.round(xy, COORD_DECIMALS)) if polygons else []
    return [p for p in rounded if p.is_valid and not p.is_empty]
