"""Importing a QuPath GeoJSON in the widget: the class table comes first (every class with its count and
the label it will get), nothing is painted until OK, the labels chosen there decide, unknown classes
are never tumour-free, and the notification names the classes and the skipped objects (issue #12)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from napari.utils.notifications import notification_manager
from settle import settle

from napari_milkd._widget import SlideWidget, class_map_dialog, slide_widget
from napari_milkd.core.annotations.io import annotation_report, read_annotations
from napari_milkd.core.session.weak_labels import REGION_FREE, REGION_TUMOUR
from qupath_files import qupath_export

WEAK = "milkd synthetic sample weak labels"
#: Level-0 squares (x0, y0) of side SIDE, one per object; the sample slide is 4608 × 3072.
SIDE = 400
SQUARES = {
    "Tumor": (200, 200),
    "Stroma": (1000, 200),
    "Ignore*": (1800, 200),
    "Foo": (2600, 200),
    "detection": (200, 1200),
    "cell": (1000, 1200),
}


def _feature(x0: int, y0: int, classification: dict, object_type: str = "annotation") -> dict:
    ring = [[x0, y0], [x0 + SIDE, y0], [x0 + SIDE, y0 + SIDE], [x0, y0 + SIDE], [x0, y0]]
    return {
        "type": "Feature",
        "id": f"{object_type}-{x0}-{y0}",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"objectType": object_type, "classification": classification},
    }


def _qupath_file(path: Path) -> Path:
    """A QuPath 0.4-style export (squares big enough to see at the working resolution): annotations
    of a known, a derived, an ``Ignore*`` and an unknown class, plus a detection and a cell (of class
    Tumor, to show they are skipped, not painted)."""
    features = [
        _feature(*SQUARES["Tumor"], {"name": "Tumor", "color": [200, 0, 0]}),
        _feature(*SQUARES["Stroma"], {"names": ["Stroma", "Positive"], "color": [150, 200, 150]}),
        _feature(*SQUARES["Ignore*"], {"name": "Ignore*", "color": [180, 180, 180]}),
        _feature(*SQUARES["Foo"], {"name": "Foo", "color": [0, 0, 200]}),
        _feature(*SQUARES["detection"], {"name": "Tumor"}, "detection"),
        _feature(*SQUARES["cell"], {"name": "Tumor"}, "cell"),
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def _open(make_napari_viewer, qtbot) -> tuple[object, SlideWidget]:
    viewer = make_napari_viewer(show=False)
    viewer.open_sample("napari-milkd", "sample_slide")
    _, widget = viewer.window.add_plugin_dock_widget("napari-milkd", "Slide masks")
    widget.prepare_button.click()
    qtbot.waitUntil(lambda: WEAK in viewer.layers and widget.training.worker is None, timeout=60_000)
    return viewer, widget


def _painted(viewer, widget: SlideWidget) -> dict[str, int]:
    """The weak-label value at the centre of each object's square."""
    data = np.asarray(viewer.layers[WEAK].data)
    ds = widget.session.work.downsample
    return {
        name: int(data[int((y0 + SIDE / 2) / ds), int((x0 + SIDE / 2) / ds)])
        for name, (x0, y0) in SQUARES.items()
    }


def _messages(since: int) -> list[str]:
    return [str(n.message) for n in notification_manager.records[since:]]


