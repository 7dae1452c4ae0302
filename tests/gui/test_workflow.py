"""The whole workflow in a real viewer, driven like a user, with a tiny model on CPU:
sample slide → weak labels → teacher → hand correction → student → review → export → re-import;
plus Cancel during training and restoring a saved session."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from napari.layers import Image, Labels

from napari_milkd._widget import SlideWidget
from napari_milkd.core.annotations import mask_to_polygons, polygons_to_mask, read_geojson
from napari_milkd.core.engine.checkpoint import load_checkpoint
from napari_milkd.core.engine.config import EpochEnd
from napari_milkd.core.session.jobs import MapPreview
from napari_milkd.core.session.labels import NO_OPINION, slide_bags
from napari_milkd.core.slides.geometry import tissue_map
from napari_milkd.core.slides.sample import coarse_regions
from napari_milkd.core.slides.slide import open_slide

PREFIX = "milkd sample slide"


def _open(make_napari_viewer, qtbot, *, show: bool = True) -> tuple[object, SlideWidget]:
    viewer = make_napari_viewer(show=show)
    viewer.window._qt_window.resize(1400, 950)
    viewer.open_sample("napari-milkd", "sample_slide")
    _, widget = viewer.window.add_plugin_dock_widget("napari-milkd", "milkd")
    widget.backbone_combo.setCurrentText("tiny")
    widget.device_combo.setCurrentIndex(widget.device_combo.findData("cpu"))
    widget.teacher_epochs.setValue(1)
    widget.student_epochs.setValue(2)
    widget.prepare_button.click()
    qtbot.waitUntil(lambda: widget.work is not None and widget.worker is None, timeout=60_000)
    return viewer, widget


def _paint_weak_labels(widget: SlideWidget) -> None:
    """What a pathologist does: rough "contains tumour" around the tumour, "tumour-free" elsewhere."""
    layer = widget.weak_layer()
    regions = coarse_regions(widget.work.downsample, widget.work.shape, tissue_map(widget.work))
    widget.start_painting(1)
    assert layer.mode == "paint" and layer.selected_label == 1
    layer.data = regions
    layer.paint((10, 10), 2)  # and one brush stroke through the paint tool
    assert layer.data[10, 10] == 2


def _wait_done(qtbot, widget: SlideWidget, what: str, timeout: int = 240_000) -> None:
    qtbot.waitUntil(lambda: widget.worker is None and widget._layer(what) is not None, timeout=timeout)


def test_end_to_end_teacher_correction_student_export(
    make_napari_viewer, qtbot, tmp_path: Path, save_screenshot, fresh_project: Path
) -> None:
    viewer, widget = _open(make_napari_viewer, qtbot)
    assert widget.project is not None and widget.project.root == fresh_project

    # Refuses to train without both kinds of bags.
    widget.train_teacher_button.click()
    assert widget.worker is None
    _paint_weak_labels(widget)
    pos, neg = widget.bag_counts()
    assert pos > 0 and neg > 0
    assert f"{pos}</b> positive" in widget.bag_note.text()
    save_screenshot(viewer.screenshot(canvas_only=False, flash=False), "weak-labels")

    # Teacher.
    widget.train_teacher_button.click()
    assert widget.cancel_button.isEnabled() and not widget.train_teacher_button.isEnabled()
    previews: list[MapPreview] = []
    widget.worker.yielded.connect(lambda e: previews.append(e) if isinstance(e, MapPreview) else None)
    _wait_done(qtbot, widget, "teacher mask")
    assert any(0 < p.rows_done < widget.work.shape[0] for p in previews)  # the map filled band by band
    assert widget._layer("preview") is None  # the preview gives way to the real layers
    teacher_mask = viewer.layers[f"{PREFIX} teacher mask"]
    teacher_prob = viewer.layers[f"{PREFIX} teacher probability"]
    assert isinstance(teacher_mask, Labels) and isinstance(teacher_prob, Image)
    assert teacher_mask.editable and not teacher_mask.multiscale
    assert teacher_mask.data.shape == widget.work.shape
    slide_scale = viewer.layers[PREFIX].scale
    assert tuple(teacher_mask.scale) == pytest.approx(tuple(np.asarray(slide_scale) * widget.work.downsample))
    assert widget.training.losses and "teacher done" in widget.status.text()
    assert (fresh_project / "checkpoints" / "teacher.pt").exists()

    # A hand correction: paint tumour in one place, erase in another.
    teacher_mask.brush_size = 6
    data = np.asarray(teacher_mask.data)
    zeros, ones = np.argwhere(data[20:-20, 20:-20] == 0) + 20, np.argwhere(data[20:-20, 20:-20] == 1) + 20
    tumour_spot = tuple(int(v) for v in zeros[len(zeros) // 2])
    teacher_mask.paint(tumour_spot, 1)
    qtbot.wait(50)  # the widget re-reads the mask once napari has written the stroke
    hard = widget.hard
    assert hard[tumour_spot] == 1
    if len(ones):
        background_spot = tuple(int(v) for v in ones[len(ones) // 2])
        teacher_mask.paint(background_spot, 0)
        qtbot.wait(50)
        hard = widget.hard
        assert hard[background_spot] == 0
    changed_to_zero = (hard == 0).sum()
    assert (hard != NO_OPINION).sum() > 0
    assert "corrected pixels" in widget.review_note.text()
    save_screenshot(viewer.screenshot(canvas_only=False, flash=False), "teacher-corrected")

    # The correction reaches the student's training targets.
    with open_slide(viewer.layers[PREFIX].metadata["milkd_slide"]["path"]) as source:
        bags, _, _index = slide_bags(
            source, widget.work, np.asarray(widget.weak_layer().data), hard_labels=hard
        )
    assert bags.hard_labels is not None and (bags.hard_labels == 1).any()
    assert (bags.hard_labels != NO_OPINION).sum() <= (hard != NO_OPINION).sum() + changed_to_zero

    # Student, with disagreement and review.
    widget.train_student_button.click()
    _wait_done(qtbot, widget, "student mask")
    student_mask = viewer.layers[f"{PREFIX} student mask"]
    assert student_mask.editable and student_mask.data[tumour_spot] == 1  # the correction survives
    assert f"{PREFIX} disagreement" in viewer.layers
    camera = getattr(viewer, "scene", viewer).camera
    center_before = tuple(camera.center)
    tile = widget.next_region()
    assert tile is not None and tuple(camera.center) != center_before
    assert widget.next_region() != tile  # a reviewed tile is not proposed again
    save_screenshot(viewer.screenshot(canvas_only=False, flash=False), "student-review")

    # Export and re-import.
    out = widget.export("student", "geojson", tmp_path / "student.geojson")
    collection = json.loads(out.read_text())
    assert collection["type"] == "FeatureCollection" and collection["features"]
    feature = collection["features"][0]
    assert feature["properties"]["objectType"] == "annotation"
    assert feature["properties"]["classification"]["name"] == "Tumor"
    back = read_geojson(out, slide_shape_l0=(3072, 4608))
    mask = np.asarray(student_mask.data) > 0
    redrawn = polygons_to_mask([a.geometry for a in back.annotations], mask.shape, widget.work.downsample)
    boundary = sum(p.length for p in mask_to_polygons(mask, widget.work.downsample)) / widget.work.downsample
    assert abs(int(redrawn.sum()) - int(mask.sum())) <= boundary  # within a pixel per boundary pixel
    assert widget.export("teacher", "asap", tmp_path / "teacher.xml").exists()
    assert (widget.export("student", "ome-zarr", tmp_path / "student.zarr") / "zarr.json").exists()

    # Next round: the student becomes the teacher.
    widget.next_round_button.click()
    _wait_done(qtbot, widget, "student mask")
    qtbot.waitUntil(lambda: widget.worker is None, timeout=240_000)
    assert widget.round == 1 and "student done" in widget.status.text()

    # Everything was autosaved.
    widget.save_session()
    saved = widget.project.load_array("corrections")
    assert saved is not None and np.array_equal(saved[0], widget.hard)
    assert widget.project.load_array("student_probability") is not None


def test_cancel_stops_within_a_batch_and_resume(make_napari_viewer, qtbot, fresh_project: Path) -> None:
    _viewer, widget = _open(make_napari_viewer, qtbot, show=False)
    _paint_weak_labels(widget)
    widget.teacher_epochs.setValue(200)
    widget.batch_spin.setValue(4)
    epochs: list[EpochEnd] = []
    widget.train_teacher_button.click()
    widget.worker.yielded.connect(lambda e: epochs.append(e) if isinstance(e, EpochEnd) else None)
    qtbot.waitUntil(lambda: len(epochs) >= 1, timeout=120_000)
    widget.cancel_button.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=30_000)
    assert "cancelled" in widget.status.text()
    assert widget.train_teacher_button.isEnabled() and not widget.cancel_button.isEnabled()
    assert len(epochs) < 200
    state = load_checkpoint(fresh_project / "checkpoints" / "teacher.pt")
    assert state["epoch"] >= 1 and not state.get("complete")
    assert widget._layer("teacher mask") is None  # no half-made mask


def test_reopening_the_slide_restores_the_session(make_napari_viewer, qtbot, fresh_project: Path) -> None:
    """Edits made just before napari closes are saved, and Prepare slide brings them back."""
    viewer, widget = _open(make_napari_viewer, qtbot, show=True)
    _paint_weak_labels(widget)
    widget.hard[5:9, 5:9] = 1
    widget._on_weak_paint()  # an edit: its autosave is pending (0.6 s) when the viewer closes
    assert widget._autosave.isActive()
    painted = np.asarray(widget.weak_layer().data).copy()
    viewer.close()  # hiding the dock writes the pending edits

    _viewer2, widget2 = _open(make_napari_viewer, qtbot, show=False)
    assert np.array_equal(np.asarray(widget2.weak_layer().data), painted)
    assert (widget2.hard[5:9, 5:9] == 1).all()
