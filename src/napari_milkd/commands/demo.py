"""``milkd demo``: the main job on the built-in sample slide.

* ``milkd demo`` opens napari with the sample slide and the milkd widget docked.
* ``milkd demo --headless --out DIR`` runs the same steps without a display and writes
  ``DIR/summary.json`` (slide facts, tissue, tiles, ground-truth area, timings) and ``DIR/overview.png``
  (the slide with tissue, tiles and the true tumour outline drawn on it). ``--slide`` uses another slide.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def register(subparsers: Any) -> None:
    """Add the ``demo`` subcommand."""
    parser = subparsers.add_parser("demo", help="open napari with the sample slide (or run headless)")
    parser.add_argument("--headless", action="store_true", help="no display: run the pipeline, write files")
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (headless)")
    parser.add_argument("--slide", type=Path, default=None, help="a slide instead of the sample")
    parser.add_argument("--mpp", type=float, default=None, help="µm/px when the slide does not say")
    parser.add_argument("--work-mpp", type=float, default=2.0, help="working resolution, µm/px (default 2)")
    parser.add_argument("--tile", type=int, default=256, help="tile size in pixels (default 256)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the GUI demo, or the headless pipeline."""
    if args.headless:
        return run_headless(args)
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        from napari_milkd.core.errors import MilkdError

        raise MilkdError("no display found; run `milkd demo --headless --out DIR`, or use xvfb-run")
    import napari

    viewer = napari.Viewer(title="napari-milkd demo")
    if args.slide is not None:
        viewer.open(str(args.slide), plugin="napari-milkd")
    else:
        viewer.open_sample("napari-milkd", "sample_slide")
    viewer.window.add_plugin_dock_widget("napari-milkd", "Slide")
    napari.run()
    return 0


def run_headless(args: argparse.Namespace) -> int:
    """Sample (or given) slide → tissue → tile grid → ``summary.json`` + ``overview.png``."""
    from napari_milkd.core.atomic import atomic_path, write_json_atomic
    from napari_milkd.core.sample_slide import ensure_sample_slide
    from napari_milkd.core.slide import open_slide
    from napari_milkd.core.tiling import tile_grid
    from napari_milkd.core.tissue import slide_tissue

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    truth = None
    if args.slide is None:
        sample = ensure_sample_slide()
        path, truth = sample.path, sample
    else:
        path = args.slide
    timings["slide_s"] = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    if not os.access(args.out, os.W_OK):
        from napari_milkd.core.errors import InputError

        raise InputError(f"output folder is not writable: {args.out}")
    source = open_slide(path, mpp=args.mpp)
    try:
        info = source.info
        if not info.has_mpp:
            from napari_milkd.core.errors import SlideError

            raise SlideError(f"{Path(info.path).name} has no µm/px; pass --mpp (e.g. --mpp 0.5)")
        t1 = time.perf_counter()
        tissue = slide_tissue(source)
        timings["tissue_s"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        grid = tile_grid(info, mpp=args.work_mpp, tile=args.tile, tissue=tissue)
        timings["tiling_s"] = time.perf_counter() - t2
        overview, overview_ds = _overview(source, tissue.mask, tissue.downsample, grid, truth)
    finally:
        source.close()
    with atomic_path(args.out / "overview.png") as tmp:
        import imageio.v3 as iio

        iio.imwrite(tmp, overview, extension=".png")
    summary: dict[str, Any] = {
        "slide": info.to_dict(),
        "mpp_source": info.mpp_source,
        "work_mpp": grid.mpp,
        "work_level": grid.level,
        "tile_px": grid.tile,
        "n_tiles": len(grid),
        "tissue_fraction": tissue.fraction,
        "overview_downsample": overview_ds,
        "timings": timings,
    }
    if truth is not None:
        mask = truth.truth_mask(16)
        summary["true_tumour_area_mm2"] = float(mask.sum() * (16 * truth.mpp) ** 2 / 1e6)
    write_json_atomic(args.out / "summary.json", summary)
    print(
        f"{Path(info.path).name}: {len(grid)} tissue tiles of {grid.tile} px at {grid.mpp:g} µm/px; "
        f"wrote {args.out / 'summary.json'} and {args.out / 'overview.png'}"
    )
    return 0


def _overview(
    source: Any, tissue: np.ndarray, tissue_ds: float, grid: Any, truth: Any
) -> tuple[np.ndarray, float]:
    """A picture of the slide (≤ 1600 px) with tissue tinted, tile borders and the true tumour outline."""
    from skimage.transform import resize

    info = source.info
    level = max(
        (i for i, lv in enumerate(info.levels) if max(lv.width, lv.height) >= 800),
        default=len(info.levels) - 1,
    )
    lv = info.levels[level]
    rgb = source.read(level, 0, 0, lv.height, lv.width)
    step = max(1, int(np.ceil(max(lv.width, lv.height) / 1600)))
    rgb = rgb[::step, ::step].astype(np.float32)
    ds = lv.downsample * step
    shape = rgb.shape[:2]
    tint = resize(tissue.astype(np.float32), shape, order=0) > 0.5
    rgb[tint] = 0.85 * rgb[tint] + 0.15 * np.array([0, 160, 0])
    out = rgb.astype(np.uint8)
    for i in range(len(grid)):
        y0, x0, y1, x1 = (round(v / ds) for v in grid.bounds_l0(i))
        y1, x1 = min(y1, shape[0] - 1), min(x1, shape[1] - 1)
        out[y0, x0:x1] = out[y1, x0:x1] = (40, 40, 40)
        out[y0:y1, x0] = out[y0:y1, x1] = (40, 40, 40)
    if truth is not None:
        _draw_closed_polyline(out, truth.tumour_polygon_l0[:, ::-1] / ds, (0, 229, 255))
    return out, ds


def _draw_closed_polyline(image: np.ndarray, rc: np.ndarray, color: tuple[int, int, int]) -> None:
    """Draw a closed polyline of ``(row, col)`` vertices, 3 px wide, clipped to ``image``."""
    from skimage.draw import line

    h, w = image.shape[:2]
    pts = np.round(rc).astype(int)
    for (r0, c0), (r1, c1) in zip(pts, np.roll(pts, -1, axis=0), strict=True):
        rr, cc = line(r0, c0, r1, c1)
        for d in (-1, 0, 1):
            ok = (rr + d >= 0) & (rr + d < h) & (cc >= 0) & (cc < w)
            image[rr[ok] + d, cc[ok]] = color
