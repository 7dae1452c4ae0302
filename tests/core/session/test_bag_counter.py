"""Incremental bag counts (:class:`BagCounter`, :meth:`SlideSession.weak_edited`) equal the reference
:func:`bag_labels_from_regions` after random strokes, and a stroke recounts only the tiles under it."""

from __future__ import annotations

import numpy as np
import pytest

from napari_milkd.core.session.project import Project
from napari_milkd.core.session.slide_session import SlideSession
from napari_milkd.core.session.weak_labels import BagCounter, bag_labels_from_regions
from napari_milkd.core.slides.sample import write_pyramidal_tiff
from napari_milkd.core.slides.tiling import TileGrid


def _grid(rows: int, cols: int, tile_l0: float, stride_l0: float) -> TileGrid:
    ys, xs = np.meshgrid(np.arange(0, rows, stride_l0), np.arange(0, cols, stride_l0), indexing="ij")
    origins = np.stack([ys.ravel(), xs.ravel()], axis=1).astype(np.int64)
    return TileGrid(
        mpp=1.0,
        tile=int(tile_l0),
        stride=int(stride_l0),
        tile_l0=tile_l0,
        stride_l0=stride_l0,
        level=0,
        origins_l0=origins,
        tissue_fraction=np.ones(len(origins), np.float32),
    )


def _strokes(rng: np.random.Generator, regions: np.ndarray, n: int):
    for _ in range(n):
        y, x = rng.integers(0, regions.shape[0]), rng.integers(0, regions.shape[1])
        h, w = rng.integers(1, 60, size=2)
        value = int(rng.integers(0, 3))
        box = (int(y), int(x), int(min(y + h, regions.shape[0])), int(min(x + w, regions.shape[1])))
        regions[box[0] : box[2], box[1] : box[3]] = value
        yield box


@pytest.mark.parametrize(("downsample", "tile_l0", "stride_l0"), [(4.0, 128.0, 128.0), (3.0, 100.0, 80.0)])
def test_counter_equals_reference_after_random_strokes(downsample, tile_l0, stride_l0) -> None:
    rng = np.random.default_rng(7)
    regions = np.zeros((150, 210), np.uint8)
    grid = _grid(int(150 * downsample), int(210 * downsample), tile_l0, stride_l0)
    counter = BagCounter(grid, downsample, regions)
    for box in _strokes(rng, regions, 200):
        counter.update(regions, box)
        reference = bag_labels_from_regions(grid, regions, downsample)
        assert np.array_equal(counter.labels().labels, reference.labels)
    assert counter.counts()[0] > 0  # the strokes made bags, not only empty tiles


def test_update_touches_only_tiles_under_the_box() -> None:
    regions = np.zeros((100, 100), np.uint8)
    grid = _grid(400, 400, 128.0, 128.0)
    counter = BagCounter(grid, 4.0, regions)
    regions[:] = 1  # painted everywhere, but announced in one corner only
    counter.update(regions, (0, 0, 5, 5))
    assert counter.tumour[0] == 32 * 32 and (counter.tumour[1:] == 0).all()


def test_session_weak_edited_tracks_strokes(tmp_path) -> None:
    image = np.full((512, 768, 3), 245, np.uint8)
    image[32:480, 32:736] = (120, 60, 160)
    slide = write_pyramidal_tiff(tmp_path / "s.tiff", [image, image[::4, ::4].copy()], mpp=0.25, tile=128)
    with SlideSession(slide or tmp_path / "s.tiff", project=Project(tmp_path / "p")) as session:
        session.prepare(0.5, 32)
        assert session.work is not None and session.weak is not None
        rng = np.random.default_rng(1)
        for box in _strokes(rng, session.weak, 60):
            counts = session.weak_edited(box)
            reference = bag_labels_from_regions(session.work.grid, session.weak, session.work.downsample)
            assert counts == (reference.n_positive, reference.n_negative) == session.bags
        assert session.bag_counts() == counts
