"""Where imported regions go (issue #16): into the weak labels or into the corrections, and the last
import can be undone exactly, headless (the widget's Import… and Undo import use these)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_milkd.core.engine.config import TrainResult
from napari_milkd.core.errors import InputError
from napari_milkd.core.session.jobs import StageOutput
from napari_milkd.core.session.labels import NO_OPINION
from napari_milkd.core.session.project import Project
from napari_milkd.core.session.slide_session import SlideSession
from napari_milkd.core.session.weak_labels import REGION_FREE, REGION_TUMOUR
from slide_images import tissue_square_slide


def _geojson(path: Path) -> Path:
    """A Tumor square at level-0 (100..200, 100..200) and a Stroma square at (100..200, 260..360)."""

    def square(x0: int, name: str) -> dict:
        ring = [[x0, 100], [x0 + 100, 100], [x0 + 100, 200], [x0, 200], [x0, 100]]
        return {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"objectType": "annotation", "classification": {"name": name}},
        }

    path.write_text(
        json.dumps({"type": "FeatureCollection", "features": [square(100, "Tumor"), square(260, "Stroma")]})
    )
    return path


def test_import_into_weak_labels_or_corrections_and_undo(tmp_path: Path) -> None:
    slide = tissue_square_slide(tmp_path / "s.tiff")
    path = _geojson(tmp_path / "regions.geojson")
    with SlideSession(slide, project=Project(tmp_path / "p")) as session:
        session.prepare(1.0, 32)
        work = session.work
        assert work is not None and session.weak is not None
        session.mark_all_free()
        before = session.weak.copy()
        counts = session.bag_counts()
        with pytest.raises(InputError, match="no import to undo"):
            session.undo_import()

        session.apply_import(session.read_import(path))
        tumour = (int(150 / work.downsample), int(150 / work.downsample))
        assert session.weak[tumour] == REGION_TUMOUR and session.can_undo_import
        assert session.undo_import() == "weak"
        assert np.array_equal(session.weak, before) and session.bag_counts() == counts
        assert not session.can_undo_import

        result = TrainResult(stage="teacher", epochs=1, best_epoch=1, best_score=None, checkpoint=None)
        session.accept(StageOutput("teacher", np.zeros(work.shape, np.float32), result, 1, 1))
        session.apply_import(session.read_import(path), into="corrections")
        stroma = (int(150 / work.downsample), int(310 / work.downsample))
        assert session.hard[tumour] == 1 and session.hard[stroma] == 0
        assert session.mask("teacher")[tumour] == 1  # ground truth wins in the mask
        assert np.array_equal(session.weak, before)  # the weak labels are not touched
        assert session.undo_import() == "corrections"
        assert (session.hard == NO_OPINION).all() and session.mask("teacher")[tumour] == 0
        with pytest.raises(InputError, match="cannot import into"):
            session.apply_import(session.read_import(path), into="shapes")
    assert REGION_FREE in np.unique(before)


def test_corrections_from_an_import_rebuild_only_their_box_and_equal_a_full_rebuild(tmp_path: Path) -> None:
    """The mask rebuilt around the import's box equals the whole-map rebuild (smoothing and specks across
    the box's border included)."""
    from napari_milkd.core.inference.masks import mask_from_probability
    from napari_milkd.core.session.labels import apply_corrections

    slide = tissue_square_slide(tmp_path / "s.tiff")
    path = _geojson(tmp_path / "regions.geojson")
    with SlideSession(slide, project=Project(tmp_path / "p")) as session:
        session.prepare(1.0, 32)
        work = session.work
        assert work is not None and session.tissue is not None
        rng = np.random.default_rng(0)
        probability = rng.random(work.shape).astype(np.float32)
        result = TrainResult(stage="teacher", epochs=1, best_epoch=1, best_score=None, checkpoint=None)
        session.accept(StageOutput("teacher", probability, result, 1, 1))
        session.apply_import(session.read_import(path), into="corrections")
        full = apply_corrections(mask_from_probability(probability, session.tissue), session.hard)
        assert np.array_equal(session.mask("teacher"), full)
        session.undo_import()
        assert np.array_equal(session.mask("teacher"), mask_from_probability(probability, session.tissue))
