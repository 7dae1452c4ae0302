"""Rasterising regions in numpy calls of bounded size: speed, and how long a worker holds the GIL.

Prints one JSON object. For each case (random squares on a working map), ``polygons_to_index`` plus
``polygons_to_mask`` are timed with ``geometry.PIXELS_PER_CALL`` at the old size (8 M pixels) and at the
current one, alternating, in one run (this machine is shared: compare the two as a ratio). ``gil_ms``:
the longest gap of a main thread that sleeps 1 ms in a loop while a worker thread rasterises, i.e. the
longest the GUI thread would wait for the GIL during an *Import…*. The maps of the two sizes are checked
to be identical.

    .venv/bin/python benchmarks/bench_rasterise.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import threading
import time
from collections.abc import Callable
from datetime import date
from typing import Any

import numpy as np
import shapely

from napari_milkd.core.annotations import geometry

OLD_PIXELS_PER_CALL = 1 << 23
CASES = {
    "85 regions on 1536 x 2304": (85, (1536, 2304), (80, 400)),
    "300 regions on 6000 x 8000": (300, (6000, 8000), (200, 2500)),
}


def _squares(n: int, shape: tuple[int, int], sides: tuple[float, float], seed: int = 0) -> list[Any]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        side = float(rng.uniform(*sides))
        y, x = rng.uniform(0, shape[0] - side), rng.uniform(0, shape[1] - side)
        out.append(shapely.box(x, y, x + side, y + side))
    return out


def _longest_gap_ms(work: Callable[[], Any]) -> float:
    """Run ``work`` in a thread; the longest the main thread's 1-ms sleeps were kept waiting."""
    done = threading.Event()

    def run() -> None:
        work()
        done.set()

    thread = threading.Thread(target=run)
    longest, last = 0.0, time.perf_counter()
    thread.start()
    while not done.is_set():
        time.sleep(0.001)
        now = time.perf_counter()
        longest, last = max(longest, now - last), now
    thread.join()
    return round(longest * 1000, 1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    current = geometry.PIXELS_PER_CALL
    report: dict[str, Any] = {
        "machine": platform.machine(),
        "date": date.today().isoformat(),
        "command": "python benchmarks/bench_rasterise.py",
        "pixels_per_call": {"old": OLD_PIXELS_PER_CALL, "current": current},
        "cases": {},
    }
    try:
        for name, (n, shape, sides) in CASES.items():
            polygons = _squares(n, shape, sides)

            def both(shape: tuple[int, int] = shape, polygons: list[Any] = polygons) -> tuple[Any, Any]:
                return geometry.polygons_to_index(polygons, shape), geometry.polygons_to_mask(polygons, shape)

            seconds: dict[str, list[float]] = {"old": [], "current": []}
            gaps: dict[str, list[float]] = {"old": [], "current": []}
            maps: dict[str, tuple[Any, Any]] = {}
            for _ in range(args.repeats):
                for key, size in (("old", OLD_PIXELS_PER_CALL), ("current", current)):
                    geometry.PIXELS_PER_CALL = size
                    t0 = time.perf_counter()
                    maps[key] = both()
                    seconds[key].append(time.perf_counter() - t0)
                    gaps[key].append(_longest_gap_ms(both))
            identical = all(np.array_equal(a, b) for a, b in zip(maps["old"], maps["current"], strict=True))
            report["cases"][name] = {
                "seconds_min": {k: round(min(v), 3) for k, v in seconds.items()},
                "seconds_max": {k: round(max(v), 3) for k, v in seconds.items()},
                "speedup": round(min(seconds["old"]) / min(seconds["current"]), 2),
                "gil_ms_max": {k: max(v) for k, v in gaps.items()},
                "identical": identical,
            }
    finally:
        geometry.PIXELS_PER_CALL = current
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
