"""Freezes on the GUI thread (issue 16): Prepare reads the project in a worker and puts its layers one per
turn of the event loop, and a finished stage's layers follow the same way; the widget stays busy until the
last layer is there, and the layers come in the order they always had.

What a user sees: the canvas keeps drawing between two layers (a 0-ms timer fires in between), the buttons
stay greyed until all are shown, a restored project's masks are there when Prepare is done."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtCore import QTimer

from napari_milkd._widget.slide_layers import tile_map
from napari_milkd.core.engine.train import TrainResult
from napari_milkd.core.session.jobs import StageOutput

PREFIX = "milkd synthetic sample"


def _turns(widget) -> list[int]:
    """A counter of event-loop turns: a 0-ms timer that ticks whenever Qt gets control back."""
    count = [0]
    timer = QTimer(widget, interval=0)
    timer.timeout.connect(lambda: count.__setitem__(0, count[0] + 1))
    timer.start()
    return count


def test_prepare_and_a_finished_stage_put_their_layers_one_per_turn(
    make_napari_viewer, qtbot, fresh_project: Path
) -> None:
    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-milkd", "sample_slide")
    _, widget = viewer.window.add_plugin_dock_widget("napari-milkd", "Slide masks")
    turns = _turns(widget)
    inserted: list[tuple[str, int, bool]] = []
    viewer.layers.events.inserted.connect(
        lambda e: inserted.append((e.value.name[len(PREFIX) + 1 :], turns[0], widget.busy))
    )
    widget.prepare_button.click()
    qtbot.waitUntil(lambda: widget.session is not None and not widget.busy, timeout=60_000)
    assert [name for name, _, _ in inserted] == ["tiles", "weak labels"]  # no hidden tissue layer
    assert len({turn for _, turn, _ in inserted}) == 2  # the canvas drew between two layers
    assert all(busy for _, _, busy in inserted) and widget.paint_tumour.isEnabled()
    tiles = viewer.layers[f"{PREFIX} tiles"]
    # Outlines drawn into the data (napari computes no contour over the whole map): every tile's ring.
    assert tiles.visible and tiles.contour == 0
    assert np.array_equal(tiles.data, tile_map(widget.session.work, widget.session.bag_labels().labels))
    assert tiles.data.any() and not tiles.data.all()

    # A stage finishing: its mask (outlined) after the map was taken, busy until then; no hidden
    # probability layer (it is one of the maps the dock's "Show map" puts in its one layer).
    session = widget.session
    work = session.work
    probability = np.zeros(work.shape, np.float32)
    probability[: work.shape[0] // 2] = 0.9
    result = TrainResult(stage="teacher", epochs=1, best_epoch=1, best_score=None, checkpoint=None)
    inserted.clear()
    widget._stage_done(StageOutput("teacher", probability, result, 1, 1))
    assert widget.busy
    qtbot.waitUntil(
        lambda: not widget.busy and "teacher done" in widget.training.status.text(), timeout=60_000
    )
    assert [name for name, _, _ in inserted] == ["teacher mask"]
    mask = viewer.layers[f"{PREFIX} teacher mask"]
    assert mask.visible and mask.contour > 0 and np.array_equal(mask.data, session.mask("teacher"))
    # The brush and polygon overlays, built a turn after each layer (a third of an add), are on the canvas.
    canvas = viewer.window._qt_viewer.canvas
    for layer in (mask, viewer.layers[f"{PREFIX} weak labels"]):
        built = {type(overlay).__name__ for overlay in canvas._layer_overlay_to_visual[layer]}
        assert {"LabelsBrushStrokeOverlay", "LabelsPolygonOverlay"} <= built, layer.name
        assert layer._overlays["brush_stroke"].visible and layer._overlays["polygon"].visible
    widget.save_session()

    # Prepared again (the project restored): the same layers, in the same order, the mask included.
    before = [layer.name for layer in viewer.layers]
    widget.prepare_button.click()
    qtbot.waitUntil(lambda: not widget.busy and widget.session is not session, timeout=60_000)
    assert [layer.name for layer in viewer.layers] == before
    assert np.array_equal(viewer.layers[f"{PREFIX} teacher mask"].data, widget.session.mask("teacher"))
    assert viewer.layers[f"{PREFIX} weak labels"].data is widget.session.weak
