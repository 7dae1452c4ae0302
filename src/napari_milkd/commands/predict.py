"""``milkd predict --run RUN_DIR SLIDE... --out DIR``: a trained model over whole slides.

Per slide: ``DIR/<name>.zarr`` (OME-Zarr: probability image + ``labels/tumour`` mask) and
``DIR/<name>.geojson`` (QuPath), a progress bar, and one summary line on stdout. One slide runs in this
process (per-tile progress bar); several run in parallel on Dask distributed: a local cluster by default,
an existing one with ``--scheduler ADDRESS`` (progress bar per finished slide). Re-running the same command
resumes interrupted slides and skips finished ones. torch and dask are imported inside :func:`run` only.

A cohort goes on past a bad slide: each failure is one ``milkd: error: <name>: <reason>`` line, a last
line counts slides written and failed, and the exit code is 2 when any failed. The output folder is
checked before any work, locked for the run (``.milkd-predict.lock``: pid and host), and only milkd's own
outputs in it are ever replaced (see ``docs/cohort.md``).

The model runs at the µm/px, tile size and overlap its checkpoint records (its input spec). ``--mpp`` only
fills in the µm/px of a checkpoint that does not record one; one that contradicts the checkpoint is an
error, never a silent replacement.

``--cascade`` (off by default) predicts coarse-to-fine (``core/inference/cascade.py``, ``docs/cli.md``):
the model at ``--cascade-factor`` × its µm/px first, then at its µm/px only where that coarse probability
reaches ``--cascade-low``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

from napari_milkd.core.errors import InputError
from napari_milkd.core.inference.cascade import DEFAULT_FACTOR, DEFAULT_LOW


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
        "--slide-mpp",
        type=float,
        default=None,
        help="level-0 µm/px for slides whose file lacks it (never replaces a recorded one; warns)",
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--threshold", type=float, default=None, help="mask threshold (default: the checkpoint's)")
    p.add_argument(
        "--overlap", type=int, default=None, help="tile overlap in px (default: the checkpoint's, tile / 8)"
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA; slow first batch)")
    p.add_argument(
        "--backend",
        default="torch",
        help="torch (default) or onnx: the model exported once (cached) and run by ONNX Runtime on the CPU, "
        "3–4× torch on 2 cores, same masks (pip install 'napari-milkd[onnx]')",
    )
    p.add_argument("--read-threads", type=int, default=4, help="tile-reading threads per slide (default 4)")
    p.add_argument("--scheduler", default=None, help="address of a running Dask scheduler (tcp://host:8786)")
    p.add_argument(
        "--workers", type=int, default=None, help="local Dask workers (default: 1 on CUDA, else cores / 2)"
    )
    p.add_argument("--no-resume", action="store_true", help="recompute slides whose zarr already exists")
    p.add_argument(
        "--cascade",
        action="store_true",
        help=(
            "coarse-to-fine: predict at --cascade-factor × the model's µm/px, then at its µm/px only the "
            "tiles whose coarse probability reaches --cascade-low (the rest keep the coarse prediction)"
        ),
    )
    p.add_argument(
        "--cascade-factor",
        type=float,
        default=None,
        metavar="F",
        help=f"coarse µm/px = this × the model's µm/px (> 1; default {DEFAULT_FACTOR:g}; needs --cascade)",
    )
    p.add_argument(
        "--cascade-low",
        type=float,
        default=None,
        metavar="P",
        help=(
            "refine a tile when any coarse pixel under it has probability ≥ this "
            f"(in [0, 1]; default {DEFAULT_LOW:g}; 0 refines every tile; needs --cascade)"
        ),
    )
    p.add_argument(
        "--cascade-high",
        type=float,
        default=None,
        metavar="P",
        help=(
            "also skip tiles whose coarse pixels are all ≥ this: they keep the coarse tumour "
            "(in (--cascade-low, 1]; default: off, every such tile is refined; needs --cascade)"
        ),
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per slide instead of a line")
    p.set_defaults(func=run)


def _check(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be ≥ 1, got {args.batch_size}")
    for flag in ("mpp", "slide_mpp"):
        value = getattr(args, flag)
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise InputError(f"--{flag.replace('_', '-')} must be a positive, finite number, got {value}")
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise InputError(f"--threshold must be in [0, 1], got {args.threshold}")
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers must be ≥ 1, got {args.workers}")
    if args.read_threads < 1:
        raise InputError(f"--read-threads must be ≥ 1, got {args.read_threads}")
    _check_cascade(args)
    _check_backend(args)
    if (args.scheduler is not None or (args.workers or 1) > 1) and not _has_distributed():
        flag = "--scheduler" if args.scheduler is not None else "--workers"
        raise InputError(f"{flag} needs Dask distributed: pip install 'napari-milkd[cohort]'")


def _check_backend(args: argparse.Namespace) -> None:
    from napari_milkd.core.inference.stream import InferenceRuntime

    if args.backend not in InferenceRuntime.BACKENDS:
        known = ", ".join(InferenceRuntime.BACKENDS)
        raise InputError(f"unknown --backend {args.backend!r}; choose one of {known}")
    if args.backend == "onnx":
        from napari_milkd.core.inference.onnx_backend import require_onnxruntime

        require_onnxruntime()
        if args.compile:
            raise InputError("--compile is for the torch backend; --backend onnx runs ONNX Runtime")
        if args.device not in ("auto", "cpu"):
            raise InputError(f"--backend onnx runs on the CPU; --device {args.device} is for --backend torch")


def _check_cascade(args: argparse.Namespace) -> None:
    from napari_milkd.core.inference.cascade import check_settings

    given = [f for f in ("cascade_factor", "cascade_low", "cascade_high") if getattr(args, f) is not None]
    if given and not args.cascade:
        raise InputError(f"--{given[0].replace('_', '-')} needs --cascade")
    if args.cascade:
        check_settings(*_cascade_values(args))


def _cascade_values(args: argparse.Namespace) -> tuple[float, float, float | None]:
    factor = DEFAULT_FACTOR if args.cascade_factor is None else args.cascade_factor
    low = DEFAULT_LOW if args.cascade_low is None else args.cascade_low
    return factor, low, args.cascade_high


#: What to install for parallel cohorts, said once when several slides run one after another instead.
NO_DISTRIBUTED_NOTE = (
    "milkd: note: Dask distributed is not installed, so the slides are predicted one after another "
    "(pip install 'napari-milkd[cohort]' to predict several at once)"
)


def _has_distributed() -> bool:
    """Whether the optional ``[cohort]`` extra (Dask distributed) is importable."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        return False
    return True


