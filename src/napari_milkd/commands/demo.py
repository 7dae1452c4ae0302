"""``milkd demo``: the main job on the built-in sample slide.

* ``milkd demo`` opens napari with the sample slide and the milkd widget docked.
* ``milkd demo --headless --out DIR`` runs the pipeline without a display on the sample slide: weak
  labels from its known regions → MIL teacher → IFKD student → export. It writes ``DIR/teacher.geojson``,
  ``DIR/student.geojson`` (QuPath), ``DIR/summary.json`` (Dice of teacher and student against the true
  tumour, bag counts, timings), ``DIR/overview.png`` and ``DIR/checkpoints/``. ``--slide`` runs only
  the tissue and tile steps on another slide (its weak labels are not known).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from napari_milkd.commands._settings import add_setting_flags
from napari_milkd.core.engine.presets import PRESET_NAMES


def register(subparsers: Any) -> None:
    """Add the ``demo`` subcommand."""
    parser = subparsers.add_parser("demo", help="open napari with the sample slide (or run headless)")
    parser.add_argument("--headless", action="store_true", help="no display: run the pipeline, write files")
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (headless)")
    parser.add_argument("--slide", type=Path, default=None, help="a slide instead of the sample")
    parser.add_argument("--mpp", type=float, default=None, help="µm/px when the slide does not say")
    parser.add_argument("--work-mpp", type=float, default=1.0, help="working resolution, µm/px (default 1)")
    parser.add_argument("--tile", type=int, default=128, help="tile size in pixels (default 128)")
    add_setting_flags(parser, ("backbone",))
    parser.add_argument(
        "--preset", default="quick", choices=PRESET_NAMES, help="training schedule (default quick)"
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="teacher epochs (default: the preset's); the student trains twice as many, with a role "
        "reversal every third",
    )
    add_setting_flags(parser, ("batch_size", "device", "seed"), defaults={"seed": 0})
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
    viewer.window.add_plugin_dock_widget("napari-milkd", "Slide masks")
    napari.run()
    return 0


def run_headless(args: argparse.Namespace) -> int:
    """Sample slide → weak labels → teacher → student → GeoJSON export, with a summary and a picture.

    Drives the same :class:`~napari_milkd.core.session.slide_session.SlideSession` as the widget, with
    ``DIR`` as its project folder. On the sample slide the weak labels are the coarse regions a
    pathologist would paint around its known tumour (:func:`~napari_milkd.core.slides.sample.
    coarse_regions`) and the summary scores both masks against the true tumour. ``--slide`` runs only the
    tissue/tile steps (no weak labels known).
    """
    from napari_milkd.core.atomic import atomic_path, write_json_atomic
    from napari_milkd.core.errors import InputError, write_error
    from napari_milkd.core.session.project import Project
    from napari_milkd.core.session.slide_session import SlideSession
    from napari_milkd.core.slides.sample import ensure_sample_slide

    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(args.out, exc) from exc
    if not os.access(args.out, os.W_OK):
        raise InputError(f"output folder is not writable: {args.out}")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    sample = ensure_sample_slide() if args.slide is None else None
    path = sample.path if sample is not None else args.slide
    timings["slide_s"] = time.perf_counter() - t0
    session = SlideSession(
        path, slide_mpp=args.mpp, project=Project(args.out), mpp_hint="pass --mpp (e.g. --mpp 0.5)"
    )
    info = session.info
    t1 = time.perf_counter()
    session.prepare(args.work_mpp, args.tile)
    work = session.work
    assert work is not None
    timings["tissue_tiles_s"] = time.perf_counter() - t1
    summary: dict[str, Any] = {
        "slide": info.to_dict(),
        "mpp_source": info.mpp_source,
        "work_mpp": work.grid.mpp,
        "work_level": work.grid.level,
        "tile_px": work.grid.tile,
        "n_tiles": len(work.grid),
        "tissue_fraction": work.tissue.fraction,
    }
    if sample is not None:
        summary |= _train_and_export(session, args, timings)
    overview, overview_ds = _overview(session, sample, session.mask("student"))
    with atomic_path(args.out / "overview.png") as tmp:
        import imageio.v3 as iio

        iio.imwrite(tmp, overview, extension=".png")
    summary["overview_downsample"] = overview_ds
    summary["timings"] = timings
    write_json_atomic(args.out / "summary.json", summary)
    scores = ""
    if "dice_teacher" in summary:
        teacher, student = summary["dice_teacher"], summary["dice_student"]
        scores = f"; Dice vs true tumour: teacher {teacher:.3f}, student {student:.3f}"
    print(f"{Path(info.path).name}: {len(work.grid)} tissue tiles{scores}; wrote {args.out}/")
    return 0


def _train_and_export(session: Any, args: argparse.Namespace, timings: dict[str, float]) -> dict[str, Any]:
    """Teacher and student on the sample's coarse regions (the ``--preset`` schedule); masks exported
    as QuPath GeoJSON with the export policy every front end shares."""
    import json

    from napari_milkd.commands._progress import ProgressPrinter
    from napari_milkd.core.engine.metrics import f1_score
    from napari_milkd.core.engine.presets import schedule
    from napari_milkd.core.slides.sample import coarse_regions, truth_mask

    work, mpp = session.work, session.info.mpp
    session.set_weak_labels(coarse_regions(work.downsample, work.shape, session.tissue))
    n_pos, n_neg = session.bag_counts()
    config = schedule(
        args.preset,
        backbone=args.backbone,
        teacher_epochs=args.epochs,
        batch_size=args.batch_size,
        device=args.device,
        seed=args.seed,
    )
    truth = np.zeros(work.shape, bool)
    t = truth_mask(work.downsample)
    truth[: t.shape[0], : t.shape[1]] = t[: work.shape[0], : work.shape[1]]
    result: dict[str, Any] = {
        "n_positive_bags": n_pos,
        "n_negative_bags": n_neg,
        "backbone": config.backbone,
        "preset": args.preset,
        "teacher_epochs": config.teacher_epochs,
        "student_epochs": config.student_epochs,
    }
    map_px_mm2 = (work.downsample * mpp) ** 2 / 1e6
    for stage in ("teacher", "student"):
        t0 = time.perf_counter()
        with ProgressPrinter() as progress:
            session.train(stage, config, resume=False, on_event=progress)
        timings[f"{stage}_s"] = time.perf_counter() - t0
        mask = session.mask(stage) > 0
        written = session.export(stage, "geojson", args.out / f"{stage}.geojson")
        result[f"dice_{stage}"] = f1_score(mask, truth)
        result[f"{stage}_features"] = len(json.loads(written.read_text())["features"])
        result[f"{stage}_area_mm2"] = float(mask.sum() * map_px_mm2)
    result["true_tumour_area_mm2"] = float(truth.sum() * map_px_mm2)
    return result


def _overview(session: Any, sample: Any, student: np.ndarray | None) -> tuple[np.ndarray, float]:
    """A picture of the slide (≤ 1600 px) with tissue tinted, tile borders, the true tumour outline (cyan)
    and the student's mask outline (yellow; holes smaller than a tile's area filled, for the picture
    only), and a legend saying so."""
    from skimage.transform import resize

    from napari_milkd.core.slides.slide import open_slide

    info, work = session.info, session.work
    level = max(
        (i for i, lv in enumerate(info.levels) if max(lv.width, lv.height) >= 800),
        default=len(info.levels) - 1,
    )
    lv = info.levels[level]
    source = open_slide(session.slide_path, mpp=session.slide_mpp)
    try:
        rgb = source.read(level, 0, 0, lv.height, lv.width)
    finally:
        source.close()
    step = max(1, int(np.ceil(max(lv.width, lv.height) / 1600)))
    rgb = rgb[::step, ::step].astype(np.float32)
    ds = lv.downsample * step
    shape = rgb.shape[:2]
    tint = resize(work.tissue.mask.astype(np.float32), shape, order=0) > 0.5
    rgb[tint] = 0.75 * rgb[tint] + 0.25 * np.array([0, 160, 0])
    out = rgb.astype(np.uint8)
    grid = work.grid
    for i in range(len(grid)):
        y0, x0, y1, x1 = (round(v / ds) for v in grid.bounds_l0(i))
        y1, x1 = min(y1, shape[0] - 1), min(x1, shape[1] - 1)
        out[y0, x0:x1] = out[y1, x0:x1] = (90, 90, 90)
        out[y0:y1, x0] = out[y0:y1, x1] = (90, 90, 90)
    legend = [("tissue (tint)", (0, 160, 0)), ("tiles", (90, 90, 90))]
    if student is not None:
        from skimage.measure import find_contours
        from skimage.morphology import remove_small_holes

        filled = remove_small_holes(student > 0, max_size=grid.tile * grid.tile)
        small = resize(filled.astype(np.float32), shape, order=0)
        for contour in find_contours(small, 0.5):
            _draw_closed_polyline(out, contour, (255, 200, 0))
        legend.append(("student mask", (255, 200, 0)))
    if sample is not None:
        _draw_closed_polyline(out, sample.tumour_polygon_l0[:, ::-1] / ds, (0, 229, 255))
        legend.append(("true tumour", (0, 229, 255)))
    return _with_legend(out, legend), ds


def _with_legend(image: np.ndarray, entries: list[tuple[str, tuple[int, int, int]]]) -> np.ndarray:
    """``image`` with a small white legend box (a colour swatch and a name per entry) at its top left."""
    from PIL import Image, ImageDraw

    picture = Image.fromarray(image)
    draw = ImageDraw.Draw(picture)
    row, pad, swatch = 18, 8, 12
    width = pad * 3 + swatch + 7 * max(len(name) for name, _ in entries)
    box = (4, 4, 4 + width, 4 + pad * 2 + row * len(entries))
    draw.rectangle(box, fill=(255, 255, 255), outline=(0, 0, 0))
    for i, (name, color) in enumerate(entries):
        y = 4 + pad + i * row
        draw.rectangle((4 + pad, y + 2, 4 + pad + swatch, y + 2 + swatch), fill=color, outline=(0, 0, 0))
        draw.text((4 + pad * 2 + swatch, y), name, fill=(0, 0, 0))
    return np.asarray(picture)


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
