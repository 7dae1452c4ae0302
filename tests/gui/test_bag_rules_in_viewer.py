"""Weak labels that count what you paint (issue #16): a scribbled tumour-free stroke makes negative bags
under the default rule, the tiles layer shows which tiles count (and changes with each stroke), the note
explains the rule, the rule can be switched, and an import switches to the regions rule and says so."""

from __future__ import annotations

import numpy as np
from napari.utils.notifications import notification_manager
from settle import settle

from napari_milkd._sample_data import SAMPLE_LAYER_NAME
from napari_milkd._widget import SlideWidget
from napari_milkd._widget.slide_layers import tile_values
from napari_milkd.core.session.weak_labels import BAG_NEGATIVE, REGION_FREE
from qupath_files import qupath_export

WEAK = f"{SAMPLE_LAYER_NAME} weak labels"
TILES = f"{SAMPLE_LAYER_NAME} tiles"


def test_scribbles_count_the_tiles_layer_shows_them_and_the_rule_is_explained(
    make_napari_viewer, qtbot, fresh_project
) -> None:
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-milkd", "Slide masks")
    assert isinstance(widget, SlideWidget)
    assert widget.bag_rule_combo.currentData() == "scribbles"  # the default
    viewer.open_sample("napari-milkd", "sample_slide")
    widget.prepare_button.click()
    qtbot.waitUntil(lambda: widget.session is not None and widget.training.worker is None, timeout=60_000)
    session, work = widget.session, widget.session.work
    tiles = viewer.layers[TILES]
    assert set(np.unique(tiles.data)) <= {0, 1, 2}  # nothing painted: every tile grey (does not count)
    assert "all paint in it is tumour-free and at least half of it is tissue" in widget.bag_note.text()

    # One thin "tumour-free" brush stroke across tissue tiles, through napari's paint tool.
    weak = viewer.layers[WEAK]
    widget.paint_free.click()
    weak.brush_size = 4
    tissue_tiles = np.flatnonzero(work.grid.tissue_fraction >= 0.9)
    r0, c0 = (int(v) for v in np.round(work.grid.origins_l0[tissue_tiles[0]] / work.downsample))
    t = work.grid.tile
    for dx in range(0, t, 2):
        weak.paint((r0 + t // 2, c0 + dx), REGION_FREE)
    settle(qtbot, widget)
    labels = session.bag_labels().labels
    assert labels[tissue_tiles[0]] == BAG_NEGATIVE and session.bags[1] >= 1
    assert f"{session.bags[1]}</b> negative" in widget.bag_note.text()
    # The tiles layer shows it in green, and only the changed tiles were repainted.
    assert np.array_equal(widget._tile_values, tile_values(work, labels))
    assert tiles.data[r0 + 1, c0 + 1] in (3, 4)

    # The regions rule: the same stroke covers far less than 90 % of the tile, so it does not count.
    widget.bag_rule_combo.setCurrentIndex(widget.bag_rule_combo.findData("regions"))
    assert session.bag_rule.name == "regions" and session.bag_labels().labels[tissue_tiles[0]] != BAG_NEGATIVE
    assert tiles.data[r0 + 1, c0 + 1] in (1, 2)
    assert "covers ≥ 90 % of it" in widget.bag_note.text()
    assert fresh_project.is_dir()


def test_an_import_switches_to_the_regions_rule_and_says_so(
    make_napari_viewer, qtbot, tmp_path, fresh_project
) -> None:
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-milkd", "Slide masks")
    viewer.open_sample("napari-milkd", "sample_slide")
    widget.prepare_button.click()
    qtbot.waitUntil(lambda: widget.session is not None and widget.training.worker is None, timeout=60_000)
    path = qupath_export(tmp_path / "regions.geojson")
    before = len(notification_manager.records)
    widget.import_regions(path)
    settle(qtbot, widget)
    assert widget.bag_rule_combo.currentData() == "regions" and widget.session.bag_rule.name == "regions"
    messages = [str(n.message) for n in notification_manager.records[before:]]
    assert any("tumour-free tiles now follow the regions rule" in m for m in messages), messages


def test_a_reopened_project_comes_back_as_it_was(make_napari_viewer, qtbot, fresh_project) -> None:
    """Working µm/px, tile size, the bag rule and the training settings come back with the project."""
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-milkd", "Slide masks")
    viewer.open_sample("napari-milkd", "sample_slide")
    widget.target_spin.setValue(2.0)
    widget.tile_spin.setValue(64)
    widget.prepare_button.click()
    qtbot.waitUntil(lambda: widget.session is not None and widget.training.worker is None, timeout=60_000)
    widget.bag_rule_combo.setCurrentIndex(widget.bag_rule_combo.findData("regions"))
    widget.training.backbone_combo.setCurrentText("tiny")
    widget.training.net_combo.setCurrentText("sa_mil")
    widget.training.teacher_epochs.value = 3
    widget.training.student_epochs.value = 7
    weak = viewer.layers[WEAK]
    weak.data[:] = REGION_FREE
    weak.data[: weak.data.shape[0] // 3] = 1
    weak.refresh()
    widget._on_weak_edit()
    job = widget.session.train_job("teacher", widget.training.config(64))  # what Train teacher records
    job.close()
    viewer.close()

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-milkd", "Slide masks")
    assert widget.training.backbone_combo.currentText() != "tiny"  # a fresh dock has the defaults
    viewer.open_sample("napari-milkd", "sample_slide")
    before = len(notification_manager.records)
    widget.prepare_button.click()
    qtbot.waitUntil(lambda: widget.session is not None and widget.training.worker is None, timeout=60_000)
    assert (widget.target_spin.value(), widget.tile_spin.value()) == (2.0, 64)
    assert widget.bag_rule_combo.currentData() == "regions" and widget.session.bag_rule.name == "regions"
    assert widget.training.backbone_combo.currentText() == "tiny"
    assert widget.training.net_combo.currentText() == "sa_mil" and widget.training.config(64).net == "sa_mil"
    assert (widget.training.teacher_epochs.value, widget.training.student_epochs.value) == (3, 7)
    messages = [str(n.message) for n in notification_manager.records[before:]]
    assert any(m.startswith("milkd: as saved:") and "backbone tiny" in m for m in messages), messages