def _print_summary(summary: Any, as_json: bool) -> None:
    print(json.dumps(summary.to_dict()) if as_json else summary.line(), flush=True)


def _bar(total: int, desc: str, unit: str) -> Any:
    """A bar of finished slides on a terminal; in a log none (each slide's summary line says it)."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        dynamic_ncols=True,
        leave=True,
        disable=not sys.stderr.isatty(),
    )


def _local_workers(args: argparse.Namespace, n_slides: int) -> int:
    if args.workers is not None:
        return min(args.workers, n_slides)
    if args.device.startswith("cuda") or args.device == "auto":
        import torch

        if torch.cuda.is_available():
            return 1  # one process per GPU; see docs/cohort.md for several GPUs
    return max(1, min(n_slides, (os.cpu_count() or 2) // 2))


def run(args: argparse.Namespace) -> int:
    """Predict every slide; print one summary line per slide, one error line per slide that failed, and
    (for several slides) a last line counting both. Exit 0 when every slide was written, else 2."""
    from napari_milkd.commands._progress import ProgressPrinter
    from napari_milkd.core.errors import MilkdError
    from napari_milkd.core.inference.cohort import (
        SlideFailure,
        check_outputs,
        lock_output,
        plan_cohort,
        run_local,
        slide_job,
    )
    from napari_milkd.core.progress import drain

    _check(args)
    options: dict[str, Any] = {
        "mpp": args.mpp,
        "batch_size": args.batch_size,
        "device": args.device,
        "threshold": args.threshold,
        "overlap": args.overlap,
        "compile": args.compile,
        "backend": args.backend,
        "read_threads": args.read_threads,
        "resume": not args.no_resume,
    }
    if args.cascade:
        factor, low, high = _cascade_values(args)
        options.update(cascade=True, cascade_factor=factor, cascade_low=low, cascade_high=high)
    single = len(args.slides) == 1
    # Everything that can be checked is checked before --out is created or any slide is predicted.
    plan = plan_cohort(args.slides, args.run, args.out, slide_mpp=args.slide_mpp, **options)
    for warning in plan.warnings:
        print(f"milkd: warning: {warning}", file=sys.stderr, flush=True)
    if single and plan.failures:
        raise MilkdError(plan.failures[0].reason)
    failures: list[SlideFailure] = []
    written: list[str] = []

    def failed(failure: SlideFailure) -> None:
        failures.append(failure)
        if args.json:
            print(json.dumps(failure.to_dict()), flush=True)
        print(f"milkd: error: {failure.line()}", file=sys.stderr, flush=True)

    def done(summary: Any) -> None:
        written.append(summary.name)
        _print_summary(summary, args.json)

    for failure in plan.failures:
        failed(failure)
    if plan.jobs:
        with lock_output(args.out):
            jobs = []
            for job in plan.jobs:
                try:
                    check_outputs(args.out, job.name, resume=job.resume)
                except MilkdError as exc:
                    if single:
                        raise
                    failed(SlideFailure(job.name, job.slide, str(exc)))
                    continue
                jobs.append(job)
            if jobs:  # what is about to run, once nothing stands in its way
                print(f"milkd: {plan.model}", file=sys.stderr, flush=True)
            if single and args.scheduler is None:
                with ProgressPrinter() as progress:
                    summary = drain(slide_job(jobs[0]), progress)
                done(summary)
            elif jobs and args.scheduler is None and (len(jobs) == 1 or not _has_distributed()):
                if len(jobs) > 1:
                    print(NO_DISTRIBUTED_NOTE, file=sys.stderr, flush=True)
                with ProgressPrinter() as progress:
                    run_local(jobs, progress, on_done=done, on_fail=failed)
            elif jobs:
                _run_dask(args, jobs, done, failed)
    if not single:
        names = ", ".join(f.name for f in failures)
        print(
            f"milkd: {len(written)} of {len(args.slides)} slides written, {len(failures)} failed"
            + (f" ({names}); re-run the same command to retry only those" if failures else ""),
            file=sys.stderr,
            flush=True,
        )
    return 2 if failures else 0


def _run_dask(args: argparse.Namespace, jobs: list[Any], done: Any, failed: Any) -> None:
    from dataclasses import replace

    from distributed import Client, LocalCluster

    from napari_milkd.core.inference.cohort import run_on_dask

    if args.scheduler is not None:
        client = Client(args.scheduler)
        cluster = None
    else:
        n_workers = _local_workers(args, len(jobs))
        threads = max(1, (os.cpu_count() or 2) // n_workers)
        jobs = [replace(job, torch_threads=threads) for job in jobs]
        cluster = LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = Client(cluster)
    try:
        print(f"dask scheduler: {client.scheduler.address}", file=sys.stderr)
        bar = _bar(len(jobs), "slides", "slide")
        try:

            def one_done(summary: Any) -> None:
                bar.clear()
                done(summary)
                bar.update(1)

            def one_failed(failure: Any) -> None:
                bar.clear()
                failed(failure)
                bar.update(1)

            run_on_dask(jobs, client, on_done=one_done, on_fail=one_failed)
        finally:
            bar.close()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
