"""Masks ↔ polygons (``core.annotations.geometry``): tracing, simplification, rasterising."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage
from shapely.geometry import MultiPolygon, Polygon, box

from napari_milkd.core.annotations import (
    Annotation,
    labels_to_polygons,
    mask_to_polygons,
    polygons_to_mask,
)
from napari_milkd.core.errors import InputError


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels with both values in their 3×3 neighbourhood (the outside counts as background)."""
    padded = np.pad(mask, 1)
    fg_near = ndimage.maximum_filter(padded, size=3)[1:-1, 1:-1]
    bg_near = ~ndimage.minimum_filter(padded, size=3)[1:-1, 1:-1]
    return fg_near & bg_near


def test_single_pixel_is_a_unit_square_in_corner_convention() -> None:
    mask = np.zeros((6, 6), bool)
    mask[2, 3] = True
    (polygon,) = mask_to_polygons(mask, 1.0, simplify_px=0)
    assert polygon.bounds == (3.0, 2.0, 4.0, 3.0)  # x ∈ [3, 4], y ∈ [2, 3]
    (scaled,) = mask_to_polygons(mask, 4.0, simplify_px=0)
    assert scaled.bounds == (12.0, 8.0, 16.0, 12.0)
    assert polygons_to_mask([polygon], mask.shape).sum() == 1


@pytest.mark.parametrize("downsample", [1.0, 4.0, 2.5])
def test_round_trip_is_exact_without_simplification(downsample: float, tricky: np.ndarray) -> None:
    polygons = mask_to_polygons(tricky, downsample, simplify_px=0)
    assert all(p.is_valid and p.geom_type == "Polygon" for p in polygons)
    assert sum(p.area for p in polygons) == pytest.approx(tricky.sum() * downsample**2)
    np.testing.assert_array_equal(polygons_to_mask(polygons, tricky.shape, downsample), tricky)


def test_components_holes_and_diagonal_neighbours(tricky: np.ndarray) -> None:
    polygons = mask_to_polygons(tricky, simplify_px=0)
    _, n = ndimage.label(tricky)  # 4-connectivity
    assert len(polygons) == n  # one polygon per 4-connected component: diagonal neighbours are separate
    corner = [p for p in polygons if p.bounds[:2] == (0.0, 0.0)]
    assert len(corner) == 1 and corner[0].area == 1
    ring = next(p for p in polygons if p.bounds == (4.0, 1.0, 9.0, 6.0))
    assert len(ring.interiors) == 1 and ring.area == 16  # the 3×3 hole minus nothing; island is separate
    island = next(p for p in polygons if p.bounds == (6.0, 3.0, 7.0, 4.0))
    assert island.area == 1 and ring.contains(island.representative_point()) is False
    three_holes = next(p for p in polygons if p.bounds == (1.0, 7.0, 6.0, 11.0))
    assert len(three_holes.interiors) == 3  # one-pixel holes touching at corners stay separate holes
    assert three_holes.area == 20 - 3


def test_hole_meeting_the_outside_at_a_corner(make_mask: Callable[[list[str]], np.ndarray]) -> None:
    mask = make_mask([".####", "#...#", "#...#", "#####"])
    (polygon,) = mask_to_polygons(mask, simplify_px=0)
    assert polygon.is_valid and len(polygon.interiors) == 1 and polygon.area == 13
    np.testing.assert_array_equal(polygons_to_mask([polygon], mask.shape), mask)


def test_simplification_reduces_vertices_and_keeps_holes() -> None:
    yy, xx = np.mgrid[0:200, 0:200]
    disk = (yy - 100) ** 2 + (xx - 100) ** 2 < 80**2
    disk &= (yy - 100) ** 2 + (xx - 90) ** 2 >= 20**2  # a round hole
    exact = mask_to_polygons(disk, simplify_px=0)
    simple = mask_to_polygons(disk)
    assert len(simple) == 1 and len(simple[0].interiors) == 1
    assert len(simple[0].exterior.coords) < 0.9 * len(exact[0].exterior.coords)
    np.testing.assert_array_equal(polygons_to_mask(simple, disk.shape), disk)  # 0.5 px moves no centre
    coarse = mask_to_polygons(disk, simplify_px=1.0)
    assert len(coarse[0].exterior.coords) < len(exact[0].exterior.coords) / 4
    back = polygons_to_mask(coarse, disk.shape)
    assert not np.any((back != disk) & ~_boundary(disk))  # only pixels at the outline change


