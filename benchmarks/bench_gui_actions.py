"""GUI-thread wall time of the slide widget's user actions (issue #16, "Freezes on the GUI thread").

Imported by :mod:`bench_gui` (phase ``actions``). On the sample slide, through the real
:class:`~napari_milkd._widget.slide_widget.SlideWidget` in a napari viewer: *Prepare slide*, brush strokes
in the weak labels (each until its bag note is shown), *Import…* of an 85-region QuPath GeoJSON (until the
regions are painted), a training stage finishing (``_stage_done`` with a working-size map, until its mask
layer is shown), *Export…* as GeoJSON (until written) and *Go back* to a kept round (until its mask is
shown; ``keep_round_ms``: keeping the round, which Next round does on the GUI thread). For each action
the heartbeat's stall stats (how long the GUI thread was blocked, in ms; ``max`` is the longest single
freeze) and the action's end-to-end seconds. ``legacy``: the same actions' old synchronous handler
bodies, timed directly (what each cost on the GUI thread before they moved to workers / incremental
counts).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

N_STROKES = 20
N_REGIONS = 85


def regions_geojson(path: Path, shape_l0: tuple[int, int], n: int = N_REGIONS) -> Path:
    """``n`` square QuPath annotations (Tumor / Stroma alternating) spread over a ``shape_l0`` slide."""
    rng = np.random.default_rng(0)
    features = []
    for i in range(n):
        side = float(rng.uniform(80, 400))
        y, x = rng.uniform(0, shape_l0[0] - side), rng.uniform(0, shape_l0[1] - side)
        ring = [[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]]
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {
                    "objectType": "annotation",
                    "classification": {"name": "Tumor" if i % 2 else "Stroma"},
                },
            }
        )
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def run_actions(viewer: Any, app: Any, measure: Callable[..., dict[str, Any]], work: Path) -> dict[str, Any]:
    """Every action once (strokes ``N_STROKES`` times) with the heartbeat running; then the legacy bodies.
    ``all_actions`` pools the stalls of every action (one action's p99 is its max when it lasts under
    100 ticks)."""
    pooled: list[float] = []
    measure_one = measure

    def measure(*args: Any, **kwargs: Any) -> dict[str, Any]:
        result = measure_one(*args, **kwargs)
        pooled.extend(result.pop("_stalls", []))
        return result

    from napari_milkd.core.engine.train import TrainResult
    from napari_milkd.core.session.jobs import StageOutput
    from napari_milkd.core.session.weak_labels import REGION_FREE, REGION_TUMOUR

    slide = viewer.layers[0]
    viewer.layers.selection.active = slide
    out: dict[str, Any] = {}
    docked: list[Any] = []

    def open_widget(done: Callable[[], None]) -> None:
        # The dock opens and warms up (heavy imports in a worker, then gc.freeze): until it is warm.
        from qtpy.QtCore import QTimer

        def go() -> None:
            docked.append(viewer.window.add_plugin_dock_widget("napari-milkd", "Slide masks")[1])
            until(lambda: docked[0].warmed_up)(done)

        QTimer.singleShot(40, go)

    def until(condition: Callable[[], bool]) -> Callable[[Callable[[], None]], None]:
        def start(done: Callable[[], None]) -> None:
            def poll() -> None:
                if condition():
                    done()
                else:
                    timer.start()

            from qtpy.QtCore import QTimer

            timer = QTimer(viewer.window._qt_window, singleShot=True, interval=5)
            timer.timeout.connect(poll)
            timer.start()

        return start

    def action(
        body: Callable[[], None], condition: Callable[[], bool]
    ) -> Callable[[Callable[[], None]], None]:
        wait = until(condition)

        def start(done: Callable[[], None]) -> None:
            from qtpy.QtCore import QTimer

            def go() -> None:  # after a few heartbeat ticks, so the first stall is counted
                body()
                wait(done)

            QTimer.singleShot(40, go)

        return start

    out["open_widget"] = measure(open_widget)
    widget = docked[0]
    name = slide.name
    out["prepare"] = measure(
        action(
            widget.prepare_button.click, lambda: f"{name} weak labels" in viewer.layers and not widget.busy
        )
    )
    session = widget.session
    weak = viewer.layers[f"{name} weak labels"]
    weak.brush_size = 20
    rng = np.random.default_rng(1)
    shape = session.work.shape
    strokes: list[dict[str, Any]] = []
    for i in range(N_STROKES):
        y, x = int(rng.integers(20, shape[0] - 20)), int(rng.integers(20, shape[1] - 20))
        label = REGION_TUMOUR if i % 2 else REGION_FREE

        def stroke(y: int = y, x: int = x, label: int = label) -> None:
            weak.paint((y, x), label)

        strokes.append(measure(action(stroke, lambda: not widget._bag_timer.isActive())))
        for _ in range(5):
            app.processEvents()
    out["stroke"] = _pool(strokes)
    assert session.bags == session.bag_counts(), "the incremental bag counts drifted"
    assert f"{session.bags[0]}</b> positive" in widget.bag_note.text()

    geojson = regions_geojson(work / "regions.geojson", session.info.shape)
    out["import"] = measure(
        action(lambda: widget.import_regions(geojson), lambda: not widget.busy and bool(weak.data.any()))
    )
    probability = rng.random(shape, dtype=np.float32)
    result = TrainResult(stage="teacher", epochs=1, best_epoch=1, best_score=None, checkpoint=None)
    output = StageOutput("teacher", probability, result, 1, 1)
    out["stage_done"] = measure(
        action(lambda: widget._stage_done(output), lambda: not widget.busy and "teacher" in session.masks)
    )
    target = work / "teacher.geojson"
    widget.export_stage.setCurrentText("teacher")
    widget.export_format.setCurrentText("QuPath GeoJSON")
    from napari_milkd._widget import slide_form

    slide_form.QFileDialog.getSaveFileName = staticmethod(lambda *a, **k: (str(target), ""))  # type: ignore[method-assign]
    out["export"] = measure(action(widget.export_button.click, lambda: not widget.busy and target.exists()))

    # Go back: keep this teacher as a round (what Next round does first; timed on the GUI thread), let a
    # second teacher replace it, then bring the kept one back through the round list.
    t0 = time.perf_counter()
    kept = session.keep_round("bench")
    out["keep_round_ms"] = round((time.perf_counter() - t0) * 1000, 1)
    assert kept is not None
    session.accept(StageOutput("teacher", rng.random(shape, dtype=np.float32), result, 1, 1))
    widget.show_stage("teacher")
    widget.round_list.combo.setCurrentIndex(widget.round_list.combo.findData(kept.number))
    out["go_back"] = measure(
        action(
            widget.round_list.go_back.click,
            lambda: not widget.busy and f"back to round {kept.number}" in widget.training.status.text(),
        )
    )

    # The old synchronous handler bodies, timed on the GUI thread.
    legacy: dict[str, float] = {}

    def timed(key: str, body: Callable[[], Any]) -> None:
        t0 = time.perf_counter()
        body()
        legacy[key] = round((time.perf_counter() - t0) * 1000, 1)

    timed("stroke", session.bag_counts)  # the full recount every stroke did
    timed("import", lambda: (session.import_annotations(geojson), weak.refresh(), session.bag_counts()))
    timed(
        "stage_done",
        lambda: (
            session.accept(output),
            widget.show_stage("teacher"),
            session.describe_model("teacher"),
        ),
    )
    timed("export", lambda: session.export("teacher", "geojson", work / "legacy.geojson"))
    out["legacy_ms"] = legacy
    stalls = np.array(pooled)
    out["all_actions"] = {
        "ticks": len(stalls),
        "p50_ms": round(float(np.percentile(stalls, 50)), 1),
        "p99_ms": round(float(np.percentile(stalls, 99)), 1),
        "max_ms": round(float(stalls.max()), 1),
        "over_50_ms": int((stalls > 50).sum()),
        "over_200_ms": int((stalls > 200).sum()),
    }
    widget.training.status.setText("")
    return out


def _pool(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs of one action: the median p50, the worst p99/max and the mean seconds."""
    return {
        "runs": len(runs),
        "p50_ms": round(float(np.median([r.get("p50_ms", 0.0) for r in runs])), 1),
        "p99_ms": max(r.get("p99_ms", 0.0) for r in runs),
        "max_ms": max(r.get("max_ms", 0.0) for r in runs),
        "over_50_ms": sum(r.get("over_50_ms", 0) for r in runs),
        "gc2_max_ms": max(r.get("gc2_max_ms", 0.0) for r in runs),
        "seconds_mean": round(float(np.mean([r["seconds"] for r in runs])), 2),
    }
