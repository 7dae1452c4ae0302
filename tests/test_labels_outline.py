"""Mask layers outline with numpy, not scipy (issue 16: napari recomputes the outline of the whole map on
the GUI thread each time a layer is shown or gets new data): the outline is napari's own, pixel for pixel,
for every thickness, background and slice napari asks for; and the overlays a layer is added without come
back as they were."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Labels
from napari.layers.labels._labels_utils import get_contours

from napari_milkd._widget.labels_outline import defer_overlays, outline, outline_quickly, show_overlays


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32])
def test_outline_is_napari_s_get_contours(dtype: type) -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        rows, cols = (int(n) for n in rng.integers(1, 25, 2))
        labels = rng.integers(0, int(rng.integers(1, 6)), (rows, cols)).astype(dtype)
        thickness, background = int(rng.integers(1, 5)), int(rng.integers(0, 3))
        expected = get_contours(labels, thickness, background)
        assert np.array_equal(outline(labels, thickness, background), expected), (rows, cols, thickness)


def test_outline_of_a_smooth_mask_keeps_only_its_edge() -> None:
    mask = np.zeros((40, 50), np.uint8)
    mask[10:30, 12:40] = 1
    edge = outline(mask, 1, 0)
    assert edge[10, 20] == 1 and edge[29, 39] == 1  # the mask's own border pixels
    assert edge[11, 20] == 0 and edge[20, 25] == 0 and edge[0, 0] == 0  # inside and outside: background
    assert outline(mask, 2, 0)[11, 20] == 1  # a thicker outline reaches one pixel further in
    assert edge.dtype == mask.dtype


@pytest.mark.parametrize("contour", [0, 1, 2, 3])
def test_a_quick_layer_displays_what_napari_would(contour: int) -> None:
    rng = np.random.default_rng(1)
    data = (rng.random((60, 80)) > 0.6).astype(np.uint8) * rng.integers(1, 4, (60, 80)).astype(np.uint8)
    plain, quick = Labels(data), Labels(data)
    outline_quickly(quick)
    plain.contour = quick.contour = contour
    # The whole map (a slice), and the boxes napari refreshes after a brush stroke, edges included.
    for box in [(slice(0, 60), slice(0, 80)), (slice(10, 20), slice(5, 30)), (slice(0, 3), slice(77, 80))]:
        assert np.array_equal(quick._raw_to_displayed(data, box), plain._raw_to_displayed(data, box)), box
    assert np.array_equal(quick._raw_to_displayed(data), plain._raw_to_displayed(data))


def test_deferred_overlays_come_back_as_they_were() -> None:
    layer = Labels(np.zeros((8, 8), np.uint8))
    shown = {name for name, overlay in layer._overlays.items() if overlay.visible}
    assert shown, "napari's Labels has shown overlays (brush, polygon) to defer"
    defer_overlays(layer)
    assert not any(overlay.visible for overlay in layer._overlays.values())
    show_overlays(layer)
    assert {name for name, overlay in layer._overlays.items() if overlay.visible} == shown