def test_the_class_table_comes_first_and_decides_what_is_painted(
    make_napari_viewer, qtbot, tmp_path: Path, fresh_project: Path
) -> None:
    viewer, widget = _open(make_napari_viewer, qtbot)
    path = _qupath_file(tmp_path / "qupath.geojson")
    assert not np.asarray(viewer.layers[WEAK].data).any()

    # The table: every class with its count and the default label; the skipped objects named.
    dialog = widget.review_import(path)
    assert dialog is not None and dialog.isModal()
    assert dialog.rows() == [
        ("Tumor", 1, "positive"),
        ("Stroma", 1, "negative"),  # derived class "Stroma: Positive" → its base
        ("Ignore*", 1, "ignored"),
        ("Foo", 1, "ignored"),  # unknown: ignored, never tumour-free
    ]
    assert dialog.table.rowCount() == 4
    assert dialog.table.item(3, 0).text() == "Foo (unknown)"
    assert dialog.table.item(0, 1).text() == "1"
    assert dialog.combos["Stroma"].currentText() == "tumour-free"
    assert dialog.combos["Foo"].currentText() == "ignored (not painted)"
    assert dialog.skipped_note.text() == "Skipped (not regions): 1 detection, 1 cell"
    assert not np.asarray(viewer.layers[WEAK].data).any()  # nothing painted before OK

    # Cancel paints nothing.
    before = len(notification_manager.records)
    dialog.reject()
    assert not np.asarray(viewer.layers[WEAK].data).any()
    assert not any("imported" in m for m in _messages(before))

    # OK with Foo → contains tumour paints with that choice.
    dialog = widget.review_import(path)
    dialog.set_label("Foo", "positive")
    assert dialog.class_map() == {"Foo": "positive"}  # what differs from the defaults
    before = len(notification_manager.records)
    dialog.accept()
    settle(qtbot, widget)  # read and rasterised in a worker, painted when it is done
    assert _painted(viewer, widget) == {
        "Tumor": REGION_TUMOUR,
        "Stroma": REGION_FREE,
        "Ignore*": 0,
        "Foo": REGION_TUMOUR,
        "detection": 0,
        "cell": 0,
    }
    assert np.array_equal(widget.session.weak, viewer.layers[WEAK].data)
    messages = _messages(before)
    done = [m for m in messages if "imported 4 regions from qupath.geojson" in m]
    assert done, messages
    for part in ("Tumor ×1 → contains tumour", "Foo ×1 → contains tumour", "Stroma ×1 → tumour-free"):
        assert part in done[0]
    assert "skipped 1 detection, 1 cell" in done[0]
    assert not any("unknown class" in m for m in messages)  # Foo was mapped


