"""How long opening the dock from napari's Plugins menu spends importing the widget's modules, with no
slide open yet (napari imports a plugin's widget module on the GUI thread; nothing has preloaded it).

Each run is a fresh interpreter: a napari viewer opens and settles, then ``import napari_milkd._widget``
is timed, and the heavy modules it pulled in are listed. Prints one JSON object (median and every run).
Needs a display: ``xvfb-run -a .venv/bin/python benchmarks/bench_dock_import.py``. Set ``PYTHONPATH`` to
another checkout's ``src`` to measure that one.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
from datetime import UTC, datetime

RUN = """
import json, sys, time
import napari
from qtpy.QtWidgets import QApplication
viewer = napari.Viewer(show=True)
for _ in range(20):
    QApplication.processEvents()
    time.sleep(0.01)
start = time.perf_counter()
import napari_milkd._widget
ms = (time.perf_counter() - start) * 1000
heavy = [m for m in ("zarr", "scipy.ndimage", "shapely", "torch") if m in sys.modules]
viewer.close()
print(json.dumps({"import_ms": round(ms, 1), "heavy": heavy}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    runs = []
    for _ in range(args.runs):
        out = subprocess.run([sys.executable, "-c", RUN], capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    times = [r["import_ms"] for r in runs]
    print(
        json.dumps(
            {
                "median_ms": statistics.median(times),
                "runs_ms": times,
                "heavy": runs[-1]["heavy"],
                "machine": platform.machine(),
                "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                "command": "python benchmarks/bench_dock_import.py",
            }
        )
    )


if __name__ == "__main__":
    main()
