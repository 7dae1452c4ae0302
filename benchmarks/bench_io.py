"""Read throughput of the lazy zarr view against raw OpenSlide ``read_region`` on the same windows.

Prints one JSON object. Both paths read the same random tile-aligned windows (level 0 by default) of
the slide, cold OpenSlide cache for each (a fresh handle per method); the ratio is zarr / raw (≥ 1 means
the zarr view is at least as fast). Slide: a path, or the built-in sample slide.

    .venv/bin/python benchmarks/bench_io.py [SLIDE] [--level 0] [--window 1024] [--n 24] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import openslide

from napari_milkd.core.slides.sample import ensure_sample_slide
from napari_milkd.core.slides.slide import open_slide, rgba_to_rgb_on_white
from napari_milkd.core.slides.zarr_store import slide_levels


def _windows(shape: tuple[int, int], size: int, n: int, seed: int = 0) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    h, w = shape
    return [
        (int(rng.integers(0, max(1, h - size))), int(rng.integers(0, max(1, w - size)))) for _ in range(n)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("slide", nargs="?", type=Path, default=None)
    parser.add_argument("--level", type=int, default=0)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--n", type=int, default=24)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    path = args.slide or ensure_sample_slide().path
    results: dict[str, list[float]] = {"raw_read_region_mpx_s": [], "zarr_view_mpx_s": []}
    for _ in range(args.repeat):
        with openslide.OpenSlide(str(path)) as raw:
            shape = raw.level_dimensions[args.level][::-1]
            wins = _windows(shape, args.window, args.n)
            ds = raw.level_downsamples[args.level]
            t = time.perf_counter()
            for y, x in wins:
                rgba = np.asarray(
                    raw.read_region((round(x * ds), round(y * ds)), args.level, (args.window, args.window))
                )
                rgba_to_rgb_on_white(rgba)
            raw_s = time.perf_counter() - t
        with open_slide(path) as source:
            arr = slide_levels(source)[args.level]
            t = time.perf_counter()
            for y, x in wins:
                np.asarray(arr[y : y + args.window, x : x + args.window])
            zarr_s = time.perf_counter() - t
        mpx = args.n * args.window**2 / 1e6
        results["raw_read_region_mpx_s"].append(mpx / raw_s)
        results["zarr_view_mpx_s"].append(mpx / zarr_s)
    raw_best = max(results["raw_read_region_mpx_s"])
    zarr_best = max(results["zarr_view_mpx_s"])
    print(
        json.dumps(
            {
                "slide": str(path),
                "level": args.level,
                "window": args.window,
                "windows": args.n,
                "raw_read_region_mpx_s": round(raw_best, 2),
                "zarr_view_mpx_s": round(zarr_best, 2),
                "ratio_zarr_over_raw": round(zarr_best / raw_best, 3),
                "machine": platform.processor() or platform.machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
