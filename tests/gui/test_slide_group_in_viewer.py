"""Two slides in one viewer, one model: both are prepared and labelled (one imported from QuPath, one
painted), "Train on all prepared slides" trains one teacher (and one student) on both, and each slide
gets its masks, reviewed slide by slide through the slide list. Tiny backbone, CPU."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from settle import settle

from napari_milkd._widget import SlideWidget
from napari_milkd._widget.slide_layers import slide_layers
from napari_milkd.core.session.slide_group import MANIFEST_NAME
from napari_milkd.core.session.weak_labels import REGION_FREE, REGION_TUMOUR
from slide_images import two_tone_slide

SLIDE_MPP, WORK_MPP, TILE = 0.5, 1.0, 32
H, W, SPLIT = 512, 768, 384


def _two_tone(path: Path, seed: int) -> Path:
    """Purple ("tumour") left half, pink right half of tissue on white glass."""
    return two_tone_slide(path, seed, SLIDE_MPP)


def _qupath_regions(path: Path) -> Path:
    """QuPath rectangles: "Tumor" over the purple half, "Stroma" over the pink half."""

    def feature(x0: int, x1: int, name: str) -> dict:
        ring = [[x0, 40], [x1, 40], [x1, H - 40], [x0, H - 40], [x0, 40]]
        return {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"objectType": "annotation", "classification": {"name": name}},
        }

    features = [feature(40, SPLIT - 8, "Tumor"), feature(SPLIT + 8, W - 40, "Stroma")]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def _choose(qtbot, widget: SlideWidget, name: str) -> None:
    """Choose a slide in the dock's slide list (as a user clicks its row)."""
    rows = widget.slide_list.list
    row = next(i for i in range(rows.count()) if rows.item(i).text().startswith(f"{name} — "))
    rows.setCurrentRow(row)
    qtbot.waitUntil(lambda: widget.layer_combo.currentText() == name, timeout=5_000)


def _rows(widget: SlideWidget) -> list[str]:
    rows = widget.slide_list.list
    return [rows.item(i).text() for i in range(rows.count())]


def _wait_layers(qtbot, viewer, widget: SlideWidget, names: list[str], timeout: int = 180_000) -> None:
    qtbot.waitUntil(lambda: not widget.busy and all(n in viewer.layers for n in names), timeout=timeout)


def test_train_teacher_and_student_on_two_slides(make_napari_viewer, qtbot, tmp_path: Path) -> None:
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1400, 950)
    paths = [_two_tone(tmp_path / "slide_a.tiff", 0), _two_tone(tmp_path / "slide_b.tiff", 1)]
    for path in paths:
        viewer.open(str(path), plugin="napari-milkd")
    _, widget = viewer.window.add_plugin_dock_widget("napari-milkd", "Slide masks")
    widget.training.backbone_combo.setCurrentText("tiny")
    widget.training.device_combo.setCurrentIndex(widget.training.device_combo.findData("cpu"))
    widget.training.teacher_epochs.value = 1
    widget.training.student_epochs.value = 1
    widget.target_spin.setValue(WORK_MPP)
    widget.tile_spin.setValue(TILE)
    names = [layer.name for layer in slide_layers(viewer)]
    assert len(names) == 2
    assert [r.split(" — ")[1] for r in _rows(widget)] == ["not prepared", "not prepared"]
    assert not widget.slide_list.train_all.isEnabled()  # nothing prepared yet: greyed, and says why

    # Prepare both: preparing the second keeps the first's session (and its project's lock).
    for k, name in enumerate(names):
        _choose(qtbot, widget, name)
        if k:  # a slide not prepared yet: the buttons work on it, not on the slide prepared before
            assert (
                widget.session is None and "prepare the slide first" in widget.train_teacher_button.toolTip()
            )
        widget.prepare_button.click()
        _wait_layers(qtbot, viewer, widget, [f"{name} weak labels"], timeout=60_000)
    sessions = widget.sessions()
    assert set(sessions) == {str(p) for p in paths}
    assert all(s.project.lock_holder() is not None for _, s in sessions.values())

    # Slide A: regions imported from QuPath; slide B: painted.
    _choose(qtbot, widget, names[0])
    assert widget.session.slide_path == str(paths[0])
    widget.import_regions(_qupath_regions(tmp_path / "a.geojson"))
    settle(qtbot, widget)
    _choose(qtbot, widget, names[1])
    assert widget.session.slide_path == str(paths[1])
    session_b = widget.session
    painted = np.zeros(session_b.work.shape, np.uint8)
    painted[:, : painted.shape[1] // 2] = REGION_TUMOUR
    painted[:, painted.shape[1] // 2 :] = REGION_FREE
    painted[~session_b.tissue] = 0
    viewer.layers[f"{names[1]} weak labels"].data = painted
    settle(qtbot, widget)
    for _, session in widget.sessions().values():
        positive, negative = session.bags
        assert positive > 0 and negative > 0
    assert all(" positive / " in r for r in _rows(widget))

    # Train teacher on both.
    assert widget.slide_list.train_all.isEnabled()
    widget.slide_list.train_all.setChecked(True)
    widget.train_teacher_button.click()
    assert widget.busy and not widget.slide_list.list.isEnabled()  # no switching while it trains
    _wait_layers(qtbot, viewer, widget, [f"{n} teacher mask" for n in names])
    assert "teacher done on 2 slides" in widget.training.status.text()
    for name, path in zip(names, paths, strict=True):
        session = widget.sessions()[str(path)][1]
        mask = viewer.layers[f"{name} teacher mask"]
        assert mask.data.shape == session.work.shape and session.mask("teacher") is not None
        assert session.has_model("teacher")
    [group] = list((widget.projects_root / "groups").glob("*.milkd"))
    with (group / MANIFEST_NAME).open() as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(Path(r["slide"]).name for r in rows) == ["slide_a.tiff", "slide_b.tiff"]
    assert all((group / r["annotations"]).is_file() for r in rows)
    assert (group / "checkpoints" / "teacher.pt").is_file()

    # Review slide by slide: choosing slide A makes its mask the one whose edits are corrections.
    _choose(qtbot, widget, names[0])
    session_a = widget.session
    assert session_a.slide_path == str(paths[0])
    assert widget.layers.get("teacher mask").name == f"{names[0]} teacher mask"
    layer = viewer.layers[f"{names[0]} teacher mask"]
    layer.brush_size = 4
    layer.paint((10, 10), 1)
    qtbot.wait(50)
    assert session_a.corrected_pixels > 0 and session_b.corrected_pixels == 0

    # Distil the student on both, from the group's teacher.
    widget.train_student_button.click()
    _wait_layers(qtbot, viewer, widget, [f"{n} student mask" for n in names])
    assert (group / "checkpoints" / "student.pt").is_file()
    assert all(s.mask("student") is not None for _, s in widget.sessions().values())

    # Deleting a slide's layer gives its project back; closing the viewer gives back the others'.
    projects = [s.project for _, s in widget.sessions().values()]
    assert widget.session is session_a
    viewer.layers.remove(names[1])
    qtbot.waitUntil(lambda: session_b.project.lock_holder() is None, timeout=5_000)
    assert [r.split(" — ")[0] for r in _rows(widget)] == [names[0]]
    assert not widget.slide_list.train_all.isEnabled()
    viewer.close()
    qtbot.waitUntil(lambda: all(p.lock_holder() is None for p in projects), timeout=10_000)
