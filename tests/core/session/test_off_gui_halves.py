"""The halves the widget runs in a worker (``read_import``, ``accept_job``, ``export_job``; ``adopt`` of a
session the widget does not hold yet) change nothing in the session; the GUI-thread halves
(``apply_import``, ``take``) give what the one-call forms give."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_milkd.core.engine.train import TrainResult
from napari_milkd.core.errors import WriteError
from napari_milkd.core.session.jobs import StageOutput
from napari_milkd.core.session.labels import NO_OPINION
from napari_milkd.core.session.project import Project
from napari_milkd.core.session.slide_session import SlideSession
from napari_milkd.core.session.weak_labels import bag_labels_from_regions
from napari_milkd.core.slides.sample import write_pyramidal_tiff


def _session(tmp_path: Path) -> SlideSession:
    image = np.full((512, 768, 3), 245, np.uint8)
    image[32:480, 32:736] = (120, 60, 160)
    write_pyramidal_tiff(tmp_path / "s.tiff", [image, image[::4, ::4].copy()], mpp=0.25, tile=128)
    session = SlideSession(tmp_path / "s.tiff", project=Project(tmp_path / "p"))
    session.prepare(0.5, 32)
    return session


def _square(x: float, y: float, side: float, name: str) -> dict:
    ring = [[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]]
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"objectType": "annotation", "classification": {"name": name}},
    }


def test_import_halves(tmp_path: Path) -> None:
    path = tmp_path / "r.geojson"
    features = [_square(64, 64, 200, "Tumor"), _square(400, 300, 150, "Stroma")]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    with _session(tmp_path) as session:
        assert session.work is not None and session.weak is not None
        imported = session.read_import(path)
        assert not session.weak.any() and session.bags == (0, 0)  # reading paints nothing
        summary = session.apply_import(imported)
        assert summary.n_regions == 2 and session.weak.any()
        reference = bag_labels_from_regions(session.work.grid, session.weak, session.work.downsample)
        assert session.bags == (reference.n_positive, reference.n_negative) == session.bag_counts()


def test_accept_halves_keep_corrections_made_meanwhile(tmp_path: Path) -> None:
    with _session(tmp_path) as session:
        assert session.work is not None and session.hard is not None
        probability = np.full(session.work.shape, 0.9, np.float32)
        result = TrainResult(stage="teacher", epochs=1, best_epoch=1, best_score=None, checkpoint=None)
        job = session.accept_job(StageOutput("teacher", probability, result, 1, 1))
        accepted = job()
        assert "teacher" not in session.masks  # the worker half changes nothing in the session
        assert session.project.load_array("teacher_probability") is not None  # ... but saved the map
        session.hard[0:4, 0:4] = 1  # a correction (tumour on glass) made while the map was being saved
        mask = session.take(accepted)
        assert (
            (mask[0:4, 0:4] == 1).all()
            and (accepted.mask[0:4, 0:4] == 0).all()
            and session.mask("teacher") is mask
        )
        assert (session.hard[4:, 4:] == NO_OPINION).all()
        write = session.export_job("teacher", "geojson", tmp_path / "t.geojson")
        assert not (tmp_path / "t.geojson").exists()
        assert write() == tmp_path / "t.geojson" and (tmp_path / "t.geojson").exists()


def test_adopt_in_a_worker_leaves_the_lock_and_tells_saves_made_meanwhile(tmp_path: Path) -> None:
    """Prepare adopts in a worker; with ``lock=False`` the session prepared before (same project) keeps
    the lock, and its saves, until ``take_lock``; ``saved_stamp`` tells that it saved meanwhile."""
    with _session(tmp_path) as first:
        assert first.work is not None and first.weak is not None
        first.weak[0:8, 0:8] = 1
        first.save()
        second = SlideSession(tmp_path / "s.tiff", project=Project(tmp_path / "p"))
        work = second.plan(0.5, 32)
        before = second.saved_stamp()
        restored = second.adopt(work, lock=False)
        assert "weak labels" in restored and (second.weak[0:8, 0:8] == 1).all()
        assert before == second.saved_stamp()  # reading changes no saved file
        first.weak[8:16, 0:8] = 2  # a stroke in the first session while the second read the project
        first.save()  # ... still allowed: the lock is the first's
        assert second.saved_stamp() != before
        second.take_lock()
        assert second.adopt(work) and (second.weak[8:16, 0:8] == 2).all()  # adopting again reads it
        first.weak[0, 0] = 2
        with pytest.raises(WriteError):
            first.save()  # the second session has the project now
        second.close()


def test_save_job_copies_now_writes_later_and_the_newest_save_wins(tmp_path: Path) -> None:
    """The autosave's halves: the maps are copied when asked (strokes after it are not in it); a save
    asked later and written first is not overwritten by the older one; the close waits and refuses."""
    with _session(tmp_path) as session:
        assert session.weak is not None
        session.weak[0:4, 0:4] = 1
        older = session.save_job()
        session.weak[0:4, 0:4] = 2  # painted after the snapshot
        newer = session.save_job()
        newer()
        older()  # ran late: writes nothing over the newer snapshot
        saved = Project(tmp_path / "p").load_array("weak_labels")
        assert saved is not None and np.all(saved[0][0:4, 0:4] == 2)

        session.weak[0:4, 0:4] = 1
        late = session.save_job()
        session.close()
        with pytest.raises(WriteError):  # a write that starts after the close is refused, not lost silently
            late()
        saved = Project(tmp_path / "p").load_array("weak_labels")
        assert saved is not None and np.all(saved[0][0:4, 0:4] == 2)
