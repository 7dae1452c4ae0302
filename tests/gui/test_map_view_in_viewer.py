"""The dock's "Show map": tissue, a stage's probability or the disagreement in one layer, added only when
the user first asks for a map (issue 16: each napari layer costs the GUI thread 0.1–0.2 s to add).

What a user sees: maps the session lacks are greyed; picking one shows it in the layer "<slide> map" with
its colormap, picking another refills the same layer, "none" hides it, and a stage that finishes while its
probability is shown updates what is shown."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_milkd._widget.map_view import MAPS
from napari_milkd.core.engine.train import TrainResult
from napari_milkd.core.session.jobs import StageOutput

PREFIX = "milkd synthetic sample"


def _enabled(widget) -> dict[str, bool]:
    model = widget.map_view.combo.model()
    return {name: model.item(i).isEnabled() for i, name in enumerate(MAPS)}


def _finish(widget, qtbot, stage: str, value: float) -> np.ndarray:
    work = widget.session.work
    probability = np.full(work.shape, 0.1, np.float32)
    probability[: work.shape[0] // 2] = value
    result = TrainResult(stage=stage, epochs=1, best_epoch=1, best_score=None, checkpoint=None)
    widget._stage_done(StageOutput(stage, probability, result, 1, 1))
    qtbot.waitUntil(
        lambda: not widget.busy and f"{stage} done" in widget.training.status.text(), timeout=60_000
    )
    return probability


def test_one_map_layer_on_demand(make_napari_viewer, qtbot, fresh_project: Path) -> None:
    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-milkd", "sample_slide")
    _, widget = viewer.window.add_plugin_dock_widget("napari-milkd", "Slide masks")
    assert _enabled(widget) == {name: name == "none" for name in MAPS}  # nothing prepared yet
    widget.prepare_button.click()
    qtbot.waitUntil(lambda: widget.session is not None and not widget.busy, timeout=60_000)
    names = [layer.name for layer in viewer.layers]
    assert not any(name.endswith((" tissue", " probability", " disagreement", " map")) for name in names)
    assert _enabled(widget) == {
        "none": True, "tissue": True, "teacher probability": False, "student probability": False,
        "disagreement": False,
    }  # fmt: skip

    widget.map_view.combo.setCurrentText("tissue")
    layer = viewer.layers[f"{PREFIX} map"]
    assert layer.visible and layer.colormap.name == "green" and layer.blending == "additive"
    assert np.array_equal(layer.data, widget.session.tissue.astype(np.float32))
    assert tuple(layer.scale) == tuple(viewer.layers[f"{PREFIX} weak labels"].scale)  # over the slide

    teacher = _finish(widget, qtbot, "teacher", 0.9)
    assert np.array_equal(layer.data, widget.session.tissue.astype(np.float32))  # still what was chosen
    assert _enabled(widget)["teacher probability"] and not _enabled(widget)["disagreement"]
    widget.map_view.combo.setCurrentText("teacher probability")
    assert viewer.layers[f"{PREFIX} map"] is layer  # the same layer, refilled
    assert np.array_equal(layer.data, teacher) and layer.colormap.name == "magma"

    widget.map_view.combo.setCurrentText("none")
    assert not layer.visible and f"{PREFIX} map" in viewer.layers  # hidden, ready to show again

    widget.map_view.combo.setCurrentText("disagreement")  # greyed: the choice shows nothing
    assert not layer.visible
    student = _finish(widget, qtbot, "student", 0.5)
    assert _enabled(widget) == {name: True for name in MAPS}
    assert layer.visible and layer.colormap.name == "viridis"  # the stage made the chosen map exist
    assert np.allclose(layer.data, np.abs(teacher - student))
    assert [lay.name for lay in viewer.layers].count(f"{PREFIX} map") == 1
