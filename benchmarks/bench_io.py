"""Read throughput: raw OpenSlide ``read_region``, the zarr view on OpenSlide and on native TIFF tiles.

Prints one JSON object per slide (one line each). Every method reads the same random windows at one
level, with a fresh handle (cold caches) per method and repeat; the methods are interleaved and their
order rotates across repeats, so machine noise hits them alike. Reported: best Mpx/s over the repeats
and ratios over raw ``read_region`` (≥ 1 means at least as fast). Methods:

* ``raw``: one ``openslide.OpenSlide.read_region`` per window, RGBA → RGB on white;
* ``zarr_openslide``: the lazy zarr view, chunks read through OpenSlide (``reader="openslide"``);
* ``zarr_native``: the lazy zarr view, chunks decoded from the TIFF tiles (``reader="native"``);
* ``read_native``: one ``TiffTileSource.read`` per window (tiles decoded in parallel).

Native columns are ``null`` for slides OpenSlide keeps (DICOM-WSI, MRXS, ...). Slides: paths, and with
``--shared`` every slide in ``../shared/data/wsi`` plus a GlaS mosaic built from ``../shared/data/glas_dev``
(``../shared/tools/glas_mosaic.py``, into the cache folder); the built-in sample slide when none given.

    .venv/bin/python benchmarks/bench_io.py [SLIDE ...] [--shared] [--level 0] [--window 512] [--n 24]
        [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import openslide

from napari_milkd.core.errors import SlideError
from napari_milkd.core.slides.sample import ensure_sample_slide, sample_cache_dir
from napari_milkd.core.slides.slide import open_slide, resolve_slide_path, rgba_to_rgb_on_white
from napari_milkd.core.slides.zarr_store import slide_levels

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"


def _windows(shape: tuple[int, int], size: int, n: int, seed: int = 0) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    h, w = shape
    return [
        (int(rng.integers(0, max(1, h - size))), int(rng.integers(0, max(1, w - size)))) for _ in range(n)
    ]


def _shared_slides() -> list[Path]:
    wsi = SHARED / "data" / "wsi"
    slides = sorted(p for p in wsi.iterdir() if p.suffix.lower() in {".svs", ".dicom", ".tif", ".tiff"})
    glas = SHARED / "data" / "glas_dev"
    if glas.is_dir():
        out = sample_cache_dir() / "bench-glas-mosaic"
        if not (out / "mosaic.tif").exists():
            subprocess.run(
                [
                    sys.executable,
                    str(SHARED / "tools" / "glas_mosaic.py"),
                    "--images",
                    str(glas / "images"),
                    "--masks",
                    str(glas / "masks"),
                    "--labels",
                    str(glas / "grade_train.csv"),
                    "--out",
                    str(out),
                ],
                check=True,
                capture_output=True,
            )
        slides.append(out / "mosaic.tif")
    return slides


def _bench_slide(path: Path, level: int, size: int, n: int, repeat: int) -> dict[str, object]:
    file = resolve_slide_path(path)
    with openslide.OpenSlide(str(file)) as probe:
        shape = probe.level_dimensions[level][::-1]
        ds = probe.level_downsamples[level]
        vendor = probe.properties.get("openslide.vendor", "?")
    wins = _windows(shape, size, n)
    try:
        with open_slide(path, reader="native"):
            native = True
    except SlideError:
        native = False

    def raw() -> None:
        with openslide.OpenSlide(str(file)) as s:
            for y, x in wins:
                rgb = np.asarray(s.read_region((round(x * ds), round(y * ds)), level, (size, size)))
                rgba_to_rgb_on_white(rgb)

    def zarr_view(reader: str) -> Callable[[], None]:
        def run() -> None:
            with open_slide(path, reader=reader) as source:
                arr = slide_levels(source)[level]
                for y, x in wins:
                    np.asarray(arr[y : y + size, x : x + size])

        return run

    def read_native() -> None:
        with open_slide(path, reader="native") as source:
            for y, x in wins:
                source.read(level, y, x, size, size)

    methods: dict[str, Callable[[], None]] = {"raw": raw, "zarr_openslide": zarr_view("openslide")}
    if native:
        methods |= {"zarr_native": zarr_view("native"), "read_native": read_native}
    names = list(methods)
    mpx = n * size * size / 1e6
    best: dict[str, float] = dict.fromkeys(names, 0.0)
    for r in range(repeat):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t = time.perf_counter()
            methods[name]()
            best[name] = max(best[name], mpx / (time.perf_counter() - t))
    result: dict[str, object] = {"slide": path.name, "vendor": vendor, "level": level, "window": size, "n": n}
    for name in ("raw", "zarr_openslide", "zarr_native", "read_native"):
        result[f"{name}_mpx_s"] = round(best[name], 2) if name in best else None
    for name in ("zarr_openslide", "zarr_native", "read_native"):
        result[f"ratio_{name}"] = round(best[name] / best["raw"], 3) if name in best else None
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("slides", nargs="*", type=Path)
    parser.add_argument("--shared", action="store_true", help="add ../shared/data/wsi and a GlaS mosaic")
    parser.add_argument("--level", type=int, default=0)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--n", type=int, default=24)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    slides = list(args.slides) + (_shared_slides() if args.shared else [])
    if not slides:
        slides = [ensure_sample_slide().path]
    machine = platform.processor() or platform.machine()
    for path in slides:
        result = _bench_slide(path, args.level, args.window, args.n, args.repeat)
        print(json.dumps(result | {"machine": machine}), flush=True)


if __name__ == "__main__":
    main()
