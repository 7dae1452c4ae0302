"""A dock that fits a laptop (issue #16): at 1366 × 768 the section being worked in is on screen — the
bag note while painting weak labels, the review note and Export once a mask is ready — because finished
sections fold into a one-line title."""

from __future__ import annotations

import numpy as np
from settle import settle

from napari_milkd._widget import SlideWidget
from napari_milkd.core.engine.config import TrainResult
from napari_milkd.core.session.jobs import StageOutput


def _on_screen(widget) -> bool:
    """True when some of ``widget`` is drawn in its scroll area's viewport (not scrolled away)."""
    return widget.isVisible() and not widget.visibleRegion().isEmpty()


def test_at_1366x768_the_working_section_is_in_view(make_napari_viewer, qtbot, fresh_project) -> None:
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1366, 768)
    _, widget = viewer.window.add_plugin_dock_widget("napari-milkd", "Slide masks")
    assert isinstance(widget, SlideWidget)
    # Before a slide is prepared only its section is open; the others are folded, their content hidden.
    assert [name for name, section in widget.sections.items() if section.isExpanded()] == ["slide"]
    assert not widget.sections["weak"].content().isVisible() and not widget.bag_note.isVisible()
    viewer.open_sample("napari-milkd", "sample_slide")
    widget.prepare_button.click()
    qtbot.waitUntil(lambda: widget.session is not None and not widget.busy, timeout=60_000)
    settle(qtbot, widget)

    slide = widget.sections["slide"]
    assert not slide.isExpanded() and "tiles at" in slide.text()  # folded into its summary
    assert widget.sections["weak"].isExpanded() and widget.sections["train"].isExpanded()
    assert widget.train_teacher_button.isVisible() and not widget.prepare_button.isVisible()
    qtbot.waitUntil(lambda: _on_screen(widget.bag_note) and _on_screen(widget.paint_free), timeout=5_000)

    work = widget.session.work
    probability = np.zeros(work.shape, np.float32)
    probability[: work.shape[0] // 2] = 0.9
    result = TrainResult(stage="teacher", epochs=1, best_epoch=1, best_score=None, checkpoint=None)
    widget._stage_done(StageOutput("teacher", probability, result, 1, 1))
    qtbot.waitUntil(lambda: not widget.busy and widget.layers.get("teacher mask") is not None, timeout=60_000)
    settle(qtbot, widget)
    assert widget.sections["review"].isExpanded()
    qtbot.waitUntil(
        lambda: _on_screen(widget.review_note) and _on_screen(widget.export_button), timeout=5_000
    )

    # A folded section opens again with one click on its title.
    slide.toggleButton().click()
    assert slide.isExpanded() and widget.prepare_button.isVisible()
    slide.toggleButton().click()
    assert not slide.isExpanded() and not widget.prepare_button.isVisible()
