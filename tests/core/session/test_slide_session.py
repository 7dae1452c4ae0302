"""Slide-level glue: weak labels → bags, corrections, tiled prediction, the project folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_milkd.core.engine.metrics import f1_score as dice
from napari_milkd.core.errors import InputError
from napari_milkd.core.inference.stream import blend_window, predict_map
from napari_milkd.core.progress import describe, drain, progress_of
from napari_milkd.core.session.labels import (
    NO_OPINION,
    READ_CHUNK,
    ReadingTiles,
    apply_corrections,
    record_corrections,
    slide_bags,
    slide_bags_job,
)
from napari_milkd.core.session.project import Project, default_project_dir, projects_root
from napari_milkd.core.session.weak_labels import (
    BAG_IGNORE,
    BAG_NEGATIVE,
    BAG_POSITIVE,
    bag_labels_from_regions,
    whole_slide_negative,
)
from napari_milkd.core.slides.geometry import map_geometry, plan_work, tile_crops, tissue_map
from napari_milkd.core.slides.slide import ArraySlideSource
from napari_milkd.core.slides.tiling import tile_grid


def _two_tone_slide() -> ArraySlideSource:
    """Left half purple ("tumour"), right half pink, white margin: 1024×1536 at 0.5 µm/px."""
    image = np.full((1024, 1536, 3), 245, np.uint8)
    image[64:960, 64:768] = (120, 60, 160)
    image[64:960, 768:1472] = (230, 140, 190)
    return ArraySlideSource(image, mpp=0.5)


def test_bag_rules() -> None:
    source = _two_tone_slide()
    grid = tile_grid(source.info, mpp=1.0, tile=64)  # tiles of 128 level-0 px
    regions = np.zeros((8, 12), np.uint8)  # one region pixel per tile (downsample 128)
    regions[:, :6] = 1
    regions[:, 6:] = 2
    regions[0, 11] = 0
    labels = bag_labels_from_regions(grid, regions, 128.0)
    grid_labels = labels.labels.reshape(8, 12)
    assert (grid_labels[:, :6] == BAG_POSITIVE).all()
    assert (grid_labels[1:, 6:] == BAG_NEGATIVE).all()
    assert grid_labels[0, 11] == BAG_IGNORE
    assert labels.missing_kind() is None and labels.n_ignored == 1
    # A tile touched by "contains tumour" paint is never negative.
    regions[3, 8] = 1
    touched = bag_labels_from_regions(grid, regions, 128.0, min_positive=2.0).labels.reshape(8, 12)
    assert touched[3, 8] == BAG_IGNORE
    assert whole_slide_negative(grid).missing_kind() == "positive"


def test_slide_bags_and_hard_labels() -> None:
    source = _two_tone_slide()
    work = plan_work(source, work_mpp=1.0, tile=64)
    assert work.downsample == pytest.approx(2.0) and work.shape == (512, 768)
    regions = np.zeros(work.shape, np.uint8)
    regions[:, :384] = 1
    regions[:, 384:] = 2
    hard = np.full(work.shape, NO_OPINION, np.uint8)
    hard[40:50, 40:50] = 0
    bags, _labels, index = slide_bags(source, work, regions, hard_labels=hard)
    assert bags.n_pos > 0 and bags.n_neg > 0 and len(bags) == len(index)
    assert bags.images.shape[1:] == (64, 64, 3)
    assert bags.hard_labels is not None
    assert (bags.hard_labels == 0).sum() == 100  # the correction lands in exactly one tile
    with pytest.raises(InputError, match="no negative bags"):
        slide_bags(source, work, np.where(regions == 1, 1, 0).astype(np.uint8))
    with pytest.raises(InputError, match="working resolution"):
        slide_bags(source, work, regions[:10])


def test_reading_the_bag_tiles_reports_determinate_progress_from_the_start() -> None:
    """Issue #16, honest progress: a job says it is reading N tiles (done/total) before the first batch,
    instead of an indeterminate bar for seconds."""
    source = _two_tone_slide()
    work = plan_work(source, work_mpp=1.0, tile=64)
    regions = np.zeros(work.shape, np.uint8)
    regions[:, :384] = 1
    regions[:, 384:] = 2
    events: list[ReadingTiles] = []
    bags, _labels, index = drain(slide_bags_job(source, work, regions, stage="teacher"), events.append)
    assert events[0].done == 0 and events[-1].done == events[-1].total == len(index) == len(bags)
    assert [e.done for e in events] == sorted(e.done for e in events)
    assert len(events) == 1 + -(-len(index) // READ_CHUNK)
    assert describe(events[1]) == f"teacher: reading {READ_CHUNK}/{len(index)} tiles"
    assert progress_of(events[-1]) == (len(index), len(index))
    reference = slide_bags(source, work, regions)[0]
    assert np.array_equal(reference.images, bags.images)


def test_tile_crops_align_with_tiles() -> None:
    source = _two_tone_slide()
    work = plan_work(source, work_mpp=1.0, tile=64)
    marker = np.arange(work.shape[0] * work.shape[1], dtype=np.int64).reshape(work.shape)
    crops = tile_crops(marker, work, np.arange(len(work.grid)))
    for k in range(len(work.grid)):
        r0 = round(work.grid.origins_l0[k, 0] / work.downsample)
        c0 = round(work.grid.origins_l0[k, 1] / work.downsample)
        assert crops[k, 0, 0] == marker[r0, c0]
    assert tissue_map(work).shape == work.shape


def test_corrections_are_recorded_and_survive() -> None:
    hard = np.full((5, 5), NO_OPINION, np.uint8)
    before = np.zeros((5, 5), np.uint8)
    after = before.copy()
    after[1, 1] = 1  # painted tumour
    hard = record_corrections(hard, before, after)
    again = after.copy()
    again[1, 1] = 0  # erased again: becomes "not tumour", still a correction
    again[4, 4] = 1
    hard = record_corrections(hard, after, again)
    assert hard[1, 1] == 0 and hard[4, 4] == 1 and (hard == NO_OPINION).sum() == 23
    new_prediction = np.ones((5, 5), np.uint8)
    fixed = apply_corrections(new_prediction, hard)
    assert fixed[1, 1] == 0 and fixed[4, 4] == 1 and fixed[0, 0] == 1
    assert dice(np.ones(4, bool), np.ones(4, bool)) == 1.0
    assert dice(np.array([1, 0], bool), np.array([0, 1], bool)) == 0.0


def test_predict_map_constant_model_is_constant() -> None:
    """A model that outputs 0.7 everywhere gives 0.7 on every covered pixel: blending has no seams."""
    import torch

    from napari_milkd.core.engine.models.dws_mil import SegOutput

    class Constant(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor) -> SegOutput:
            prob = torch.full((x.shape[0], 1, *x.shape[2:]), 0.7) + 0 * self.p
            logit = torch.logit(prob)
            return SegOutput(sides=(logit, logit, logit), fused_logit=logit, fused_prob=prob)

    source = _two_tone_slide()
    grid = tile_grid(source.info, mpp=1.0, tile=64, overlap=16)
    _ds, shape = map_geometry(source, grid)
    prob = drain(predict_map(Constant(), source, grid, batch_size=7, device="cpu"))
    assert prob.shape == shape
    assert np.allclose(prob, 0.7, atol=1e-5)
    window = blend_window(64)
    assert window.min() > 0 and window.max() == 1.0


def test_project_folder_roundtrip(tmp_path: Path) -> None:
    slide = tmp_path / "slide.svs"
    slide.write_bytes(b"x")
    assert default_project_dir(slide).parent == projects_root()  # never beside the slide (issue 17)
    project = Project.for_slide(slide)
    labels = np.zeros((300, 200), np.uint8)
    labels[10:20, 30:40] = 2
    project.save_array("weak_labels", labels, downsample=2.0)
    loaded, meta = project.load_array("weak_labels")
    assert np.array_equal(loaded, labels) and meta == {"downsample": 2.0}
    assert project.load_array("missing") is None
    project.save_settings({"work_mpp": 1.0})
    project.save_settings({"tile": 128})
    assert project.load_settings() == {"work_mpp": 1.0, "tile": 128, "version": 1}
    assert not list(project.root.rglob("*.part"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slide.svs"]
    (project.root / "arrays" / "weak_labels.npz").write_bytes(b"garbage")
    with pytest.raises(InputError, match="damaged"):
        project.load_array("weak_labels")
    with pytest.raises(InputError):
        project.save_array("../escape", labels)


def test_project_falls_back_to_cache_when_slide_folder_is_read_only(tmp_path: Path) -> None:
    """Also as root (who could write): a folder marked read-only, like a shared data set, is left alone."""
    folder = tmp_path / "ro"
    folder.mkdir()
    slide = folder / "s.svs"
    slide.write_bytes(b"x")
    folder.chmod(0o555)
    try:
        assert "projects" in str(default_project_dir(slide))
    finally:
        folder.chmod(0o755)


def test_mask_from_probability_smooths_specks_and_keeps_tissue() -> None:
    from napari_milkd.core.inference.masks import mask_from_probability

    prob = np.zeros((60, 60), np.float32)
    prob[10:40, 10:40] = 0.9  # a region
    prob[50, 20] = 1.0  # a one-pixel speck in tissue
    tissue = np.ones((60, 60), bool)
    tissue[:, 35:] = False
    mask = mask_from_probability(prob, tissue)
    assert mask.dtype == np.uint8
    assert mask[25, 25] == 1 and mask[50, 20] == 0
    assert not mask[:, 35:].any()  # never outside tissue
    assert mask_from_probability(prob, tissue, sigma=0, min_object_px=0)[50, 20] == 1  # kept unsmoothed
