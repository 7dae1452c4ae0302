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


def register(subparsers: Any) -> None:
    """Add the ``demo`` subcommand."""
    parser = subparsers.add_parser("demo", help="open napari with the sample slide (or run headless)")
    parser.add_argument("--headless", action="store_true", help="no display: run the pipeline, write files")
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (headless)")
    parser.add_argument("--slide", type=Path, default=None, help="a slide instead of the sample")
    parser.add_argument("--mpp", type=float, default=None, help="µm/px when the slide does not say")
    parser.add_argument("--work-mpp", type=float, default=1.0, help="working resolution, µm/px (default 1)")
    parser.add_argument("--tile", type=int, default=128, help="tile size in pixels (default 128)")
    parser.add_argument("--backbone", default="efficientnet_lite0", help="vgg16, efficientnet_lite0 or tiny")
    parser.add_argument(
        "--epochs",
        type=int,
        default=6,
        help="teacher epochs (default 6); the student trains twice as many, with a role reversal every third",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--seed", type=int, default=0)
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
    viewer.window.add_plugin_dock_widget("napari-milkd", "milkd")
    napari.run()
    return 0


def run_headless(args: argparse.Namespace) -> int:
    """Sample slide → weak labels → teacher → student → GeoJSON export, with a summary and a picture.

    On the sample slide the weak labels are the coarse regions a pathologist would paint around its
    known tumour (:func:`~napari_milkd.core.slides.sample.coarse_regions`) and the summary scores both
    masks against the true tumour. ``--slide`` runs only the tissue/tile steps (no weak labels known).
    """
    from napari_milkd.core.atomic import atomic_path, write_json_atomic
    from napari_milkd.core.errors import InputError, SlideError, write_error
    from napari_milkd.core.slides.geometry import plan_work
    from napari_milkd.core.slides.sample import ensure_sample_slide
    from napari_milkd.core.slides.slide import open_slide

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
    source = open_slide(path, mpp=args.mpp)
    try:
        info = source.info
        if not info.has_mpp:
            raise SlideError(f"{Path(info.path).name} has no µm/px; pass --mpp (e.g. --mpp 0.5)")
        t1 = time.perf_counter()
        work = plan_work(source, work_mpp=args.work_mpp, tile=args.tile)
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
        masks: dict[str, np.ndarray] = {}
        if sample is not None:
            summary |= _train_and_export(source, work, args, timings, masks)
        overview, overview_ds = _overview(source, work, sample, masks.get("student"))
    finally:
        source.close()
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


def _train_and_export(
    source: Any, work: Any, args: argparse.Namespace, timings: dict[str, float], masks: dict[str, np.ndarray]
) -> dict[str, Any]:
    """Teacher and student on the sample's coarse regions; masks exported as QuPath GeoJSON."""
    from napari_milkd.core.annotations import mask_to_polygons, write_geojson
    from napari_milkd.core.engine.config import TrainConfig
    from napari_milkd.core.engine.metrics import f1_score as dice
    from napari_milkd.core.engine.train import distill_student, load_model, train_teacher
    from napari_milkd.core.inference.masks import mask_from_probability
    from napari_milkd.core.inference.stream import predict_map
    from napari_milkd.core.session.labels import slide_bags
    from napari_milkd.core.slides.geometry import tissue_map
    from napari_milkd.core.slides.sample import coarse_regions, truth_mask

    tissue = tissue_map(work)
    regions = coarse_regions(work.downsample, work.shape, tissue)
    bags, labels, _ = slide_bags(source, work, regions)
    train, val = bags.split(0.2, seed=args.seed)
    config = TrainConfig(
        backbone=args.backbone,
        size=work.grid.tile,
        batch_size=args.batch_size,
        teacher_epochs=args.epochs,
        # The student learns from scratch what the teacher's maps show; it needs longer (the paper: 469
        # student epochs for 31 teacher epochs). On the sample, 6 → 12 student epochs: Dice 0.67 → 0.88.
        student_epochs=2 * args.epochs,
        switch_every=max(1, (2 * args.epochs) // 3),
        device=args.device,
        seed=args.seed,
    )
    ckpt = args.out / "checkpoints"
    truth = np.zeros(work.shape, bool)
    t = truth_mask(work.downsample)
    truth[: t.shape[0], : t.shape[1]] = t[: work.shape[0], : work.shape[1]]
    result: dict[str, Any] = {
        "n_positive_bags": labels.n_positive,
        "n_negative_bags": labels.n_negative,
        "backbone": args.backbone,
        "teacher_epochs": args.epochs,
        "student_epochs": 2 * args.epochs,
    }
    for stage in ("teacher", "student"):
        t0 = time.perf_counter()
        if stage == "teacher":
            gen = train_teacher(train, val, config, checkpoint=ckpt / "teacher.pt")
        else:
            gen = distill_student(
                train, val, config, teacher=ckpt / "teacher.pt", checkpoint=ckpt / "student.pt"
            )
        _drain_with_progress(gen, stage)
        timings[f"{stage}_train_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        model, _ = load_model(ckpt / f"{stage}.pt", device=args.device)
        prob = _drain_with_progress(predict_map(model, source, work.grid, device=args.device), f"{stage} map")
        timings[f"{stage}_predict_s"] = time.perf_counter() - t1
        mask = mask_from_probability(prob, tissue).astype(bool)
        masks[stage] = mask
        n = write_geojson(
            args.out / f"{stage}.geojson",
            mask_to_polygons(mask, work.downsample, simplify_px=1.0, min_area_px=4),
            mpp=source.info.mpp,
        )
        result[f"dice_{stage}"] = dice(mask, truth)
        result[f"{stage}_features"] = n
        result[f"{stage}_area_mm2"] = float(mask.sum() * (work.downsample * source.info.mpp) ** 2 / 1e6)
    result["true_tumour_area_mm2"] = float(truth.sum() * (work.downsample * source.info.mpp) ** 2 / 1e6)
    return result


def _drain_with_progress(gen: Any, label: str) -> Any:
    """Run a core generator to its end, drawing a one-line progress bar on stderr."""
    last = ""
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            sys.stderr.write("\n" if last else "")
            return stop.value
        if hasattr(event, "n_batches"):
            done, total = event.batch, event.n_batches
            text = f"{label}: epoch {event.epoch}/{event.n_epochs} batch {done}/{total} loss {event.loss:.4f}"
        elif hasattr(event, "total"):
            text = f"{label}: {event.done}/{event.total} tiles"
        else:
            continue
        last = text
        sys.stderr.write("\r" + text.ljust(72))
        sys.stderr.flush()


def _overview(source: Any, work: Any, sample: Any, student: np.ndarray | None) -> tuple[np.ndarray, float]:
    """A picture of the slide (≤ 1600 px) with tissue tinted, tile borders, the true tumour outline (cyan)
    and the student's mask outline (yellow)."""
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
    tint = resize(work.tissue.mask.astype(np.float32), shape, order=0) > 0.5
    rgb[tint] = 0.85 * rgb[tint] + 0.15 * np.array([0, 160, 0])
    out = rgb.astype(np.uint8)
    grid = work.grid
    for i in range(len(grid)):
        y0, x0, y1, x1 = (round(v / ds) for v in grid.bounds_l0(i))
        y1, x1 = min(y1, shape[0] - 1), min(x1, shape[1] - 1)
        out[y0, x0:x1] = out[y1, x0:x1] = (90, 90, 90)
        out[y0:y1, x0] = out[y0:y1, x1] = (90, 90, 90)
    if student is not None:
        from skimage.measure import find_contours

        small = resize(student.astype(np.float32), shape, order=0)
        for contour in find_contours(small, 0.5):
            _draw_closed_polyline(out, contour, (255, 200, 0))
    if sample is not None:
        _draw_closed_polyline(out, sample.tumour_polygon_l0[:, ::-1] / ds, (0, 229, 255))
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
