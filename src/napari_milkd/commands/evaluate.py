"""``milkd evaluate``: score a run's teacher and student on a labelled image folder.

With ``--json`` prints exactly one JSON object ``{"teacher": M, "student": M}``; each ``M`` holds
``f1_pos, iou_pos, hd_pos, hd95_pos, f1_neg, n_pos, n_neg`` (``null`` for a model the run lacks, e.g. the
teacher of a full-supervision run). torch is imported inside :func:`run` only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from napari_milkd.commands.train import add_data_arguments
from napari_milkd.core.errors import InputError


def register(subparsers: Any) -> None:
    """Add the ``evaluate`` subcommand."""
    p = subparsers.add_parser("evaluate", help="score a run's teacher and student against masks")
    p.add_argument("--run", required=True, help="run folder written by 'milkd train'")
    add_data_arguments(p, masks_required=True)
    p.add_argument("--sigma", type=float, default=3.0, help="Gaussian smoothing before thresholding (px)")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate ``teacher.pt`` and ``student.pt`` of the run."""
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
