"""Issue #16, no freezes on the GUI thread: *Import…* reads the annotation file's class table in a worker.
The click returns at once with the widget busy ("reading <name>…"); the class table opens on the GUI
thread when the reading is done, and OK paints as before; a file that cannot be read is one error
notification and leaves the widget idle; a table read for a slide that is no longer prepared is dropped."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from napari.utils.notifications import NotificationSeverity, notification_manager
from settle import settle
from test_import_classes import WEAK, _open

from napari_milkd._widget import SlideWidget, class_map_dialog, slide_weak, slide_widget
from napari_milkd.core.session.weak_labels import REGION_TUMOUR

#: A level-0 square (x0, y0) of side SIDE; the sample slide is 4608 × 3072.
SIDE = 400
TUMOUR = (200, 200)


def _annotation_file(path: Path) -> Path:
    """A QuPath GeoJSON with one Tumor square (big enough to see at the working resolution)."""
    x0, y0 = TUMOUR
    ring = [[x0, y0], [x0 + SIDE, y0], [x0 + SIDE, y0 + SIDE], [x0, y0 + SIDE], [x0, y0]]
    feature = {
        "type": "Feature",
        "id": "tumour",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}},
    }
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    return path


def _tumour_value(viewer, widget: SlideWidget) -> int:
    data = np.asarray(viewer.layers[WEAK].data)
    ds = widget.session.work.downsample
    x0, y0 = TUMOUR
    return int(data[int((y0 + SIDE / 2) / ds), int((x0 + SIDE / 2) / ds)])


class _Gate:
    """``read_class_report`` held in its thread until :meth:`open`; records the thread it ran in."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.event = threading.Event()
        self.threads: list[int] = []
        real = slide_weak.read_class_report

        def held(session, path):
            self.threads.append(threading.get_ident())
            assert self.event.wait(30), "the test never let the reading go on"
            return real(session, path)

        monkeypatch.setattr(slide_weak, "read_class_report", held)

    def open(self) -> None:
        self.event.set()


def _choose(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    monkeypatch.setattr(slide_widget.QFileDialog, "getOpenFileName", lambda *a, **k: (str(path), ""))


def _errors(since: int) -> list[str]:
    return [
        str(n.message)
        for n in notification_manager.records[since:]
        if n.severity == NotificationSeverity.ERROR
    ]


def test_import_reads_the_class_table_in_a_worker_then_shows_it(
    make_napari_viewer, qtbot, tmp_path: Path, fresh_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    viewer, widget = _open(make_napari_viewer, qtbot)
    path = _annotation_file(tmp_path / "tumour.geojson")
    gate = _Gate(monkeypatch)
    shown: list[tuple[list, bool, int]] = []

    def press_ok(dialog: class_map_dialog.ClassMapDialog) -> int:
        shown.append((dialog.rows(), widget.busy, threading.get_ident()))
        dialog.accept()
        return 1

    _choose(monkeypatch, path)
    monkeypatch.setattr(class_map_dialog.ClassMapDialog, "exec", press_ok)
    gui_thread = threading.get_ident()

    started = time.perf_counter()
    widget.import_button.click()
    assert time.perf_counter() - started < 2.0  # the click only starts the reading
    # The user sees the widget busy, reading the file; no table yet, nothing painted.
    assert widget.busy and widget.training.status.text() == "reading tumour.geojson…"
    assert not widget.import_button.isEnabled()
    assert not shown and _tumour_value(viewer, widget) == 0
    qtbot.waitUntil(lambda: bool(gate.threads), timeout=30_000)
    assert gate.threads[0] != gui_thread  # read in a worker
    assert widget.busy and not shown

    before = len(notification_manager.records)
    gate.open()
    settle(qtbot, widget)  # the table, then OK's import job and its painting
    assert len(shown) == 1
    rows, busy_while_shown, thread = shown[0]
    assert rows == [("Tumor", 1, "positive")]
    assert thread == gui_thread and not busy_while_shown  # the reading job had ended: OK can import
    assert _tumour_value(viewer, widget) == REGION_TUMOUR
    assert np.array_equal(widget.session.weak, viewer.layers[WEAK].data)
    messages = [str(n.message) for n in notification_manager.records[before:]]
    assert any("imported 1 regions from tumour.geojson" in m for m in messages), messages
    assert not widget.busy and widget.import_button.isEnabled()
    assert "reading" not in widget.training.status.text()


def test_a_file_that_cannot_be_read_is_one_error_and_leaves_the_widget_idle(
    make_napari_viewer, qtbot, tmp_path: Path, fresh_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    viewer, widget = _open(make_napari_viewer, qtbot)
    path = tmp_path / "bad.geojson"
    path.write_text("{not json")
    shown: list[object] = []
    _choose(monkeypatch, path)
    monkeypatch.setattr(class_map_dialog.ClassMapDialog, "exec", lambda dialog: shown.append(dialog) or 0)
    painted = np.asarray(viewer.layers[WEAK].data).copy()

    before = len(notification_manager.records)
    widget.import_button.click()
    assert widget.training.status.text() == "reading bad.geojson…"
    settle(qtbot, widget)
    errors = _errors(before)
    assert len(errors) == 1 and "not JSON" in errors[0], errors
    assert not shown
    assert not widget.busy and widget.import_button.isEnabled()
    assert widget.training.status.text().startswith("failed:")
    assert np.array_equal(np.asarray(viewer.layers[WEAK].data), painted)


def test_a_table_read_for_a_slide_no_longer_prepared_is_dropped(
    make_napari_viewer, qtbot, tmp_path: Path, fresh_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    viewer, widget = _open(make_napari_viewer, qtbot)
    path = _annotation_file(tmp_path / "tumour.geojson")
    gate = _Gate(monkeypatch)
    shown: list[object] = []
    _choose(monkeypatch, path)
    monkeypatch.setattr(class_map_dialog.ClassMapDialog, "exec", lambda dialog: shown.append(dialog) or 0)

    widget.import_button.click()
    assert widget.busy
    with monkeypatch.context() as changed:
        changed.setattr(widget, "_prepared", lambda: None)  # as if another slide took its place
        gate.open()
        settle(qtbot, widget)
        assert not shown and widget._read_report is None
    assert _tumour_value(viewer, widget) == 0 and not widget.busy