def test_min_area_and_label_images() -> None:
    mask = np.zeros((20, 20), np.uint8)
    mask[1:6, 1:6] = 1
    mask[10, 10] = 1
    mask[12:18, 12:18] = 2
    assert len(mask_to_polygons(mask, simplify_px=0)) == 3  # non-zero is foreground
    assert len(mask_to_polygons(mask > 0, min_area_px=2)) == 2
    by_label = labels_to_polygons(mask, 2.0, simplify_px=0)
    assert sorted(by_label) == [1, 2]
    assert sum(p.area for p in by_label[1]) == 26 * 4
    assert mask_to_polygons(np.zeros((5, 5), bool)) == []


def test_bad_mask_arguments() -> None:
    with pytest.raises(InputError, match="2-D"):
        mask_to_polygons(np.zeros((2, 2, 2)))
    with pytest.raises(InputError, match="downsample"):
        mask_to_polygons(np.zeros((2, 2)), 0)
    with pytest.raises(InputError, match="downsample"):
        polygons_to_mask([], (2, 2), -1)


def test_rasterise_handles_overlaps_multipolygons_and_edges() -> None:
    a, b = box(0, 0, 6, 6), box(4, 4, 10, 10)  # overlapping: united, not cancelled
    holed = Polygon([(20, 0), (30, 0), (30, 10), (20, 10)], [[(22, 2), (28, 2), (28, 8), (22, 8)]])
    mask = polygons_to_mask([a, MultiPolygon([b]), Annotation(holed, "Tumor")], (12, 40))
    assert mask[5, 5] and mask[9, 9] and mask[0, 0] and not mask[11, 11]
    assert mask[:, 20:30].sum() == 100 - 36
    clipped = polygons_to_mask([box(-5, -5, 100, 3)], (4, 4))
    assert clipped[:3].all() and not clipped[3].any()


def test_large_mask_round_trip_is_exact_and_fast() -> None:
    rng = np.random.default_rng(0)
    mask = np.zeros((2000, 2000), bool)
    yy, xx = np.ogrid[-50:51, -50:51]
    for cy, cx, r in zip(
        rng.integers(50, 1950, 300), rng.integers(50, 1950, 300), rng.integers(5, 50, 300), strict=True
    ):
        mask[cy - 50 : cy + 51, cx - 50 : cx + 51] |= yy**2 + xx**2 < r**2
    mask ^= rng.random(mask.shape) < 0.0005  # speckle: isolated pixels and pinholes
    polygons = mask_to_polygons(mask, simplify_px=0)
    np.testing.assert_array_equal(polygons_to_mask(polygons, mask.shape), mask)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrays(bool, st.tuples(st.integers(1, 14), st.integers(1, 14))), st.sampled_from([1.0, 3.0, 0.5]))
def test_property_exact_round_trip(mask: np.ndarray, downsample: float) -> None:
    polygons = mask_to_polygons(mask, downsample, simplify_px=0)
    assert all(p.is_valid for p in polygons)
    np.testing.assert_array_equal(polygons_to_mask(polygons, mask.shape, downsample), mask)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrays(bool, st.tuples(st.integers(1, 16), st.integers(1, 16))))
def test_property_simplified_round_trip(mask: np.ndarray) -> None:
    exact = mask_to_polygons(mask, simplify_px=0)
    simple = mask_to_polygons(mask)
    back = polygons_to_mask(simple, mask.shape)
    boundary = _boundary(mask)
    assert abs(int(back.sum()) - int(mask.sum())) <= int(boundary.sum())  # within a pixel per boundary pixel
    assert not np.any((back != mask) & ~boundary)  # and only boundary pixels ever change
    assert sum(len(p.interiors) for p in simple) == sum(len(p.interiors) for p in exact)  # holes kept
