"""The right reader (issue #16): the dock's *Open slide…* opens with milkd's reader, napari is offered once
(with consent) to open slide-only formats with milkd, and a slide opened by another reader is explained."""

from __future__ import annotations

from pathlib import Path

import pytest
from napari.settings import NapariSettings
from napari.utils.notifications import notification_manager
from qtpy.QtWidgets import QMessageBox

from napari_milkd._layers import SLIDE_META
from napari_milkd._widget import SlideWidget, slide_open
from napari_milkd.core.preferences import load_preferences
from slide_images import tissue_square_slide


def test_open_slide_button_uses_milkd_and_offers_the_reader_once(
    make_napari_viewer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MILKD_CONFIG_DIR", str(tmp_path / "config"))
    settings = NapariSettings(config_path=str(tmp_path / "napari-settings.yaml"))
    settings.plugins.extension2reader = {"*.tif": "napari", "*.ndpi": "napari"}
    monkeypatch.setattr(slide_open, "napari_settings", lambda: settings)
    slide = tissue_square_slide(tmp_path / "slides" / "case.tiff")
    asked: list[str] = []

    def yes(parent, title, text, *rest):
        asked.append(text)
        return QMessageBox.StandardButton.Yes

    monkeypatch.setattr(slide_open.QMessageBox, "question", yes)
    monkeypatch.setattr(slide_open.QFileDialog, "getOpenFileName", lambda *a, **k: (str(slide), ""))
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-milkd", "Slide masks")
    assert isinstance(widget, SlideWidget)
    assert "milkd's reader" in widget.open_button.toolTip()

    widget.open_button.click()
    assert len(asked) == 1 and ".svs" in asked[0] and "Preferences ▸ Plugins" in asked[0]
    layer = viewer.layers[-1]
    assert SLIDE_META in layer.metadata  # opened by milkd: the widget offers it
    assert widget.layer_combo.currentText() == layer.name
    readers = settings.plugins.extension2reader
    assert all(readers[p] == "napari-milkd" for p in slide_open.VENDOR_PATTERNS)
    assert readers["*.tif"] == "napari"  # plain TIFFs stay with the user's choice
    assert load_preferences()[slide_open.OFFERED_KEY] is True

    widget.open_button.click()  # asked once only
    assert len(asked) == 1


def test_a_no_is_remembered_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, qtbot
) -> None:
    monkeypatch.setenv("MILKD_CONFIG_DIR", str(tmp_path / "config"))
    settings = NapariSettings(config_path=str(tmp_path / "napari-settings.yaml"))
    monkeypatch.setattr(slide_open, "napari_settings", lambda: settings)
    monkeypatch.setattr(slide_open.QMessageBox, "question", lambda *a: QMessageBox.StandardButton.No)

    class Opener(slide_open.SlideOpener):
        pass

    assert Opener().offer_milkd_as_slide_reader() is False
    assert settings.plugins.extension2reader == {}
    assert load_preferences()[slide_open.OFFERED_KEY] is True
    monkeypatch.setattr(slide_open.QMessageBox, "question", lambda *a: pytest.fail("asked twice"))
    assert Opener().offer_milkd_as_slide_reader() is False


def test_a_slide_opened_by_napari_builtins_is_explained(make_napari_viewer, tmp_path: Path) -> None:
    slide = tissue_square_slide(tmp_path / "case.tiff")
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-milkd", "Slide masks")
    before = len(notification_manager.records)
    viewer.open(str(slide), plugin="napari")
    messages = [str(n.message) for n in notification_manager.records[before:]]
    assert any("opened by napari as a plain image: milkd cannot use it" in m for m in messages), messages
    assert widget.layer_combo.count() == 0
