"""A run trained headless opens in the widget (issue #11): "Use a trained run…" predicts the prepared
slide with the run's models, shows their masks, and refuses a run made for another tile size with a
notification that says which to prepare at. Tiny backbone, CPU."""

from __future__ import annotations

from pathlib import Path

from napari.utils.notifications import notification_manager
from settle import settle

from napari_milkd._widget import SlideWidget, slide_widget
from napari_milkd.core.engine.presets import schedule
from napari_milkd.core.session.project import Project
from napari_milkd.core.session.slide_session import SlideSession
from napari_milkd.core.session.weak_labels import REGION_FREE, REGION_TUMOUR
from slide_images import TWO_TONE_SPLIT, two_tone_slide

CONFIG = schedule("quick", backbone="tiny", teacher_epochs=2, student_epochs=2, batch_size=8, device="cpu")


def _headless_run(tmp_path: Path) -> Path:
    """Teacher and student trained headless on another slide at 1 µm/px, 32-px tiles."""
    slide = two_tone_slide(tmp_path / "elsewhere.tiff", seed=5)
    with SlideSession(slide, project=Project(tmp_path / "headless")) as session:
        session.prepare(1.0, 32)
        split = round(TWO_TONE_SPLIT / session.work.downsample)
        session.weak[:, :split] = REGION_TUMOUR
        session.weak[:, split:] = REGION_FREE
        session.weak[~session.tissue] = 0
        session.train("teacher", CONFIG)
        session.train("student", CONFIG)
        return session.project.checkpoints


def test_use_a_trained_run_shows_its_masks(make_napari_viewer, qtbot, tmp_path: Path, monkeypatch) -> None:
    run = _headless_run(tmp_path)
    slide = two_tone_slide(tmp_path / "slides" / "new.tiff", seed=6)
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-milkd", "Slide masks")
    assert isinstance(widget, SlideWidget)
    assert (
        not widget.use_run_button.isEnabled() and "prepare the slide first" in widget.use_run_button.toolTip()
    )
    viewer.open(str(slide), plugin="napari-milkd")
    widget.target_spin.setValue(1.0)
    widget.tile_spin.setValue(64)  # not the run's tile size
    widget.prepare_button.click()
    qtbot.waitUntil(lambda: widget.session is not None and not widget.busy, timeout=60_000)
    monkeypatch.setattr(slide_widget.QFileDialog, "getExistingDirectory", lambda *a, **k: str(run))

    before = len(notification_manager.records)
    widget.use_run_button.click()
    assert widget.busy  # the run's checkpoints are read and checked by a worker, not the GUI thread
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    messages = [str(n.message) for n in notification_manager.records[before:]]
    assert any("trained at 1 µm/px with 32 px tiles" in m for m in messages), messages
    assert "trained at 1 µm/px" in widget.training.status.text()
    assert widget.layers.get("teacher mask") is None

    widget.tile_spin.setValue(32)
    widget.prepare_button.click()
    qtbot.waitUntil(lambda: widget.session.work.grid.tile == 32 and not widget.busy, timeout=60_000)
    widget.use_run_button.click()
    qtbot.waitUntil(
        lambda: not widget.busy and widget.layers.get("student mask") is not None, timeout=120_000
    )
    settle(qtbot, widget)
    session = widget.session
    assert session.mask("teacher") is not None and session.mask("student") is not None
    assert widget.layers.get("teacher mask").data.shape == session.work.shape
    assert widget.export_button.isEnabled()
