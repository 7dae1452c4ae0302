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

from napari_milkd import _widget
from napari_milkd._widget import SlideWidget
from napari_milkd.core.engine.checkpoint import load_checkpoint
from napari_milkd.core.engine.config import EpochEnd
from napari_milkd.core.errors import SlideError
from napari_milkd.core.session.labels import NO_OPINION
from napari_milkd.core.slides.geometry import tissue_map
from napari_milkd.core.slides.sample import coarse_regions


def _open(make_napari_viewer, qtbot) -> tuple[object, SlideWidget]:
    viewer = make_napari_viewer(show=False)
    viewer.open_sample("napari-milkd", "sample_slide")
    _, widget = viewer.window.add_plugin_dock_widget("napari-milkd", "milkd")
    widget.backbone_combo.setCurrentText("tiny")
    widget.device_combo.setCurrentIndex(widget.device_combo.findData("cpu"))
    widget.teacher_epochs.setValue(1)
    widget.prepare_button.click()
    qtbot.waitUntil(lambda: widget.work is not None and widget.worker is None, timeout=60_000)
    return viewer, widget


def _paint(widget: SlideWidget) -> np.ndarray:
    regions = coarse_regions(widget.work.downsample, widget.work.shape, tissue_map(widget.work))
    widget.weak_layer().data = regions
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
    regions = _paint(widget)
    bad_files = {
        "not JSON": (tmp_path / "a.geojson", "{not json"),
        "has no features": (tmp_path / "b.geojson", '{"type": "FeatureCollection", "features": []}'),
        "malformed XML": (tmp_path / "c.xml", "<ASAP_Annotations><Annotations>"),
    }
    for message, (path, content) in bad_files.items():
        path.write_text(content)
        before = len(notification_manager.records)
        widget.import_regions(path)
        assert any(message in m for m in _messages(before)), _messages(before)
        assert np.array_equal(widget.weak_layer().data, regions)

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
        assert any(message in m for m in _messages(before)), _messages(before)

    # Export into a folder that cannot be written (tests may run as root, where chmod does not block
    # writes: a path below a regular file is unwritable for everyone).
    widget._show_stage("teacher", np.full(widget.work.shape, 0.9, np.float32))
    widget.export_stage.setCurrentText("teacher")
    (tmp_path / "a_file").write_text("x")
    bad_target = str(tmp_path / "a_file" / "teacher.geojson")
    monkeypatch.setattr(_widget.QFileDialog, "getSaveFileName", lambda *a, **k: (bad_target, ""))
    before = len(notification_manager.records)
    widget._export_dialog()
    assert any("export failed: could not write" in m and "not a folder" in m for m in _messages(before))

    # The disk fills up during an autosave: a notification, and the previous save is intact.
    widget.hard[5:9, 5:9] = 1
    widget.save_session()
    saved = widget.project.load_array("corrections")[0].copy()
    real_replace = os.replace

    def full_disk(src: str, dst: str) -> None:
        if Path(src).name.startswith("."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_disk)
    widget.hard[:] = NO_OPINION
    before = len(notification_manager.records)
    widget.save_session()
    assert any("the disk is full" in m for m in _messages(before)), _messages(before)
    monkeypatch.setattr(os, "replace", real_replace)
    assert np.array_equal(widget.project.load_array("corrections")[0], saved)

    # A corrupt checkpoint in the project folder: the job fails with a notification, the widget recovers.
    checkpoint = fresh_project / "checkpoints" / "teacher.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_bytes(b"\x00 not a checkpoint")
    before = len(notification_manager.records)
    # The widget's workers pass _ignore_errors=True: the error is shown once, as our notification, and
    # nothing escapes into the event loop.
    with qtbot.capture_exceptions() as escaped:
        widget.train_teacher_button.click()
        qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert not escaped
    assert any("cannot read checkpoint" in m for m in _messages(before)), _messages(before)
    assert widget.train_teacher_button.isEnabled() and not widget.cancel_button.isEnabled()

    # Still usable: a good export works.
    good = tmp_path / "ok.geojson"
    assert widget.export("teacher", "geojson", good).exists()


def test_closing_the_viewer_during_training_stops_it_and_keeps_the_work(
    make_napari_viewer, qtbot, fresh_project: Path
) -> None:
    viewer, widget = _open(make_napari_viewer, qtbot)
    regions = _paint(widget)
    widget.hard[5:9, 5:9] = 1
    widget.teacher_epochs.setValue(500)
    widget.batch_spin.setValue(4)
    epochs: list[EpochEnd] = []
    finished: list[bool] = []
    widget.train_teacher_button.click()
    worker = widget.worker
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
