"""The mask of a large prediction is made band by band (bounded memory, issue #11) and equals the
whole-map mask exactly: smoothing, threshold, tissue and speck removal across band borders."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_milkd.core.inference.masks import mask_from_probability, mask_from_probability_bands


@pytest.mark.parametrize(("band_rows", "seed"), [(7, 0), (33, 1), (64, 2), (1000, 3)])
def test_bands_equal_the_whole_map(band_rows: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Blobs of every size, specks included, so components cross band borders.
    prob = ndimage.gaussian_filter(rng.random((211, 157)).astype(np.float32), 1.5)
    prob = (prob - prob.min()) / (prob.max() - prob.min())
    tissue = ndimage.binary_opening(rng.random((211, 157)) > 0.1)
    expected = mask_from_probability(prob, tissue, threshold=0.55)
    out = np.full(prob.shape, 9, np.uint8)

    def write(r0: int, r1: int, band: np.ndarray) -> None:
        out[r0:r1] = band

    total = mask_from_probability_bands(
        lambda r0, r1: prob[r0:r1], tissue, write, threshold=0.55, band_rows=band_rows
    )
    assert np.array_equal(out, expected) and total == int(expected.sum())
    assert 0 < total < expected.size
