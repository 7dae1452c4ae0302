"""How long the napari main thread stalls while training and prediction run in a worker thread.

Prints one JSON object. A napari viewer shows the sample slide; a ``QTimer`` ticks every ``--tick`` ms
on the main thread and records how late each tick is (the stall). Phases, one after the other, each run
with ``napari.qt.threading.create_worker`` exactly as the widget runs its jobs:

* ``idle``: nothing running (the floor);
* ``train``: :func:`~napari_milkd.core.engine.train.train_teacher` on random bags (``--backbone``),
  progress only;
* ``predict``: :func:`~napari_milkd.core.inference.stream.predict_slide` over the sample slide, progress only;
* ``predict_live``: the same, and each event also copies the newly final rows of the mask into a Labels
  layer and refreshes it (the "mask appears progressively" display);
* ``slide_job``: what *Train teacher* in the slide widget runs, end to end: a
  :class:`~napari_milkd.core.session.slide_session.SlideSession` on the sample slide (prepared, coarse
  weak labels), its ``train_job`` in a worker, each ``MapPreview`` drawn by the widget's own
  :class:`~napari_milkd._widget.slide_layers.SlideLayers`, and ``session.accept`` on the main thread;
* ``actions`` (not in the default list): the slide widget's user actions — Prepare, brush strokes until
  the bag note shows them, Import… of an 85-region GeoJSON, a stage finishing, Export… GeoJSON, Go back — each
  with the heartbeat running, and the old synchronous handler bodies timed for comparison
  (:mod:`bench_gui_actions`; projects go to a temporary folder).

p50/p99/max stall in ms per phase. Needs a display: ``xvfb-run -a .venv/bin/python benchmarks/bench_gui.py``.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np


def _stats(stalls: list[float]) -> dict[str, float]:
    if not stalls:
        return {"ticks": 0}
    arr = np.array(stalls)
    return {
        "ticks": len(arr),
        "p50_ms": round(float(np.percentile(arr, 50)), 1),
        "p99_ms": round(float(np.percentile(arr, 99)), 1),
        "max_ms": round(float(arr.max()), 1),
        "over_50_ms": int((arr > 50).sum()),
    }


def compile_bytecode() -> str:
    """Write milkd's bytecode first, as pip does when it installs the wheel. An editable install on a
    machine that sets ``PYTHONDONTWRITEBYTECODE`` (ours) would otherwise compile every widget module from
    source on the GUI thread when the dock opens, ~30 ms a user never pays."""
    import compileall

    import napari_milkd

    compileall.compile_dir(str(Path(napari_milkd.__file__).parent), quiet=1)
    return "compiled before the run, as an installed wheel has it"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--tick", type=float, default=10.0, help="heartbeat interval, ms")
    parser.add_argument("--idle-seconds", type=float, default=2.0)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--torch-threads", type=int, default=None, help="torch threads in the worker")
    parser.add_argument("--phases", default="idle,train,predict,predict_live,slide_job")
    args = parser.parse_args()
    bytecode = compile_bytecode()
    if "actions" in args.phases.split(","):
        import os

        os.environ["MILKD_PROJECTS"] = tempfile.mkdtemp(prefix="milkd-bench-projects-")

    import napari
    import torch
    from napari.qt.threading import create_worker
    from qtpy.QtCore import QCoreApplication, QElapsedTimer, QTimer

    from napari_milkd.core.engine.config import TrainConfig
    from napari_milkd.core.engine.datasets import BagSet
    from napari_milkd.core.engine.models import build_model
    from napari_milkd.core.engine.train import train_teacher
    from napari_milkd.core.inference.stream import open_prediction, predict_slide
    from napari_milkd.core.slides.sample import ensure_sample_slide
    from napari_milkd.core.slides.slide import open_slide
    from napari_milkd.core.slides.tiling import tile_grid
    from napari_milkd.core.slides.tissue import slide_tissue

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    sample = ensure_sample_slide()
    viewer = napari.Viewer(show=True)
    viewer.open(str(sample.path), plugin="napari-milkd")
    app = QCoreApplication.instance()
    assert app is not None

    clock = QElapsedTimer()
    stalls: list[float] = []
    last = [0.0]

    def tick() -> None:
        now = clock.nsecsElapsed() / 1e6
        stalls.append(max(0.0, now - last[0] - args.tick))
        last[0] = now

    timer = QTimer()
    timer.setInterval(int(args.tick))
    timer.timeout.connect(tick)

    # Python's full (generation-2) collections run on whichever thread allocates: the longest of them
    # during a measurement is reported (``gc2_max_ms``), as a stall the code measured does not choose.
    gc_pauses: list[float] = []
    gc_started = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            gc_started[0] = time.perf_counter()
        else:
            gc_pauses.append((time.perf_counter() - gc_started[0]) * 1000)

    gc.callbacks.append(on_gc)

    def measure(
        start: Callable[[Callable[[], None]], Any] | None, seconds: float | None = None
    ) -> dict[str, Any]:
        stalls.clear()
        gc_pauses.clear()
        finished = [False]

        def done() -> None:
            finished[0] = True

        clock.start()
        last[0] = 0.0
        timer.start()
        t0 = time.perf_counter()
        if start is not None:
            start(done)
        while not finished[0] and (seconds is None or time.perf_counter() - t0 < seconds):
            app.processEvents()
            time.sleep(0.001)
            if start is None and time.perf_counter() - t0 >= (seconds or 0):
                break
        timer.stop()
        out = _stats(stalls[1:])
        out["_stalls"] = list(stalls[1:])  # the actions bench pools these; dropped from the report
        out["seconds"] = round(time.perf_counter() - t0, 1)
        out["gc2_max_ms"] = round(max(gc_pauses, default=0.0), 1)
        return out

    size = 128
    rng = np.random.default_rng(0)
    n = 48
    images = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
    labels = (np.arange(n) % 2).astype(np.uint8)
    bags = BagSet.from_arrays(images, labels, names=[f"b{i}" for i in range(n)])
    config = TrainConfig(
        backbone=args.backbone,
        weights="random",
        size=size,
        batch_size=8,
        teacher_epochs=args.epochs,
        device="cpu",
    )
    torch.manual_seed(0)
    model = build_model(args.backbone, "random")
    work = Path(tempfile.mkdtemp(prefix="milkd-bench-gui-"))

    def train_job(done: Callable[[], None]) -> Any:
        worker = create_worker(train_teacher, bags, None, config)
        worker.yielded.connect(lambda event: None)
        worker.finished.connect(done)
        worker.start()
        return worker

    def predict_gen(out: Path) -> Any:
        source = open_slide(sample.path)
        grid = tile_grid(source.info, mpp=1.0, tile=size, overlap=16, tissue=slide_tissue(source))
        try:
            result = yield from predict_slide(
                model, source, grid, out, device="cpu", batch_size=16, resume=False
            )
        finally:
            source.close()
        return result

    def predict_job(live: bool) -> Callable[[Callable[[], None]], Any]:
        def start(done: Callable[[], None]) -> Any:
            out = work / f"pred_{int(live)}.zarr"
            worker = create_worker(predict_gen, out)
            state = {"rows": 0, "layer": None}

            def on_event(event: Any) -> None:
                if not live or not event.rows_done or event.rows_done <= state["rows"]:
                    return
                _, mask, facts = open_prediction(out)
                if state["layer"] is None:
                    ds = facts["downsample"] * (facts["slide_mpp"] or 1)
                    state["layer"] = viewer.add_labels(
                        np.zeros(mask.shape, np.uint8), name="prediction", scale=(ds, ds)
                    )
                layer = state["layer"]
                r0, r1 = state["rows"], event.rows_done
                layer.data[r0:r1] = mask[r0:r1]
                layer.refresh()
                state["rows"] = r1

            worker.yielded.connect(on_event)
            worker.finished.connect(done)
            worker.start()
            return worker

        return start

    def slide_job(done: Callable[[], None]) -> Any:
        from napari_milkd._widget.slide_layers import SlideLayers
        from napari_milkd.core.engine.presets import schedule
        from napari_milkd.core.session.jobs import MapPreview
        from napari_milkd.core.session.project import Project
        from napari_milkd.core.session.slide_session import SlideSession
        from napari_milkd.core.slides.geometry import tissue_map
        from napari_milkd.core.slides.sample import coarse_regions

        session = SlideSession(sample.path, project=Project(work / "project"))
        session.prepare(1.0, size)
        assert session.work is not None
        session.set_weak_labels(
            coarse_regions(session.work.downsample, session.work.shape, tissue_map(session.work))
        )
        layers = SlideLayers(viewer)
        layers.attach(viewer.layers[0].name, session.work.downsample)
        job = session.train_job(
            "teacher", schedule("quick", backbone=args.backbone, teacher_epochs=args.epochs, device="cpu")
        )

        def run() -> Any:
            return (yield from job)

        worker = create_worker(run)
        worker.yielded.connect(lambda e: layers.show_preview(e) if isinstance(e, MapPreview) else None)
        worker.returned.connect(session.accept)
        worker.finished.connect(layers.drop_preview)
        worker.finished.connect(session.close)
        worker.finished.connect(done)
        worker.start()
        return worker

    report: dict[str, Any] = {
        "backbone": args.backbone,
        "tick_ms": args.tick,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "date": date.today().isoformat(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "bytecode": bytecode,
    }
    for _ in range(20):  # let the first draw finish
        app.processEvents()
        time.sleep(0.02)
    phases = args.phases.split(",")
    if "idle" in phases:
        report["idle"] = measure(None, args.idle_seconds)
    if "train" in phases:
        report["train"] = measure(train_job)
    if "predict" in phases:
        report["predict"] = measure(predict_job(False))
    if "predict_live" in phases:
        report["predict_live"] = measure(predict_job(True))
    if "slide_job" in phases:
        report["slide_job"] = measure(slide_job)
    if "actions" in phases:
        sys.path.insert(0, str(Path(__file__).parent))
        import contextlib

        from bench_gui_actions import run_actions

        with contextlib.redirect_stdout(sys.stderr):  # the widget's notifications are echoed to stdout
            report["actions"] = run_actions(viewer, app, measure, work)
    viewer.close()
    for value in report.values():
        if isinstance(value, dict):
            value.pop("_stalls", None)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
