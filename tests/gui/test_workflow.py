"""The whole workflow in a real viewer, driven like a user, with a tiny model on CPU:
sample slide → weak labels → teacher → hand correction → student → review → export → re-import;
plus Cancel during training and restoring a saved session (also one prepared at another resolution).

Assertions are on what a user sees (layers and their data, buttons, notifications, files in the project
folder); where state is needed, ``widget.session`` is the public object the widget drives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from napari.layers import Image, Labels
from napari.utils.notifications import notification_manager
from settle import settle

from napari_milkd._widget import SlideWidget, slide_widget
from napari_milkd.core.annotations import mask_to_polygons, polygons_to_mask, read_geojson
from napari_milkd.core.engine.checkpoint import load_checkpoint
from napari_milkd.core.engine.config import EpochEnd
from napari_milkd.core.session.jobs import MapPreview
from napari_milkd.core.session.labels import NO_OPINION, ReadingTiles, slide_bags
from napari_milkd.core.session.project import Project
from napari_milkd.core.slides.geometry import tissue_map
from napari_milkd.core.slides.sample import coarse_regions
from napari_milkd.core.slides.slide import open_slide

PREFIX = "milkd synthetic sample"


def _open(
    make_napari_viewer, qtbot, *, show: bool = True, work_mpp: float | None = None
) -> tuple[object, SlideWidget]:
    viewer = make_napari_viewer(show=show)
    viewer.window._qt_window.resize(1400, 950)
    viewer.open_sample("napari-milkd", "sample_slide")
    _, widget = viewer.window.add_plugin_dock_widget("napari-milkd", "Slide masks")
    widget.training.backbone_combo.setCurrentText("tiny")
    widget.training.device_combo.setCurrentIndex(widget.training.device_combo.findData("cpu"))
    widget.training.teacher_epochs.value = 1
    widget.training.student_epochs.value = 2
    if work_mpp is not None:
        widget.target_spin.setValue(work_mpp)
    widget.prepare_button.click()
    qtbot.waitUntil(
        lambda: f"{PREFIX} weak labels" in viewer.layers and widget.training.worker is None, timeout=60_000
    )
    return viewer, widget


def _messages(since: int) -> list[str]:
    return [str(n.message) for n in notification_manager.records[since:]]


def _paint_weak_labels(viewer, widget: SlideWidget) -> np.ndarray:
    """What a pathologist does: rough "contains tumour" around the tumour, "tumour-free" elsewhere."""
    layer = viewer.layers[f"{PREFIX} weak labels"]
    work = widget.session.work
    regions = coarse_regions(work.downsample, work.shape, tissue_map(work))
    widget.paint_tumour.click()
    assert viewer.layers.selection.active is layer
    assert layer.mode == "paint" and layer.selected_label == 1
    layer.data = regions
    layer.paint((10, 10), 2)  # and one brush stroke through the paint tool
    assert layer.data[10, 10] == 2
    assert np.array_equal(widget.session.weak, layer.data)  # strokes land in the session
    return np.asarray(layer.data).copy()


def _wait_done(qtbot, viewer, widget: SlideWidget, name: str, timeout: int = 240_000) -> None:
    qtbot.waitUntil(lambda: not widget.busy and name in viewer.layers, timeout=timeout)


def _export(qtbot, widget: SlideWidget, monkeypatch, stage: str, fmt: str) -> None:
    """Export through the dialog, accepting the file name it proposes (in the project's exports)."""
    widget.export_stage.setCurrentText(stage)
    widget.export_format.setCurrentText(fmt)
    dialog = slide_widget.QFileDialog
    monkeypatch.setattr(dialog, "getSaveFileName", lambda _parent, _title, start, _filter: (start, ""))
    widget.export_button.click()
    assert widget.busy and not widget.export_button.isEnabled()  # written in a worker, the UI greyed
    settle(qtbot, widget)


def test_end_to_end_teacher_correction_student_export(
    make_napari_viewer, qtbot, save_screenshot, fresh_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    viewer, widget = _open(make_napari_viewer, qtbot)
    assert widget.session.project.root == fresh_project
    assert fresh_project.name in widget.result_note.text()
    assert not widget.train_student_button.isEnabled() and not widget.export_button.isEnabled()

    # Without both kinds of bags training is sure to fail: greyed, and its tooltip says why.
    assert not widget.train_teacher_button.isEnabled()
    assert "paint or import both positive and negative regions first" in widget.train_teacher_button.toolTip()
    _paint_weak_labels(viewer, widget)
    settle(qtbot, widget)  # the stroke's tiles are counted once control returns to Qt
    assert widget.train_teacher_button.isEnabled() and "Disabled" not in widget.train_teacher_button.toolTip()
    pos, neg = widget.session.bag_counts()
    assert pos > 0 and neg > 0
    assert f"{pos}</b> positive" in widget.bag_note.text()
    save_screenshot(viewer.screenshot(canvas_only=False, flash=False), "weak-labels")

    # Teacher.
    inserted: list[str] = []
    viewer.layers.events.inserted.connect(lambda e: inserted.append(e.value.name))
    widget.train_teacher_button.click()
    assert widget.training.cancel_button.isEnabled() and not widget.train_teacher_button.isEnabled()
    previews: list[MapPreview] = []
    widget.training.worker.yielded.connect(
        lambda e: previews.append(e) if isinstance(e, MapPreview) else None
    )
    # Honest progress: before the first batch the bar is determinate and says what is read.
    reading: list[tuple[str, int]] = []
    widget.training.worker.yielded.connect(  # after the panel's own slot: what the user sees then
        lambda e: (
            reading.append((widget.training.status.text(), widget.training.progress.maximum()))
            if isinstance(e, ReadingTiles)
            else None
        )
    )
    _wait_done(qtbot, viewer, widget, f"{PREFIX} teacher mask")
    assert reading and reading[0][0].startswith("teacher: reading 0/") and reading[0][1] > 0, reading[:2]
    work = widget.session.work
    assert any(0 < p.rows_done < work.shape[0] for p in previews)  # the map filled band by band
    assert f"{PREFIX} preview" in inserted  # ... and was shown while it did
    assert f"{PREFIX} preview" not in viewer.layers  # the preview gives way to the real layers
    teacher_mask = viewer.layers[f"{PREFIX} teacher mask"]
    widget.map_view.combo.setCurrentText("teacher probability")
    teacher_prob = viewer.layers[f"{PREFIX} map"]
    assert isinstance(teacher_mask, Labels) and isinstance(teacher_prob, Image)
    assert np.array_equal(teacher_prob.data, widget.session.probabilities["teacher"])
    assert teacher_mask.editable and not teacher_mask.multiscale
    assert teacher_mask.data.shape == work.shape
    slide_scale = viewer.layers[PREFIX].scale
    assert tuple(teacher_mask.scale) == pytest.approx(tuple(np.asarray(slide_scale) * work.downsample))
    assert widget.training.loss_plot.values and "teacher done" in widget.training.status.text()
    assert (fresh_project / "checkpoints" / "teacher.pt").exists()
    assert widget.train_student_button.isEnabled() and widget.export_button.isEnabled()

    # A hand correction: paint tumour in one place, erase in another.
    teacher_mask.brush_size = 6
    data = np.asarray(teacher_mask.data)
    zeros, ones = np.argwhere(data[20:-20, 20:-20] == 0) + 20, np.argwhere(data[20:-20, 20:-20] == 1) + 20
    tumour_spot = tuple(int(v) for v in zeros[len(zeros) // 2])
    teacher_mask.paint(tumour_spot, 1)
    qtbot.wait(50)  # the widget re-reads the mask once napari has written the stroke
    hard = widget.session.hard
    assert hard[tumour_spot] == 1
    if len(ones):
        background_spot = tuple(int(v) for v in ones[len(ones) // 2])
        teacher_mask.paint(background_spot, 0)
        qtbot.wait(50)
        hard = widget.session.hard
        assert hard[background_spot] == 0
    changed_to_zero = (hard == 0).sum()
    assert (hard != NO_OPINION).sum() > 0
    assert f"{widget.session.corrected_pixels} corrected pixels" in widget.review_note.text()
    save_screenshot(viewer.screenshot(canvas_only=False, flash=False), "teacher-corrected")

    # The correction reaches the student's training targets.
    weak = np.asarray(viewer.layers[f"{PREFIX} weak labels"].data)
    with open_slide(viewer.layers[PREFIX].metadata["milkd_slide"]["path"]) as source:
        bags, _, _index = slide_bags(source, work, weak, hard_labels=hard)
    assert bags.hard_labels is not None and (bags.hard_labels == 1).any()
    assert (bags.hard_labels != NO_OPINION).sum() <= (hard != NO_OPINION).sum() + changed_to_zero

    # Student, with disagreement and review.
    widget.train_student_button.click()
    _wait_done(qtbot, viewer, widget, f"{PREFIX} student mask")
    student_mask = viewer.layers[f"{PREFIX} student mask"]
    assert student_mask.editable and student_mask.data[tumour_spot] == 1  # the correction survives
    assert teacher_prob.visible and teacher_prob.colormap.name == "magma"  # still the chosen map
    widget.map_view.combo.setCurrentText("disagreement")
    assert np.allclose(viewer.layers[f"{PREFIX} map"].data, widget.session.disagreement())
    camera = getattr(viewer, "scene", viewer).camera
    center_before = tuple(camera.center)
    widget.review_button.click()
    first = widget.review_note.text()
    assert first.startswith("tile ") and " — 1 of " in first and tuple(camera.center) != center_before
    widget.review_button.click()
    second = widget.review_note.text()
    assert (
        "2 of" in second and second.split(":")[0] != first.split(":")[0]
    )  # a reviewed tile is not proposed again
    save_screenshot(viewer.screenshot(canvas_only=False, flash=False), "student-review")

    # Export (into the project's exports folder, as the dialog proposes) and re-import.
    _export(qtbot, widget, monkeypatch, "student", "QuPath GeoJSON")
    out = fresh_project / "exports" / "student.geojson"
    collection = json.loads(out.read_text())
    assert collection["type"] == "FeatureCollection" and collection["features"]
    feature = collection["features"][0]
    assert feature["properties"]["objectType"] == "annotation"
    assert feature["properties"]["classification"]["name"] == "Tumor"
    back = read_geojson(out, slide_shape_l0=(3072, 4608))
    mask = np.asarray(student_mask.data) > 0
    redrawn = polygons_to_mask([a.geometry for a in back.annotations], mask.shape, work.downsample)
    boundary = sum(p.length for p in mask_to_polygons(mask, work.downsample)) / work.downsample
    assert abs(int(redrawn.sum()) - int(mask.sum())) <= boundary  # within a pixel per boundary pixel
    _export(qtbot, widget, monkeypatch, "teacher", "ASAP XML")
    assert (fresh_project / "exports" / "teacher.xml").exists()
    _export(qtbot, widget, monkeypatch, "student", "OME-Zarr labels")
    assert (fresh_project / "exports" / "student.zarr" / "zarr.json").exists()

    # Next round: the student becomes the teacher.
    widget.next_round_button.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=240_000)
    assert "student done" in widget.training.status.text()
    assert json.loads((fresh_project / "project.json").read_text())["round"] == 1

    # Everything was autosaved.
    qtbot.wait(700)
    project = Project(fresh_project)
    assert np.array_equal(project.load_array("corrections")[0], widget.session.hard)
    assert np.array_equal(project.load_array("weak_labels")[0], weak)
    assert project.load_array("student_probability") is not None


def test_cancel_stops_within_a_batch_and_resume(make_napari_viewer, qtbot, fresh_project: Path) -> None:
    viewer, widget = _open(make_napari_viewer, qtbot, show=False)
    _paint_weak_labels(viewer, widget)
    widget.training.teacher_epochs.value = 200
    widget.training.batch_size.value = 4
    epochs: list[EpochEnd] = []
    widget.train_teacher_button.click()
    widget.training.worker.yielded.connect(lambda e: epochs.append(e) if isinstance(e, EpochEnd) else None)
    qtbot.waitUntil(lambda: len(epochs) >= 1, timeout=120_000)
    widget.training.cancel_button.click()
    qtbot.waitUntil(lambda: widget.training.worker is None, timeout=30_000)
    assert "cancelled" in widget.training.status.text()
    assert widget.train_teacher_button.isEnabled() and not widget.training.cancel_button.isEnabled()
    assert len(epochs) < 200
    state = load_checkpoint(fresh_project / "checkpoints" / "teacher.pt")
    assert state["epoch"] >= 1 and not state.get("complete")
    assert f"{PREFIX} teacher mask" not in viewer.layers  # no half-made mask
    assert f"{PREFIX} preview" not in viewer.layers


def test_reopening_the_slide_restores_the_session(make_napari_viewer, qtbot, fresh_project: Path) -> None:
    """Edits made just before napari closes are saved, and Prepare slide brings them back."""
    viewer, widget = _open(make_napari_viewer, qtbot, show=True)
    painted = _paint_weak_labels(viewer, widget)
    widget.session.hard[5:9, 5:9] = 1
    # The last stroke's autosave (0.6 s) is still pending when the viewer closes.
    saved = Project(fresh_project).load_array("weak_labels")
    assert saved is None or not np.array_equal(saved[0], painted)
    viewer.close()  # hiding the dock writes the pending edits

    before = len(notification_manager.records)
    viewer2, _widget2 = _open(make_napari_viewer, qtbot, show=False)
    assert np.array_equal(np.asarray(viewer2.layers[f"{PREFIX} weak labels"].data), painted)
    assert any("restored weak labels, 16 corrected pixels" in m for m in _messages(before)), _messages(before)


def test_an_autosave_in_flight_when_the_viewer_closes_loses_nothing(
    make_napari_viewer, qtbot, fresh_project: Path
) -> None:
    """The autosave writes in a worker; closing the viewer while one is queued writes the newest edits
    (a synchronous save that supersedes it) instead of losing them to a refused late write."""
    viewer, widget = _open(make_napari_viewer, qtbot, show=True)
    painted = _paint_weak_labels(viewer, widget)
    widget._autosave.stop()
    widget._autosave_in_background()  # the timer fired: a worker will write
    assert widget._saves_in_flight == 1
    before = len(notification_manager.records)
    viewer.close()  # at once, before that worker has run
    saved = Project(fresh_project).load_array("weak_labels")
    assert saved is not None and np.array_equal(saved[0], painted)
    qtbot.wait(500)  # the queued worker runs now and writes nothing over it (no error either)
    assert not any("could not save" in m for m in _messages(before)), _messages(before)
    saved = Project(fresh_project).load_array("weak_labels")
    assert saved is not None and np.array_equal(saved[0], painted)


def test_reopening_a_project_prepared_at_another_resolution(
    make_napari_viewer, qtbot, fresh_project: Path
) -> None:
    """The form comes back at the project's saved working resolution, and so do the weak labels."""
    viewer, widget = _open(make_napari_viewer, qtbot, show=False, work_mpp=2.0)
    painted = _paint_weak_labels(viewer, widget)
    saved = fresh_project / "arrays" / "weak_labels.npz"
    qtbot.waitUntil(saved.exists, timeout=5_000)  # autosaved
    viewer.close()

    before = len(notification_manager.records)
    viewer2, widget2 = _open(make_napari_viewer, qtbot, show=False)  # the form says 1 µm/px
    assert widget2.target_spin.value() == pytest.approx(2.0)
    assert any("working at 2 µm/px" in m for m in _messages(before)), _messages(before)
    weak = np.asarray(viewer2.layers[f"{PREFIX} weak labels"].data)
    assert weak.shape == painted.shape and (weak > 0).any()
    assert np.array_equal(weak, painted)
    assert "at 2 µm/px" in widget2.result_note.text()