def test_import_button_with_the_default_labels_ignores_the_unknown_class_and_says_so(
    make_napari_viewer, qtbot, tmp_path: Path, fresh_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    viewer, widget = _open(make_napari_viewer, qtbot)
    path = _qupath_file(tmp_path / "qupath.geojson")
    shown: list[list[tuple[str, int, str]]] = []

    def press_ok(dialog: class_map_dialog.ClassMapDialog) -> int:
        shown.append(dialog.rows())
        assert not np.asarray(viewer.layers[WEAK].data).any()  # the table comes before any painting
        dialog.accept()
        return 1

    starts: list[str] = []

    def choose(parent, title, start, *rest):
        starts.append(start)
        return str(path), ""

    monkeypatch.setattr(slide_widget.QFileDialog, "getOpenFileName", choose)
    monkeypatch.setattr(class_map_dialog.ClassMapDialog, "exec", press_ok)
    before = len(notification_manager.records)
    widget.import_button.click()
    settle(qtbot, widget)
    assert shown and ("Foo", 1, "ignored") in shown[0]
    assert starts == [str(widget.session.project.root)]  # the first dialog opens in the project's folder
    assert _painted(viewer, widget) == {
        "Tumor": REGION_TUMOUR,
        "Stroma": REGION_FREE,
        "Ignore*": 0,
        "Foo": 0,
        "detection": 0,
        "cell": 0,
    }
    messages = _messages(before)
    assert any("unknown class ignored" in m and "'Foo' ×1" in m for m in messages), messages
    assert any("Foo ×1 → ignored" in m and "skipped 1 detection, 1 cell" in m for m in messages), messages

    # A file that cannot be read: a notification, no table, nothing painted.
    (tmp_path / "bad.geojson").write_text("{not json")
    path = tmp_path / "bad.geojson"
    shown.clear()
    before = len(notification_manager.records)
    painted = np.asarray(viewer.layers[WEAK].data).copy()
    widget.import_button.click()
    settle(qtbot, widget)  # the file is read in a worker
    assert starts[-1] == str(tmp_path)  # ... the next where the last import came from
    assert not shown and any("not JSON" in m for m in _messages(before)), _messages(before)
    assert np.array_equal(viewer.layers[WEAK].data, painted)


def test_the_table_is_the_one_milkd_annotations_prints(
    make_napari_viewer, qtbot, tmp_path: Path, fresh_project: Path
) -> None:
    viewer, widget = _open(make_napari_viewer, qtbot)
    path = qupath_export(tmp_path / "export.geojson")
    dialog = widget.review_import(path)
    assert dialog is not None
    expected = annotation_report(read_annotations(path)).to_dict()  # ``milkd annotations --json``
    assert dialog.rows() == [(c["name"], c["count"], c["label"]) for c in expected["classes"]]
    assert ("Necrosis", 1, "ignored") in dialog.rows() and ("Non-Tumor", 1, "negative") in dialog.rows()
    assert dialog.skipped_note.text() == "Skipped (not regions): 3 detection, 4 cell, 1 tile"
    assert not dialog.combos["(unclassified)"].isEnabled()  # a class map cannot name "no class"
    assert dialog.class_map() == {}  # nothing changed: the defaults decide
    dialog.reject()
    assert not np.asarray(viewer.layers[WEAK].data).any()


def test_import_asks_where_the_regions_go_and_can_be_undone(
    make_napari_viewer, qtbot, tmp_path: Path, fresh_project: Path
) -> None:
    """Issue #16: an import is undoable (the tumour-free paint it covered comes back), can go into the
    corrections once a mask exists, or into a Shapes layer that paints nothing."""
    from napari.layers import Shapes

    from napari_milkd.core.engine.config import TrainResult
    from napari_milkd.core.session.jobs import StageOutput

    viewer, widget = _open(make_napari_viewer, qtbot)
    path = _qupath_file(tmp_path / "qupath.geojson")
    assert not widget.undo_import_button.isEnabled()
    assert "nothing imported to undo" in widget.undo_import_button.toolTip()
    widget.all_free.click()  # the pathologist's tumour-free paint, which the import will cover
    painted = np.asarray(viewer.layers[WEAK].data).copy()
    pos_neg = widget.session.bag_counts()

    dialog = widget.review_import(path)
    assert [dialog.destination_combo.itemData(i) for i in range(dialog.destination_combo.count())] == [
        "weak",
        "shapes",
    ]  # no mask yet: corrections are not offered
    dialog.accept()
    settle(qtbot, widget)
    assert _painted(viewer, widget)["Tumor"] == REGION_TUMOUR
    assert widget.undo_import_button.isEnabled()
    widget.undo_import_button.click()
    assert np.array_equal(np.asarray(viewer.layers[WEAK].data), painted)
    assert np.array_equal(widget.session.weak, painted) and widget.session.bag_counts() == pos_neg
    assert not widget.undo_import_button.isEnabled()

    # With a teacher mask, the regions can become corrections (ground truth in the mask), undoably.
    work = widget.session.work
    result = TrainResult(stage="teacher", epochs=1, best_epoch=1, best_score=None, checkpoint=None)
    widget.session.accept(StageOutput("teacher", np.zeros(work.shape, np.float32), result, 1, 1))
    widget.show_stage("teacher")
    mask_layer = viewer.layers["milkd synthetic sample teacher mask"]
    dialog = widget.review_import(path)
    dialog.set_destination("corrections")
    dialog.accept()
    settle(qtbot, widget)
    x0, y0 = SQUARES["Tumor"]
    centre = int((y0 + SIDE / 2) / work.downsample), int((x0 + SIDE / 2) / work.downsample)
    assert widget.session.hard[centre] == 1 and mask_layer.data[centre] == 1
    assert np.array_equal(np.asarray(viewer.layers[WEAK].data), painted)  # weak labels untouched
    widget.undo_import_button.click()
    assert (
        widget.session.corrected_pixels == 0
        and viewer.layers["milkd synthetic sample teacher mask"].data[centre] == 0
    )

    # Into a Shapes layer: it opens on the slide, nothing is painted.
    dialog = widget.review_import(path)
    dialog.set_destination("shapes")
    dialog.accept()
    settle(qtbot, widget)
    shapes = [layer for layer in viewer.layers if isinstance(layer, Shapes) and "GeoJSON" in layer.name]
    assert len(shapes) == 1 and len(shapes[0].data) >= 4
    assert tuple(shapes[0].scale) == tuple(viewer.layers["milkd synthetic sample"].scale)  # on the slide
    assert np.array_equal(np.asarray(viewer.layers[WEAK].data), painted)
