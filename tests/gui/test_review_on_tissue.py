"""Review on tissue (issue #16): "Next region to review" sends the reviewer to tissue, never to glass
at the tissue border, even where the maps disagree most on glass; tiles rank by their tissue share."""

from __future__ import annotations

import numpy as np

from napari_milkd._widget import SlideWidget
from napari_milkd.core.engine.config import TrainResult
from napari_milkd.core.session.jobs import StageOutput


def test_next_region_goes_to_tissue_not_to_glass(make_napari_viewer, qtbot, fresh_project) -> None:
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-milkd", "Slide masks")
    assert isinstance(widget, SlideWidget)
    viewer.open_sample("napari-milkd", "sample_slide")
    widget.prepare_button.click()
    qtbot.waitUntil(lambda: widget.session is not None and not widget.busy, timeout=60_000)
    session, work = widget.session, widget.session.work
    tissue = session.tissue
    # The maps disagree completely on glass and only a little on tissue.
    teacher = np.where(tissue, 0.55, 1.0).astype(np.float32)
    student = np.where(tissue, 0.45, 0.0).astype(np.float32)
    for stage, probability in (("teacher", teacher), ("student", student)):
        result = TrainResult(stage=stage, epochs=1, best_epoch=1, best_score=None, checkpoint=None)
        session.accept(StageOutput(stage, probability, result, 1, 1))
        widget.show_stage(stage)

    camera = getattr(viewer, "scene", viewer).camera
    sy, sx = viewer.layers["milkd synthetic sample"].scale[-2:]
    fractions = np.asarray(work.grid.tissue_fraction)
    proposed: list[int] = []
    for _ in range(5):
        seen = set(session.reviewed)
        widget.review_button.click()
        (tile,) = session.reviewed - seen
        proposed.append(tile)
        assert widget.review_note.text().startswith(f"tile {tile}") or widget.review_note.text().startswith(
            "tile "
        )
        y0, x0, y1, x1 = session.region_bounds_l0(tile)
        assert np.allclose(
            camera.center[-2:], ((y0 + y1) / 2 * sy, (x0 + x1) / 2 * sx)
        )  # the view went there
    # Every proposed tile is among the most-tissue tiles, never the glass at the border.
    assert fractions[proposed].min() >= np.sort(fractions)[-5] - 1e-6, fractions[proposed]
