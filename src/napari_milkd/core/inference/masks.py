"""The mask policy: how a probability map becomes the mask users see and the polygons they export.

One policy for every front end (widget, headless demo, ``milkd predict``): Gaussian smoothing before the
0.5 threshold (as the paper smooths), restricted to tissue, specks removed; polygons simplified, tiny regions
dropped by area in µm², coordinates rounded to 0.01 level-0 px. May import numpy, scipy, scikit-image,
shapely and ``core.annotations``.
"""

from __future__ import annotations

from collections.abc import Callable
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


#: Rows per band of :func:`mask_from_probability_bands`.
MASK_BAND_ROWS = 1024


def mask_halo(sigma: float = 2.0, min_object_px: int = 16) -> int:
    """Map pixels around a region that decide :func:`mask_from_probability` inside it: the Gaussian's
    kernel radius (``int(4 σ + 0.5)``) plus ``min_object_px`` (a speck reaching past that has more pixels
    than ``min_object_px``, so it is kept either way). A crop with this margin gives the whole map's mask."""
    return int(4 * sigma + 0.5) + min_object_px + 1


def mask_from_probability_bands(
    read: Callable[[int, int], np.ndarray],
    tissue: np.ndarray,
    write: Callable[[int, int, np.ndarray], None],
    *,
    sigma: float = 2.0,
    min_object_px: int = 16,
    threshold: float = 0.5,
    band_rows: int = MASK_BAND_ROWS,
) -> int:
    """:func:`mask_from_probability` of a map too large to hold twice in memory, band by band: ``read(r0,
    r1)`` gives probability rows ``[r0, r1)``, ``write(r0, r1, mask)`` takes mask rows. Returns the
    number of mask pixels. Equal to the whole-map result: each band is computed with a halo of rows that
    covers the Gaussian's kernel (radius ``int(4 σ + 0.5)``) and ``min_object_px`` (a speck that reaches
    past the halo has more pixels than that, so it is kept either way). Memory: a few bands."""
    rows = tissue.shape[0]
    halo = mask_halo(sigma, min_object_px)
    total = 0
    for r0 in range(0, rows, band_rows):
        r1 = min(r0 + band_rows, rows)
        h0, h1 = max(0, r0 - halo), min(rows, r1 + halo)
        band = mask_from_probability(
            read(h0, h1), tissue[h0:h1], sigma=sigma, min_object_px=min_object_px, threshold=threshold
        )[r0 - h0 : r1 - h0]
        write(r0, r1, band)
        total += int(band.sum())
    return total


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
    if not polygons:
        return []
    rounded = shapely.transform(np.asarray(polygons, dtype=object), lambda xy: np.round(xy, COORD_DECIMALS))
    # shapely's array functions release the GIL (a geometry's own properties hold it): an export in a
    # worker leaves the GUI thread free.
    keep = shapely.is_valid(rounded) & ~shapely.is_empty(rounded)
    return list(rounded[keep])
