"""A mask layer's outline and its arrival in a viewer, napari's way and milkd's, in one run.

Prints one JSON object.

* ``outline``: napari's ``get_contours`` (scipy grey dilation and erosion) against milkd's
  :func:`~napari_milkd._widget.labels_outline.outline` (numpy minimum/maximum over shifted views) on a
  smooth two-label map the size of the sample slide's working map, for outline thickness 1–3, alternating,
  ``--repeats`` times each; the two results are checked to be identical.
* ``layer`` (needs a display: ``xvfb-run``): adding a hidden Labels layer of that map to a viewer as
  napari does it (``plain``: its brush and polygon overlays built in the add), and as
  :class:`~napari_milkd._widget.slide_layers.SlideLayers` does (``deferred``: overlays shown, so built,
  afterwards), then showing it (sliced and outlined: napari's outline, or milkd's), each step timed on
  the GUI thread.

    xvfb-run -a .venv/bin/python benchmarks/bench_outline.py [--repeats 3] [--no-viewer]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from datetime import date
from typing import Any

import numpy as np

SHAPE = (1536, 2304)


def _smooth_mask(shape: tuple[int, int]) -> np.ndarray:
    from scipy import ndimage

    noise = np.random.default_rng(0).random(shape)
    return (ndimage.gaussian_filter(noise, 20) > 0.5).astype(np.uint8)


def _ms(call: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = call()
    return round((time.perf_counter() - start) * 1000, 1), out


def bench_outline(mask: np.ndarray, repeats: int) -> dict[str, Any]:
    """Both outlines, alternating, per thickness: the times in ms, and whether they are identical."""
    from napari.layers.labels._labels_utils import get_contours

    from napari_milkd._widget.labels_outline import outline

    out: dict[str, Any] = {}
    for thickness in (1, 2, 3):
        napari_ms, milkd_ms, same = [], [], True
        for _ in range(repeats):
            t_napari, theirs = _ms(lambda: get_contours(mask, thickness, 0))  # noqa: B023
            t_milkd, ours = _ms(lambda: outline(mask, thickness, 0))  # noqa: B023
            napari_ms.append(t_napari)
            milkd_ms.append(t_milkd)
            same = same and bool(np.array_equal(theirs, ours))
        out[f"thickness {thickness}"] = {"napari_ms": napari_ms, "milkd_ms": milkd_ms, "identical": same}
    return out


def bench_layer(mask: np.ndarray, repeats: int) -> dict[str, Any]:
    """Add, build overlays, show: napari's way and milkd's, alternating, in one viewer (ms per step)."""
    import napari
    from napari.layers import Labels
    from qtpy.QtWidgets import QApplication

    from napari_milkd._widget.labels_outline import defer_overlays, outline_quickly, show_overlays

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    assert app is not None

    def settle() -> None:
        for _ in range(20):
            app.processEvents()
            time.sleep(0.005)

    viewer.add_image(np.random.default_rng(1).integers(0, 255, (*SHAPE, 3), dtype=np.uint8))
    settle()
    rows: dict[str, list[dict[str, float]]] = {"napari": [], "milkd": []}
    for i in range(repeats + 1):  # the first round warms napari's caches up and is dropped
        for way in rows:
            layer = Labels(mask.copy(), name=f"{way} {i}", visible=False)
            layer.contour = 2
            step: dict[str, float] = {}
            if way == "milkd":
                outline_quickly(layer)
                defer_overlays(layer)
            step["add_ms"], _ = _ms(lambda: viewer.add_layer(layer))  # noqa: B023
            if way == "milkd":
                settle()
                step["overlays_ms"], _ = _ms(lambda: show_overlays(layer))  # noqa: B023
            settle()
            step["show_ms"], _ = _ms(lambda: setattr(layer, "visible", True))  # noqa: B023
            settle()
            step["new_data_ms"], _ = _ms(lambda: setattr(layer, "data", 1 - layer.data))  # noqa: B023
            settle()
            if i:
                rows[way].append(step)
            viewer.layers.remove(layer)
            settle()
    viewer.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-viewer", action="store_true", help="only the outline (no display needed)")
    args = parser.parse_args()
    mask = _smooth_mask(SHAPE)
    report: dict[str, Any] = {
        "machine": platform.processor() or platform.machine(),
        "date": date.today().isoformat(),
        "map": f"{SHAPE[0]} x {SHAPE[1]} uint8, two labels",
        "outline": bench_outline(mask, args.repeats),
    }
    if not args.no_viewer:
        report["layer"] = bench_layer(mask, args.repeats)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
