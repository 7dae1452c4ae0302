"""``milkd evaluate``: score a run's teacher and student on a labelled image folder.

With ``--images``, ``--json`` prints exactly one JSON object ``{"teacher": M, "student": M}``; each ``M``
holds ``f1_pos, iou_pos, hd_pos, hd95_pos, f1_neg, n_pos, n_neg`` (``null`` for a model the run lacks, e.g.
the teacher of a full-supervision run).

With ``--slides MANIFEST.csv`` (one row per slide with its ground truth: a label image or tumour polygons;
see ``docs/cli.md``), the run's model (``--model``: student, else teacher) predicts every slide at its input
spec, and tumour Dice, IoU and HD95 (µm) are scored per slide and pooled
(:mod:`napari_milkd.core.session.cohort_evaluation`); ``--json`` prints exactly one JSON object
``{"checkpoint", "work_mpp", "slides": [...], "overall": {...}, "warnings": [...]}``.
torch is imported inside :func:`run` only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from napari_milkd.commands.train import add_data_arguments, check_folder_arguments
from napari_milkd.core.errors import InputError


def register(subparsers: Any) -> None:
    """Add the ``evaluate`` subcommand."""
    p = subparsers.add_parser("evaluate", help="score a run's teacher and student against masks")
    p.add_argument("--run", required=True, help="run folder written by 'milkd train'")
    add_data_arguments(
        p,
        masks_required=True,
        slides_help="CSV manifest of slides with their ground truth (columns slide, truth, truth_downsample, "
        "truth_annotations, mpp; see docs/cli.md); exclusive with --images",
    )
    p.add_argument(
        "--sigma", type=float, default=3.0, help="with --images: Gaussian smoothing before thresholding (px)"
    )
    p.add_argument("--threshold", type=float, default=0.5, help="with --images: probability threshold")
    p.add_argument(
        "--model",
        choices=("auto", "teacher", "student"),
        default="auto",
        help="with --slides: the model scored (default auto: student.pt, else teacher.pt)",
    )
    p.add_argument("--class-map", help="with --slides: class → label file for truth_annotations")
    p.add_argument("--batch-size", type=int, default=16, help="with --slides: tiles per prediction batch")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate the run on an image folder (``--images``) or on whole slides (``--slides``)."""
    check_folder_arguments(args, masks_required=True)
    if args.slides is not None:
        return _run_slides(args)
    for flag in ("class_map",):
        if getattr(args, flag) is not None:
            raise InputError(f"--{flag.replace('_', '-')} belongs to --slides")
    return _run_folder(args)


def _run_slides(args: argparse.Namespace) -> int:
    """Predict every slide of the manifest with the run's model and score it against its truth."""
    import sys

    from napari_milkd.commands._progress import ProgressPrinter
    from napari_milkd.core.annotations.io import class_map_from
    from napari_milkd.core.progress import drain
    from napari_milkd.core.session.cohort_evaluation import evaluate_slides
    from napari_milkd.core.session.cohort_manifest import read_truth_manifest

    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    rows = read_truth_manifest(args.slides)
    class_map = class_map_from(args.class_map)
    job = evaluate_slides(
        rows, args.run, model=args.model, class_map=class_map, device=args.device, batch_size=args.batch_size
    )
    with ProgressPrinter() as progress:
        result = drain(job, progress)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0

    def cell(value: float | None, digits: str = ".4f") -> str:
        return "n/a" if value is None else format(value, digits)

    print(f"model: {result.checkpoint} at {result.work_mpp:g} µm/px")
    width = max([5, *(len(s.slide) for s in result.slides)])
    print(f"{'slide':<{width}} {'dice':>7} {'iou':>7} {'hd95_um':>9} {'truth_px':>10} {'pred_px':>10}")
    for s in result.slides:
        print(
            f"{s.slide:<{width}} {cell(s.dice):>7} {cell(s.iou):>7} {cell(s.hd95_um, '.1f'):>9} "
            f"{s.truth_px:>10} {s.predicted_px:>10}"
        )
    o = result.overall
    print(
        f"{'overall':<{width}} {cell(o['dice']):>7} {cell(o['iou']):>7} {cell(o['hd95_um'], '.1f'):>9} "
        f"{o['truth_px']:>10} {o['predicted_px']:>10}"
    )
    return 0


def _run_folder(args: argparse.Namespace) -> int:
    """Evaluate ``teacher.pt`` and ``student.pt`` of the run on an image folder."""
    from napari_milkd.core.engine.checkpoint import load_checkpoint
    from napari_milkd.core.engine.datasets import load_image_folder
    from napari_milkd.core.engine.evaluate import evaluate_checkpoint, input_size

    run_dir = Path(args.run)
    ckpts = {role: run_dir / f"{role}.pt" for role in ("teacher", "student")}
    present = {role: p for role, p in ckpts.items() if p.exists()}
    if not present:
        raise InputError(f"no teacher.pt or student.pt in {run_dir}")
    size_of = {role: input_size(load_checkpoint(p)) for role, p in present.items()}  # spec tile, else size
    sizes = set(size_of.values())
    results: dict[str, Any] = {"teacher": None, "student": None}
    bags_by_size = {}
    for size in sorted(sizes):
        bags_by_size[size] = load_image_folder(
            args.images,
            args.labels,
            args.name_column,
            args.label_column,
            args.positive,
            size,
            masks_dir=args.masks,
            keep_eval_masks=True,
            require_both_classes=False,
        )
    for role, path in present.items():
        summary, _ = evaluate_checkpoint(
            path, bags_by_size[size_of[role]], args.sigma, args.threshold, args.device
        )
        results[role] = summary.to_dict()
    if args.json:
        print(json.dumps(results))
        return 0
    keys = ("f1_pos", "iou_pos", "hd_pos", "hd95_pos", "f1_neg", "n_pos", "n_neg")
    print(f"{'model':<8} " + " ".join(f"{k:>9}" for k in keys))
    for role, m in results.items():
        if m is None:
            continue
        cells = [("    n/a" if m[k] is None else f"{m[k]:.4g}") for k in keys]
        print(f"{role:<8} " + " ".join(f"{c:>9}" for c in cells))
    return 0
