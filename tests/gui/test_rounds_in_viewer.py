"""Rounds you can go back to (issue 16), in a real viewer with a tiny model on CPU: Next round keeps round 1
in the project and the "Round" box of section 3 lists it; choosing it and pressing Go back puts round 1's
student mask back into the layer, keeps what was there as round 2, and leaves the corrections alone.

Assertions are on what a user sees (the round box, Go back and its tooltip, layers, the status line,
notifications, files in the project folder)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from napari.utils.notifications import notification_manager
from settle import settle

from napari_milkd._widget import SlideWidget
from napari_milkd._widget.round_list import NO_ROUND
from napari_milkd.core.session.labels import NO_OPINION
from napari_milkd.core.slides.geometry import tissue_map
from napari_milkd.core.slides.sample import coarse_regions

PREFIX = "milkd synthetic sample"


def _open(make_napari_viewer, qtbot) -> tuple[object, SlideWidget]:
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1400, 950)
    viewer.open_sample("napari-milkd", "sample_slide")
    _, widget = viewer.window.add_plugin_dock_widget("napari-milkd", "Slide masks")
    widget.training.backbone_combo.setCurrentText("tiny")
    widget.training.device_combo.setCurrentIndex(widget.training.device_combo.findData("cpu"))
    widget.training.teacher_epochs.value = 1
    widget.training.student_epochs.value = 2
    widget.prepare_button.click()
    qtbot.waitUntil(
        lambda: f"{PREFIX} weak labels" in viewer.layers and widget.training.worker is None, timeout=60_000
    )
    return viewer, widget


def _train(qtbot, viewer, widget: SlideWidget, button, layer: str) -> None:
    button.click()
    qtbot.waitUntil(lambda: not widget.busy and layer in viewer.layers, timeout=240_000)


def test_next_round_is_listed_and_go_back_restores_its_student_mask(
    make_napari_viewer, qtbot, fresh_project: Path
) -> None:
    viewer, widget = _open(make_napari_viewer, qtbot)
    rounds = widget.round_list
    assert rounds.combo.count() == 0 and rounds.combo.placeholderText() == NO_ROUND
    assert not rounds.go_back.isEnabled() and "no round kept yet" in rounds.go_back.toolTip()

    weak = viewer.layers[f"{PREFIX} weak labels"]
    work = widget.session.work
    weak.data = coarse_regions(work.downsample, work.shape, tissue_map(work))
    settle(qtbot, widget)
    _train(qtbot, viewer, widget, widget.train_teacher_button, f"{PREFIX} teacher mask")
    _train(qtbot, viewer, widget, widget.train_student_button, f"{PREFIX} student mask")
    student_layer = viewer.layers[f"{PREFIX} student mask"]
    round1_student = np.asarray(student_layer.data).copy()
    round1_teacher = np.asarray(viewer.layers[f"{PREFIX} teacher mask"].data).copy()
    widget.map_view.combo.setCurrentText("student probability")  # the map layer follows the rounds
    round1_prob = np.asarray(viewer.layers[f"{PREFIX} map"].data).copy()
    assert rounds.combo.count() == 0  # nothing replaced yet

    # Next round: round 1 is kept in the project and listed.
    widget.next_round_button.click()  # the round is kept in a worker, then the student distils
    qtbot.waitUntil(lambda: rounds.combo.count() == 1, timeout=60_000)
    assert rounds.combo.itemText(0).startswith("round 1 · ")
    qtbot.waitUntil(lambda: not widget.busy, timeout=240_000)
    assert "student done" in widget.training.status.text()
    label = rounds.combo.itemText(0)
    assert "teacher + student" in label and "corrected px" in label and "Dice" in label, label
    assert rounds.chosen() == 1 and rounds.go_back.isEnabled()
    kept = fresh_project / "rounds" / "1"
    assert {"teacher.pt", "student.pt", "student_mask.npz", "masks.png", "round.json"} <= {
        p.name for p in kept.iterdir()
    }
    assert json.loads((kept / "round.json").read_text())["reason"] == "next round"
    round2_prob = np.asarray(viewer.layers[f"{PREFIX} map"].data).copy()
    assert np.abs(round2_prob - round1_prob).max() > 1e-3  # round 2's student is another model

    # A correction in round 2 (the pathologist's work: never rolled back).
    student_layer.brush_size = 4
    spot = (int(work.shape[0] // 2), int(work.shape[1] // 2))
    value = 1 - int(student_layer.data[spot])
    student_layer.paint(spot, value)
    qtbot.wait(50)
    hard = widget.session.hard.copy()
    assert hard[spot] == value and (hard != NO_OPINION).sum() > 0

    # Choose round 1 and go back: it runs off the GUI thread, then round 1's masks are in the layers.
    before = len(notification_manager.records)
    rounds.combo.setCurrentIndex(rounds.combo.findData(1))
    started = time.perf_counter()
    rounds.go_back.click()
    assert time.perf_counter() - started < 0.5 and widget.busy  # the GUI thread is not held
    assert "going back to round 1" in widget.training.status.text()
    settle(qtbot, widget)
    restored = np.asarray(viewer.layers[f"{PREFIX} student mask"].data)
    corrected = hard != NO_OPINION
    np.testing.assert_array_equal(restored[~corrected], round1_student[~corrected])
    np.testing.assert_array_equal(restored[corrected], hard[corrected])  # corrections kept
    teacher = np.asarray(viewer.layers[f"{PREFIX} teacher mask"].data)
    np.testing.assert_array_equal(teacher[~corrected], round1_teacher[~corrected])
    prob = np.asarray(viewer.layers[f"{PREFIX} map"].data)
    assert np.abs(prob - round1_prob).max() < 1e-3  # round 1's map, not round 2's
    np.testing.assert_array_equal(widget.session.hard, hard)
    messages = [str(n.message) for n in notification_manager.records[before:]]
    assert any("back to round 1; what you had is kept as round 2" in m for m in messages), messages
    assert "back to round 1" in widget.training.status.text()
    # What was there is round 2 now: listed first, and going back can be undone.
    assert [rounds.combo.itemData(i) for i in range(rounds.combo.count())] == [2, 1]
    assert rounds.combo.itemText(0).startswith("round 2 · ")
    assert json.loads((fresh_project / "project.json").read_text())["round"] == 0
