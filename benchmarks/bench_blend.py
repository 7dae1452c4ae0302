"""The prediction stream's blend, tile by tile against one scatter-add per run of tiles, in one process.

``_stream_bands`` (read, forward, blend, bands) on ``bench_infer``'s generated JPEG slide of side SIZE,
every tile, alternating the two blends twice; prints seconds, tiles/s (best of two) and the largest
difference between their maps. From the repository root::

    python benchmarks/bench_blend.py cuda vgg16 20000 256     # cpu tiny 3000 16 to try it on a CPU
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_infer as bi
from napari_milkd.core.inference.stream import InferenceRuntime, _Band, _stream_bands, _StreamStats
from napari_milkd.core.slides.slide import open_slide

MODES = ("loop", "vectorised")


def main() -> None:
    """Parse ``DEVICE BACKBONE SIZE BATCH`` from argv, measure, print JSON."""
    dev, backbone, size, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    work = Path("/tmp/milkd_bench_blend")
    work.mkdir(exist_ok=True)
    source = open_slide(bi.make_slide(work / f"slide_{size}.tiff", size))
    grid = bi._grid(source, 0.5, None)
    model = bi._model(backbone)
    seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
    compute: dict[str, list[float]] = {mode: [] for mode in MODES}
    maps: dict[str, dict[int, np.ndarray | None]] = {}
    for _ in range(2):
        for mode in MODES:
            stats = _StreamStats()
            t0 = time.perf_counter()
            stream = _stream_bands(
                model, source, grid, InferenceRuntime(dev), band_rows=1024, bands_done=0, batch_size=batch,
                workers=14 if dev == "cuda" else 2, prefetch=4, stage="t", stats=stats,
                blend_vectorised=mode == "vectorised",
            )  # fmt: skip
            maps[mode] = {b.index: b.prob for b in stream if isinstance(b, _Band)}
            seconds[mode].append(round(time.perf_counter() - t0, 2))
            compute[mode].append(round(stats.compute_s, 2))
    loop, many = maps["loop"], maps["vectorised"]
    diff = max(float(np.abs(p - many[k]).max()) for k, p in loop.items() if p is not None)  # type: ignore[operator]
    print(json.dumps({
        "tiles": len(grid), "s": seconds, "compute_s": compute, "max_abs_diff": diff,
        "tiles_s": {mode: round(len(grid) / min(s), 1) for mode, s in seconds.items()},
    }))  # fmt: skip


if __name__ == "__main__":
    main()
