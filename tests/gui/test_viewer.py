"""Slides in a real napari viewer: reader, sample data, and the Slide widget driven like a user.

Data fixtures that may skip come before ``make_napari_viewer`` in each signature: napari's fixture
fails its teardown when a test is skipped after it was set up."""

from __future__ import annotations

from pathlib import Path

import pytest
from napari.layers import Image, Labels, Shapes
from napari.utils.notifications import notification_manager

from napari_milkd._widget import SlideWidget


def test_reader_shows_slide_in_micrometres(cmu_svs: Path, make_napari_viewer, not_blank) -> None:
    viewer = make_napari_viewer(show=True)  # a hidden canvas is never drawn
    [layer] = viewer.open(str(cmu_svs), plugin="napari-milkd")
    assert isinstance(layer, Image)
    assert layer.multiscale and layer.rgb
    assert tuple(layer.scale) == pytest.approx((0.499, 0.499))
    assert layer.metadata["milkd_slide"]["vendor"] == "aperio"
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert not_blank(shot)


def test_drag_and_drop_offers_and_uses_our_reader(
    make_napari_viewer, tcga_svs: Path, dicom_dcm: Path
) -> None:
    """A drop opens with ``plugin=None``. napari's built-in reader also claims .svs/.tif, so napari asks
    once which to use and can remember it; with that choice saved, drops open through milkd."""
    from napari.plugins import _npe2
    from napari.settings import get_settings

    viewer = make_napari_viewer()
    assert "napari-milkd" in _npe2.get_readers(str(tcga_svs))
    assert "napari-milkd" in _npe2.get_readers(str(dicom_dcm.parent))
    get_settings().plugins.extension2reader = {"*.svs": "napari-milkd"}
    try:
        [layer] = viewer.open(str(tcga_svs), plugin=None)
    finally:
        get_settings().plugins.extension2reader = {}
    assert layer.source.reader_plugin == "napari-milkd"
    assert layer.multiscale and len(layer.data) == 2
    assert tuple(layer.scale) == (1.0, 1.0)  # no µm/px in this file


def test_sample_slide_and_widget_prepare(
    make_napari_viewer, qtbot, not_blank, save_screenshot, fresh_project
) -> None:
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    viewer.open_sample("napari-milkd", "sample_slide")
    slide = viewer.layers["milkd synthetic sample"]
    truth = viewer.layers["true tumour (sample)"]
    assert slide.multiscale and len(slide.data) == 3
    assert isinstance(truth, Shapes) and tuple(truth.scale) == pytest.approx((0.5, 0.5))

    _, widget = viewer.window.add_plugin_dock_widget("napari-milkd", "Slide masks")
    assert isinstance(widget, SlideWidget)
    assert widget.layer_combo.currentText() == "milkd synthetic sample"
    assert "0.5000 × 0.5000 µm/px" in widget.facts.text()
    assert "reads level 0" in widget.level_note.text()  # 1 µm/px needs level 0 (0.5), not level 1 (2.0)
    assert not widget.train_teacher_button.isEnabled()  # nothing prepared yet
    viewer.reset_view()
    qtbot.wait(200)
    save_screenshot(viewer.screenshot(canvas_only=False, flash=False), "slide-widget")
    assert not_blank(viewer.screenshot(canvas_only=True, flash=False))

    widget.prepare_button.click()
    assert not widget.prepare_button.isEnabled()  # busy while the worker runs
    qtbot.waitUntil(lambda: "tissue tiles of" in widget.result_note.text(), timeout=60_000)
    qtbot.waitUntil(lambda: widget.training.worker is None, timeout=10_000)
    work = widget.session.work
    tiles = viewer.layers["milkd synthetic sample tiles"]
    weak = viewer.layers["milkd synthetic sample weak labels"]
    for layer in (tiles, weak):
        assert isinstance(layer, Labels) and not layer.multiscale and layer.editable
        assert layer.data.shape == work.shape
        assert tuple(layer.scale) == pytest.approx((0.5 * work.downsample,) * 2)
    assert weak.data is widget.session.weak  # brush strokes land in the session
    # Masks line up with the slide: their world extent equals the slide's.
    slide_extent = slide.extent.world[1] - slide.extent.world[0]
    widget.map_view.combo.setCurrentText("tissue")  # the tissue found, in the dock's one map layer
    tissue = viewer.layers["milkd synthetic sample map"]
    tissue_extent = tissue.extent.world[1] - tissue.extent.world[0]
    assert tissue_extent == pytest.approx(slide_extent, rel=0.01)
    assert tuple(tissue.scale) == pytest.approx(tuple(tiles.scale))
    assert 0.3 < tissue.data.mean() < 0.8
    widget.map_view.combo.setCurrentText("none")
    assert widget.paint_tumour.isEnabled() and not widget.train_teacher_button.isEnabled()  # no weak labels
    assert "paint or import both positive and negative regions first" in widget.train_teacher_button.toolTip()
    truth.visible = True
    viewer.reset_view()
    qtbot.wait(200)
    save_screenshot(viewer.screenshot(canvas_only=False, flash=False), "slide-widget-tiles")


def test_slide_without_mpp_asks_for_it(tcga_svs: Path, make_napari_viewer, qtbot) -> None:
    viewer = make_napari_viewer()
    viewer.open(str(tcga_svs), plugin="napari-milkd")
    _, widget = viewer.window.add_plugin_dock_widget("napari-milkd", "Slide masks")
    assert "unknown" in widget.facts.text()
    assert not widget.mpp_apply.isHidden()
    assert not widget.prepare_button.isEnabled() and "µm/px" in widget.prepare_button.toolTip()
    before = len(notification_manager.records)
    widget.start_prepare()
    assert widget.training.worker is None and widget.session is None  # refused, with a notification
    assert any("µm/px" in str(n.message) for n in notification_manager.records[before:])
    widget.mpp_spin.setValue(0.25)
    widget.mpp_apply.click()
    layer = viewer.layers[0]
    assert tuple(layer.scale) == pytest.approx((0.25, 0.25))
    assert layer.metadata["milkd_slide"]["mpp_source"] == "user"
    assert "0.2500 × 0.2500 µm/px" in widget.facts.text()
    assert widget.mpp_apply.isHidden()
    assert widget.prepare_button.isEnabled()
