"""Which painted tiles count (issue #16): scribbled tumour-free strokes make negative bags with the
default scribble rule (every painted pixel in the tile tumour-free, tile mostly tissue), while drawn or
imported regions keep the ≥ 90 % rule; the session counts, trains and saves by the chosen rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_milkd.core.session.labels import slide_bags
from napari_milkd.core.session.project import Project
from napari_milkd.core.session.slide_session import SlideSession
from napari_milkd.core.session.weak_labels import (
    BAG_IGNORE,
    BAG_NEGATIVE,
    BAG_POSITIVE,
    REGION_FREE,
    REGION_TUMOUR,
    REGIONS_RULE,
    SCRIBBLE_RULE,
    BagCounter,
    bag_labels_from_regions,
    bag_rule,
)
from napari_milkd.core.slides.slide import open_slide
from napari_milkd.core.slides.tiling import TileGrid
from slide_images import tissue_square_slide


def _grid(tissue: list[float]) -> TileGrid:
    """One row of 64-px tiles at downsample 1, with the given tissue shares."""
    origins = np.array([[0, 64 * i] for i in range(len(tissue))], np.int64)
    return TileGrid(
        mpp=1.0,
        tile=64,
        stride=64,
        tile_l0=64.0,
        stride_l0=64.0,
        level=0,
        origins_l0=origins,
        tissue_fraction=np.array(tissue, np.float32),
    )


def test_a_scribble_makes_a_negative_bag_only_where_it_is_clean_and_on_tissue() -> None:
    grid = _grid([1.0, 1.0, 1.0, 0.2, 1.0])
    regions = np.zeros((64, 320), np.uint8)
    regions[30:34, 0:256] = REGION_FREE  # one thin stroke across tiles 0-3 (6 % of each)
    regions[10:14, 140:150] = REGION_TUMOUR  # ... and a tumour dab in tile 2
    regions[:, 256:] = REGION_FREE  # tile 4 fully painted
    scribbles = bag_labels_from_regions(grid, regions, 1.0, rule=SCRIBBLE_RULE).labels
    regions_rule = bag_labels_from_regions(grid, regions, 1.0, rule=REGIONS_RULE).labels
    # tile 0,1: clean stroke on tissue → negative; tile 2: tumour paint → not negative;
    # tile 3: mostly glass → ignored; tile 4: fully painted → negative by both rules.
    assert list(scribbles) == [BAG_NEGATIVE, BAG_NEGATIVE, BAG_IGNORE, BAG_IGNORE, BAG_NEGATIVE]
    assert list(regions_rule) == [BAG_IGNORE, BAG_IGNORE, BAG_IGNORE, BAG_IGNORE, BAG_NEGATIVE]
    # Positive bags are the same under both rules (tile 2's dab covers < 25 %: ignored).
    regions[:, 140:190] = REGION_TUMOUR
    for rule in (SCRIBBLE_RULE, REGIONS_RULE):
        assert bag_labels_from_regions(grid, regions, 1.0, rule=rule).labels[2] == BAG_POSITIVE


def test_the_counter_follows_the_rule_and_equals_the_reference() -> None:
    grid = _grid([1.0, 0.9, 0.4, 1.0])
    rng = np.random.default_rng(3)
    regions = rng.choice([0, 0, 0, REGION_FREE, REGION_TUMOUR], size=(64, 256)).astype(np.uint8)
    regions[:, :64] = np.where(regions[:, :64] == REGION_TUMOUR, 0, regions[:, :64])
    counter = BagCounter(grid, 1.0, regions, rule=SCRIBBLE_RULE)
    assert np.array_equal(
        counter.labels().labels, bag_labels_from_regions(grid, regions, 1.0, rule=SCRIBBLE_RULE).labels
    )
    counter.use_rule(REGIONS_RULE)
    assert np.array_equal(
        counter.labels().labels, bag_labels_from_regions(grid, regions, 1.0, rule=REGIONS_RULE).labels
    )
    with pytest.raises(ValueError, match="scribbles or regions"):
        bag_rule("strict")


def test_the_session_counts_trains_and_saves_by_its_rule(tmp_path: Path) -> None:
    slide = tissue_square_slide(tmp_path / "s.tiff")
    project = Project(tmp_path / "project")
    with SlideSession(slide, project=project, bag_rule="scribbles") as session:
        session.prepare(1.0, 32)
        assert session.weak is not None and session.work is not None
        session.weak[40:44, :] = REGION_FREE  # one stroke across the tissue
        session.weak[100:140, 100:140] = REGION_TUMOUR
        pos, neg = session.bag_counts()
        assert pos > 0 and neg > 0
        # The job's bags are the same tiles the note counts.
        source = open_slide(slide)
        try:
            _, labels, _ = slide_bags(source, session.work, session.weak, rule=session.bag_rule)
        finally:
            source.close()
        assert (labels.n_positive, labels.n_negative) == (pos, neg)
        assert np.array_equal(labels.labels, session.bag_labels().labels)
        session.set_bag_rule("regions")
        assert session.bags[1] < neg
        session.save()
    assert project.load_settings()["bag_rule"] == "regions"
    # Reopened without naming a rule: the project's rule comes back.
    with SlideSession(slide, project=project) as again:
        again.prepare(1.0, 32)
        assert again.bag_rule == REGIONS_RULE
