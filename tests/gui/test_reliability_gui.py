"""Bad input in the viewer gets a napari notification and the widget stays usable; closing the viewer
during training stops the worker and keeps the work. See ``docs/reliability.md``.

Data fixtures that may skip come before ``make_napari_viewer`` in each signature.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
from napari.utils.notifications import notification_manager
from settle import settle

from napari_milkd._widget import SlideWidget, slide_widget
from napari_milkd.core.engine.checkpoint import load_checkpoint
from napari_milkd.core.engine.config import EpochEnd, TrainResult
from napari_milkd.core.errors import SlideError
from napari_milkd.core.session.jobs import StageOutput
from napari_milkd.core.session.labels import NO_OPINION
from napari_milkd.core.slides.geometry import tissue_map
from napari_milkd.core.slides.sample import coarse_regions

WEAK = "milkd synthetic sample weak labels"


def _open(make_napari_viewer, qtbot) -> tuple[object, SlideWidget]:
    viewer = make_napari_viewer(show=False)
    viewer.open_sample("napari-milkd", "sample_slide")
    _, widget = viewer.window.add_plugin_dock_widget("napari-milkd", "Slide masks")
    widget.training.backbone_combo.setCurrentText("tiny")
    widget.training.device_combo.setCurrentIndex(widget.training.device_combo.findData("cpu"))
    widget.training.teacher_epochs.value = 1
    widget.prepare_button.click()
    qtbot.waitUntil(lambda: WEAK in viewer.layers and widget.training.worker is None, timeout=60_000)
    return viewer, widget


def _paint(viewer, widget: SlideWidget) -> np.ndarray:
    work = widget.session.work
    regions = coarse_regions(work.downsample, work.shape, tissue_map(work))
    viewer.layers[WEAK].data = regions
    return regions


def _messages(since: int) -> list[str]:
    return [str(n.message) for n in notification_manager.records[since:]]


def _geojson(path: Path, coordinates: list) -> Path:
    feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": coordinates}}
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    return path


def test_bad_input_in_the_viewer_is_notified_and_the_widget_stays_usable(
    cmu_svs: Path,
    make_napari_viewer,
    qtbot,
    tmp_path: Path,
    fresh_project: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Slides that cannot be opened: napari shows the reader's one-line SlideError as a notification.
    (tmp_path / "notes.svs").write_text("not a slide")
    (tmp_path / "cut.svs").write_bytes(cmu_svs.read_bytes()[:100_000])
    viewer, widget = _open(make_napari_viewer, qtbot)
    n_layers = len(viewer.layers)
    for bad, message in (
        (tmp_path / "missing.svs", "does not exist"),  # napari checks this before asking any reader
        (tmp_path / "notes.svs", "not a slide OpenSlide can read"),
        (tmp_path / "cut.svs", "cut.svs"),
    ):
        with pytest.raises((SlideError, FileNotFoundError), match=message) as info:
            viewer.open(str(bad), plugin="napari-milkd")
        assert "\n" not in str(info.value)
    assert len(viewer.layers) == n_layers

    # Annotation files that cannot be imported: an error notification, the weak labels untouched.
    regions = _paint(viewer, widget)
    bad_files = {
        "not JSON": (tmp_path / "a.geojson", "{not json"),
        "has no features": (tmp_path / "b.geojson", '{"type": "FeatureCollection", "features": []}'),
        "malformed XML": (tmp_path / "c.xml", "<ASAP_Annotations><Annotations>"),
    }
    for message, (path, content) in bad_files.items():
        path.write_text(content)
        before = len(notification_manager.records)
        widget.import_regions(path)
        settle(qtbot, widget)  # read in a worker; the error comes back as a notification
        assert any(message in m for m in _messages(before)), _messages(before)
        assert np.array_equal(viewer.layers[WEAK].data, regions)

    # Self-intersecting / empty / outside polygons: repaired or skipped, each with a warning.
    h0 = viewer.layers[0].metadata["milkd_slide"]["levels"][0]["height"]
    bowtie = _geojson(tmp_path / "bowtie.geojson", [[[0, 0], [400, 400], [400, 0], [0, 400], [0, 0]]])
    empty = _geojson(tmp_path / "empty.geojson", [[[0, 0], [5, 0], [10, 0], [0, 0]]])
    outside = _geojson(
        tmp_path / "outside.geojson", [[[-50, h0 - 100], [300, h0 - 100], [300, h0 + 500], [-50, h0]]]
    )
    for path, message in ((bowtie, "repaired"), (empty, "no usable polygons"), (outside, "clipped")):
        before = len(notification_manager.records)
        widget.import_regions(path)
        settle(qtbot, widget)
        assert any(message in m for m in _messages(before)), _messages(before)

    # Export into a folder that cannot be written (tests may run as root, where chmod does not block
    # writes: a path below a regular file is unwritable for everyone).
    # A teacher map (as a finished job would hand it over) to export.
    probability = np.full(widget.session.work.shape, 0.9, np.float32)
    result = TrainResult(stage="teacher", epochs=1, best_epoch=1, best_score=None, checkpoint=None)
    widget.session.accept(StageOutput("teacher", probability, result, 1, 1))
    widget.show_stage("teacher")
    assert "milkd synthetic sample teacher mask" in viewer.layers and widget.export_button.isEnabled()
    widget.export_stage.setCurrentText("teacher")
    (tmp_path / "a_file").write_text("x")
    target = [str(tmp_path / "a_file" / "teacher.geojson")]
    monkeypatch.setattr(slide_widget.QFileDialog, "getSaveFileName", lambda *a, **k: (target[0], ""))
    before = len(notification_manager.records)
    widget.export_button.click()
    settle(qtbot, widget)
    assert any("export failed: could not write" in m and "not a folder" in m for m in _messages(before))

    # The disk fills up during an autosave: a notification, and the previous save is intact.
    widget.session.hard[5:9, 5:9] = 1
    widget.save_session()
    project = widget.session.project
    saved = project.load_array("corrections")[0].copy()
    real_replace = os.replace

    def full_disk(src: str, dst: str) -> None:
        if Path(src).name.startswith("."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_disk)
    widget.session.hard[:] = NO_OPINION
    before = len(notification_manager.records)
    widget.save_session()
    assert any("the disk is full" in m for m in _messages(before)), _messages(before)
    monkeypatch.setattr(os, "replace", real_replace)
    assert np.array_equal(project.load_array("corrections")[0], saved)

    # A corrupt checkpoint in the project folder: the job fails with a notification, the widget recovers.
    checkpoint = fresh_project / "checkpoints" / "teacher.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_bytes(b"\x00 not a checkpoint")
    before = len(notification_manager.records)
    # The widget's workers pass _ignore_errors=True: the error is shown once, as our notification, and
    # nothing escapes into the event loop.
    with qtbot.capture_exceptions() as escaped:
        widget.train_teacher_button.click()
        qtbot.waitUntil(lambda: widget.training.worker is None, timeout=120_000)
    assert not escaped
    assert any("cannot read checkpoint" in m for m in _messages(before)), _messages(before)
    assert "failed: " in widget.training.status.text()
    assert widget.train_teacher_button.isEnabled() and not widget.training.cancel_button.isEnabled()
    assert "milkd synthetic sample preview" not in viewer.layers

    # Still usable: a good export works.
    target[0] = str(tmp_path / "ok.geojson")
    before = len(notification_manager.records)
    widget.export_button.click()
    settle(qtbot, widget)
    assert (tmp_path / "ok.geojson").exists()
    assert any("wrote" in m for m in _messages(before)), _messages(before)


def test_closing_the_viewer_during_training_stops_it_and_keeps_the_work(
    make_napari_viewer, qtbot, fresh_project: Path
) -> None:
    viewer, widget = _open(make_napari_viewer, qtbot)
    regions = _paint(viewer, widget)
    widget.session.hard[5:9, 5:9] = 1
    widget.training.teacher_epochs.value = 500
    widget.training.batch_size.value = 4
    epochs: list[EpochEnd] = []
    finished: list[bool] = []
    widget.train_teacher_button.click()
    worker = widget.training.worker
    worker.yielded.connect(lambda e: epochs.append(e) if isinstance(e, EpochEnd) else None)
    worker.finished.connect(lambda: finished.append(True))
    qtbot.waitUntil(lambda: len(epochs) >= 1, timeout=120_000)
    viewer.close()
    qtbot.waitUntil(lambda: bool(finished), timeout=60_000)  # stopped at its next batch
    assert len(epochs) < 500

    state = load_checkpoint(fresh_project / "checkpoints" / "teacher.pt")  # whole and loadable
    assert state["epoch"] >= 1 and not state["complete"]
    from napari_milkd.core.session.project import Project

    project = Project(fresh_project)
    assert np.array_equal(project.load_array("weak_labels")[0], regions)
    corrections = project.load_array("corrections")[0]
    assert (corrections[5:9, 5:9] == 1).all() and (corrections != NO_OPINION).sum() == 16
