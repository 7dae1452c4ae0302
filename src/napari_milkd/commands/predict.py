"""``milkd predict --run RUN_DIR SLIDE... --out DIR``: a trained model over whole slides.

Per slide: ``DIR/<name>.zarr`` (OME-Zarr: probability image + ``labels/tumour`` mask) and
``DIR/<name>.geojson`` (QuPath), a progress bar, and one summary line on stdout. One slide runs in this
process (per-tile progress bar); several run in parallel on Dask distributed: a local cluster by default,
an existing one with ``--scheduler ADDRESS`` (progress bar per finished slide). Re-running the same command
resumes interrupted slides and skips finished ones. torch and dask are imported inside :func:`run` only.

The model runs at the µm/px, tile size and overlap its checkpoint records (its input spec). ``--mpp`` only
fills in the µm/px of a checkpoint that does not record one; one that contradicts the checkpoint is an
error, never a silent replacement.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from napari_milkd.core.errors import InputError


def register(subparsers: Any) -> None:
    """Add the ``predict`` subcommand."""
    p = subparsers.add_parser("predict", help="predict tumour masks over whole slides (OME-Zarr + GeoJSON)")
    p.add_argument("slides", nargs="+", metavar="SLIDE", help="slide files or DICOM-WSI folders")
    p.add_argument(
        "--run", required=True, help="a `milkd train` run folder (student.pt, else teacher.pt) or a .pt"
    )
    p.add_argument("--out", required=True, help="output folder for <name>.zarr and <name>.geojson")
    p.add_argument(
        "--mpp",
        type=float,
        default=None,
        help=(
            "µm/px of the model's training tiles: required when the checkpoint does not record it "
            "(e.g. trained without --image-mpp); an error when it records a different one"
        ),
    )
    p.add_argument(
        "--slide-mpp", type=float, default=None, help="level-0 µm/px for slides whose file lacks it"
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--threshold", type=float, default=None, help="mask threshold (default: the checkpoint's)")
    p.add_argument(
        "--overlap", type=int, default=None, help="tile overlap in px (default: the checkpoint's, tile / 8)"
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA; slow first batch)")
    p.add_argument("--read-threads", type=int, default=4, help="tile-reading threads per slide (default 4)")
    p.add_argument("--scheduler", default=None, help="address of a running Dask scheduler (tcp://host:8786)")
    p.add_argument(
        "--workers", type=int, default=None, help="local Dask workers (default: 1 on CUDA, else cores / 2)"
    )
    p.add_argument("--no-resume", action="store_true", help="recompute slides whose zarr already exists")
    p.add_argument("--json", action="store_true", help="print one JSON object per slide instead of a line")
    p.set_defaults(func=run)


def _check(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be ≥ 1, got {args.batch_size}")
    for flag in ("mpp", "slide_mpp"):
        value = getattr(args, flag)
        if value is not None and not value > 0:
            raise InputError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise InputError(f"--threshold must be in [0, 1], got {args.threshold}")
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers must be ≥ 1, got {args.workers}")
    if args.read_threads < 1:
        raise InputError(f"--read-threads must be ≥ 1, got {args.read_threads}")


def _print_summary(summary: Any, as_json: bool) -> None:
    print(json.dumps(summary.to_dict()) if as_json else summary.line(), flush=True)


def _bar(total: int, desc: str, unit: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=True)


def _local_workers(args: argparse.Namespace, n_slides: int) -> int:
    if args.workers is not None:
        return min(args.workers, n_slides)
    if args.device.startswith("cuda") or args.device == "auto":
        import torch

        if torch.cuda.is_available():
            return 1  # one process per GPU; see docs/cohort.md for several GPUs
    return max(1, min(n_slides, (os.cpu_count() or 2) // 2))


def run(args: argparse.Namespace) -> int:
    """Predict every slide; print one summary line per slide."""
    from napari_milkd.commands._progress import ProgressPrinter
    from napari_milkd.core.inference.cohort import make_jobs, run_on_dask, slide_job
    from napari_milkd.core.progress import drain

    _check(args)
    options: dict[str, Any] = {
        "mpp": args.mpp,
        "slide_mpp": args.slide_mpp,
        "batch_size": args.batch_size,
        "device": args.device,
        "threshold": args.threshold,
        "overlap": args.overlap,
        "compile": args.compile,
        "read_threads": args.read_threads,
        "resume": not args.no_resume,
    }
    if args.scheduler is None and len(args.slides) == 1:
        (job,) = make_jobs(args.slides, args.run, args.out, **options)
        with ProgressPrinter() as progress:
            summary = drain(slide_job(job), progress)
        _print_summary(summary, args.json)
        return 0

    from distributed import Client, LocalCluster

    if args.scheduler is not None:
        jobs = make_jobs(args.slides, args.run, args.out, **options)
        client = Client(args.scheduler)
        cluster = None
    else:
        n_workers = _local_workers(args, len(args.slides))
        threads = max(1, (os.cpu_count() or 2) // n_workers)
        jobs = make_jobs(args.slides, args.run, args.out, torch_threads=threads, **options)
        cluster = LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = Client(cluster)
    try:
        print(f"dask scheduler: {client.scheduler.address}", file=sys.stderr)
        bar = _bar(len(jobs), "slides", "slide")
        try:

            def done(summary: Any) -> None:
                bar.write(json.dumps(summary.to_dict()) if args.json else summary.line(), file=sys.stdout)
                bar.update(1)

            run_on_dask(jobs, client, on_done=done)
        finally:
            bar.close()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return 0
