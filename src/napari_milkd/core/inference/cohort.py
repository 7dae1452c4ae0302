"""Whole-slide prediction of slide *files*, one at a time or many in parallel on Dask distributed.

Owns the job "slide file → tissue → tile grid at the model's µm/px →
:func:`~napari_milkd.core.inference.stream.predict_slide` → ``<name>.zarr`` + QuPath ``<name>.geojson`` →
:class:`SlideSummary`", how a run folder or checkpoint is resolved and which µm/px a model runs at (its
checkpoint's :class:`~napari_milkd.core.engine.spec.ModelSpec`; the user's ``--mpp`` only fills a spec
that lacks one and never replaces it), the output folder's safety (its location checked before any work,
a lock file naming the run that holds it, only milkd's own files ever replaced), and running a cohort so
that one bad slide never stops the others (:func:`plan_cohort`, :func:`run_local`, :func:`run_on_dask`).
Headless: may import numpy, torch (inside functions), dask/distributed (inside functions) and core modules.

A job gets only paths and plain values (:class:`PredictJob`, picklable), opens its slide and loads its
model itself, so the same function runs in this process or on any Dask worker, and gives the same bytes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import shutil
import socket
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from napari_milkd.core.atomic import atomic_path
from napari_milkd.core.engine.spec import ModelSpec, checkpoint_spec, default_overlap
from napari_milkd.core.errors import (
    CheckpointError,
    InputError,
    MilkdError,
    SlideError,
    WriteError,
    write_error,
)
from napari_milkd.core.inference.cascade import DEFAULT_FACTOR, DEFAULT_LOW
from napari_milkd.core.inference.stream import (
    PredictProgress,
    SlidePrediction,
    check_prediction_target,
    prediction_facts,
    stale_asides,
)
from napari_milkd.core.runtime import allocation_failure

#: The lock file a ``milkd predict`` run holds in its output folder (JSON: pid, host, start time).
LOCK_FILE = ".milkd-predict.lock"
#: The GeoJSON's copy inside a prediction zarr (the one ``<name>.geojson`` is copied from).
GEOJSON_COPY = "tumour.geojson"
#: How many GeoJSON hashes a prediction remembers as its own (earlier runs' outputs it may replace).
GEOJSON_HISTORY = 32


class MemoryLimitError(MilkdError):
    """A slide did not fit in the memory this process may use (``ulimit -v``, a container limit, RAM)."""


@dataclass(frozen=True)
class PredictJob:
    """Everything one slide's prediction needs, as plain values (sent to Dask workers as is).

    ``mpp`` is the µm/px of the model's training tiles as the user states it: required when the checkpoint's
    spec does not record one, and refused when it records a different one (``None``: the spec's);
    ``slide_mpp`` is the slide's level-0 µm/px for a file that does not record one (required then; never
    replaces what the file says: see :func:`plan_cohort` for the warning); ``overlap`` is
    in tile pixels (``None``: the spec's, else 1/8 of the tile); ``torch_threads`` caps torch's CPU threads
    in the process that runs the job (``None``: leave as is). ``cascade`` predicts coarse-to-fine
    (:mod:`~napari_milkd.core.inference.cascade`) with ``cascade_factor``, ``cascade_low`` and
    ``cascade_high`` (see :class:`~napari_milkd.core.inference.cascade.CascadeSettings`).
    """

    slide: str
    checkpoint: str
    out_dir: str
    name: str
    mpp: float | None = None
    slide_mpp: float | None = None
    batch_size: int = 16
    device: str = "auto"
    threshold: float | None = None
    overlap: int | None = None
    compile: bool = False
    backend: str = "torch"
    read_threads: int = 4
    resume: bool = True
    torch_threads: int | None = None
    cascade: bool = False
    cascade_factor: float = DEFAULT_FACTOR
    cascade_low: float = DEFAULT_LOW
    cascade_high: float | None = None


@dataclass(frozen=True)
class SlideSummary:
    """One slide's outcome: where its files are and the figures of the one-line summary."""

    name: str
    slide: str
    zarr: str
    geojson: str
    n_tiles: int
    n_computed: int
    seconds: float
    tumour_area_mm2: float
    n_polygons: int
    mpp: float
    timings: dict[str, float]
    note: str = ""
    refined: int | None = None

    def line(self) -> str:
        """The one-line summary the CLI prints (``refined``: a cascade's refined tiles, else ``None``)."""
        if self.refined is not None:
            reused = f" ({self.refined} refined by the cascade, {self.n_computed} computed)"
        elif self.n_computed == self.n_tiles:
            reused = ""
        else:
            reused = f" ({self.n_computed} computed, rest resumed)"
        note = f" ({self.note})" if self.note else ""
        return (
            f"{self.name}: {self.n_tiles} tiles{reused} at {self.mpp:g} µm/px in {self.seconds:.1f} s, "
            f"tumour {self.tumour_area_mm2:.3f} mm² in {self.n_polygons} regions → {self.zarr}{note}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


@dataclass(frozen=True)
class SlideFailure:
    """One slide that was not predicted, and why (one line)."""

    name: str
    slide: str
    reason: str

    def line(self) -> str:
        """``<name>: <reason>``; the reason names the slide too when it came from the slide's own check."""
        return f"{self.name}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**asdict(self), "failed": True}


@dataclass
class CohortPlan:
    """What :func:`plan_cohort` found before any work: the model (one line from its card), the jobs to
    run, the slides refused (with the reason), and one-line warnings (a ``--slide-mpp`` that contradicts
    a slide's file, a model trained only on the synthetic sample slide)."""

    model: str = ""
    jobs: list[PredictJob] = field(default_factory=list)
    failures: list[SlideFailure] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def resolve_checkpoint(run: str | os.PathLike[str]) -> Path:
    """A run folder's ``student.pt`` (else ``teacher.pt``), or ``run`` itself when it is a ``.pt`` file.

    Raises :class:`CheckpointError` when neither exists.
    """
    path = Path(run).expanduser()
    if path.is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"run folder or checkpoint not found: {path}")
    for name in ("student.pt", "teacher.pt"):
        if (path / name).is_file():
            return path / name
    raise CheckpointError(
        f"{path} holds neither student.pt nor teacher.pt; is it a `milkd train` run folder?"
    )


def model_mpp(spec: ModelSpec | None, mpp: float | None, checkpoint: str | os.PathLike[str]) -> float:
    """The µm/px a model runs at: its ``spec``'s; the user's ``mpp`` only where the spec lacks one.

    Raises :class:`InputError` (one line) when neither says, when ``mpp`` is not positive, and when ``mpp``
    differs from what the spec records (a model's training resolution is never silently replaced).
    """
    if mpp is not None and not mpp > 0:
        raise InputError(f"--mpp must be positive, got {mpp}")
    recorded = None if spec is None else spec.mpp
    if recorded is None:
        if mpp is None:
            raise InputError(
                f"{checkpoint} does not record the µm/px it was trained at; "
                "pass --mpp UM (the µm/px of its training tiles)"
            )
        return float(mpp)
    if mpp is not None and not math.isclose(mpp, recorded, rel_tol=1e-6):
        raise InputError(
            f"{checkpoint} was trained at {recorded:g} µm/px but --mpp {mpp:g} was given; "
            "a model runs at its training µm/px (drop --mpp)"
        )
    return recorded


def slide_name(slide: str | os.PathLike[str]) -> str:
    """Output name of a slide: its file stem, or the real name of a DICOM-WSI folder (also when it is
    given as ``.`` or ``dir/..``)."""
    path = Path(slide)
    name = Path(os.path.abspath(path)).name if path.is_dir() else path.stem
    return name or "slide"


def check_slide_path(slide: str | os.PathLike[str]) -> Path:
    """The file OpenSlide opens for ``slide``; :class:`SlideError` naming a symlink loop or a broken link
    as such (not "no such file")."""
    from napari_milkd.core.slides.slide import resolve_slide_path

    path = Path(slide).expanduser()
    if path.is_symlink() and not path.exists():
        raise SlideError(_link_problem(path))
    return resolve_slide_path(path)


def _link_problem(path: Path) -> str:
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"{path} is a symbolic link loop (it points back to itself)"
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    return f"{path} is a broken symbolic link (its target {target} does not exist)"


def check_out_dir(out_dir: str | os.PathLike[str]) -> Path:
    """Check where ``--out`` would go, creating nothing: refuses a file, a path below a file, a symlink
    loop or broken link (:class:`InputError`, one line). Writability is checked by :func:`lock_output`."""
    out = Path(out_dir).expanduser()
    if out.is_symlink() and not out.exists():
        raise InputError(f"--out: {_link_problem(out)}")
    if out.exists():
        if not out.is_dir():
            raise InputError(f"--out {out} is a file, not a folder")
        return out
    for parent in out.parents:
        if parent.is_symlink() and not parent.exists():
            raise InputError(f"--out {out}: {_link_problem(parent)}")
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"--out {out} is below {parent}, which is a file, not a folder")
            break
    return out


def _write_problem(path: Path, exc: OSError) -> WriteError:
    reason = exc.strerror or type(exc).__name__
    if exc.errno in (errno.EROFS,):
        reason = "the file system is read-only"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        reason = "permission denied (the folder is read-only for you)"
    elif exc.errno == errno.ENOSPC:
        reason = "the disk is full"
    return WriteError(f"cannot write in {path}: {reason}; choose another --out", exc.errno)


def _read_lock(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _lock_is_stale(path: Path, holder: dict[str, Any]) -> bool:
    from napari_milkd.core.inference.stream import _pid_alive

    pid, host = holder.get("pid"), holder.get("host")
    if not isinstance(pid, int) or not isinstance(host, str):
        try:  # half-written (its writer died between create and write) once it is a minute old
            return time.time() - path.stat().st_mtime > 60
        except OSError:
            return True
    return host == socket.gethostname() and not _pid_alive(pid)


@contextlib.contextmanager
def lock_output(
    out_dir: str | os.PathLike[str], lock_file: str = LOCK_FILE, command: str = "milkd predict"
) -> Iterator[Path]:
    """Hold ``out_dir``'s lock file (created with the folder if needed) for the duration of the block.

    The lock (``lock_file``, :data:`LOCK_FILE` for ``milkd predict``; ``command`` names the holder in
    messages) records this process's pid, host and start time. Another live holder
    gives an :class:`InputError` naming it; the lock of a dead process on this host is taken over. A folder
    that cannot be created or written (read-only file system or folder, disk full) gives a one-line
    :class:`WriteError` before any work.
    """
    out = Path(out_dir).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_problem(out, exc) from None
    path = out / lock_file
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": command,
    }
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_lock(path)
            if _lock_is_stale(path, holder):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            raise InputError(
                f"{out} is in use by another {command} (pid {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')}, since {holder.get('started', '?')}); wait for it, or delete "
                f"{path} if that run is gone"
            ) from None
        except OSError as exc:
            raise _write_problem(out, exc) from None
        try:
            os.write(fd, (json.dumps(me) + "\n").encode())
        except OSError as exc:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise _write_problem(out, exc) from None
        os.close(fd)
        break
    else:
        raise InputError(f"could not take the lock {path}; delete it if no {command} is running")
    try:
        yield path
    finally:
        if _read_lock(path).get("pid") == me["pid"]:
            with contextlib.suppress(OSError):
                path.unlink()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _geojson_facts(facts: dict[str, Any] | None) -> dict[str, Any]:
    info = (facts or {}).get("geojson")
    return info if isinstance(info, dict) else {}


def check_outputs(out_dir: str | os.PathLike[str], name: str, *, resume: bool = True) -> None:
    """Refuse (:class:`InputError`, one line) when ``<name>.zarr`` or ``<name>.geojson`` in ``out_dir`` is
    something milkd did not write: a link, a file where a folder belongs (or the reverse), a folder
    without milkd's marker, a GeoJSON that is not one milkd wrote for this prediction (a QuPath export, an
    edited file). Called before any work, under the lock (a swap a kill interrupted is first undone).
    """
    out = Path(out_dir)
    zarr_path = out / f"{name}.zarr"
    check_prediction_target(zarr_path)
    stale_asides(zarr_path)  # puts back a previous prediction a killed swap had moved aside
    check_prediction_target(zarr_path)
    geojson = out / f"{name}.geojson"
    if geojson.is_symlink():
        raise InputError(f"{geojson} is a symbolic link; milkd does not write through links (remove it)")
    if not geojson.exists():
        return
    if not geojson.is_file():
        raise InputError(f"{geojson} is a folder; move it away or choose another --out")
    facts = prediction_facts(zarr_path)
    if _sha256(geojson) in _geojson_facts(facts).get("history", []):
        return
    if resume and facts is not None and facts.get("complete"):
        return  # finished earlier: nothing needs writing, and the file is left alone (slide_job)
    raise InputError(
        f"{geojson} was not written by milkd predict (or was edited since); it is kept: move it away "
        "or choose another --out"
    )


def make_jobs(
    slides: Sequence[str | os.PathLike[str]],
    run: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    **options: Any,
) -> list[PredictJob]:
    """One :class:`PredictJob` per slide, all or nothing: :func:`plan_cohort`'s checks, and the first
    slide that cannot be predicted raises :class:`SlideError` (a cohort that goes on past bad slides:
    :func:`plan_cohort` itself)."""
    plan = plan_cohort(slides, run, out_dir, **options)
    if plan.failures:
        raise SlideError(plan.failures[0].line())
    return plan.jobs


def plan_cohort(
    slides: Sequence[str | os.PathLike[str]],
    run: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    **options: Any,
) -> CohortPlan:
    """Check everything that can be checked before any work, creating nothing.

    Run-level problems raise (one line): the checkpoint and the model's µm/px (:func:`model_mpp`), the
    ``--out`` location (:func:`check_out_dir`), two slides with the same output name. A slide's own
    problem (missing, unreadable, no µm/px and no ``slide_mpp``) becomes a :class:`SlideFailure` and the
    others go on. ``options["slide_mpp"]`` fills only a slide that records no µm/px; for a slide that
    records a different one it is ignored with a one-line warning naming the slide.
    """
    from napari_milkd.core.engine.card import SAMPLE_WARNING, describe_model, is_sample_only
    from napari_milkd.core.engine.checkpoint import load_checkpoint
    from napari_milkd.core.slides.slide import open_slide

    checkpoint = resolve_checkpoint(run)
    state = load_checkpoint(checkpoint)
    model_mpp(checkpoint_spec(state), options.get("mpp"), checkpoint)
    given = options.pop("slide_mpp", None)
    if given is not None and not given > 0:
        raise InputError(f"--slide-mpp must be positive, got {given}")
    out = check_out_dir(out_dir)
    plan = CohortPlan(model=describe_model(state).splitlines()[0])
    if is_sample_only(state):
        plan.warnings.append(f"{checkpoint.name}: {SAMPLE_WARNING}")
    seen: dict[str, str] = {}
    for slide in slides:
        name = slide_name(slide)
        if name in seen:
            raise InputError(f"two slides would both write {name}.zarr: {seen[name]} and {slide}")
        seen[name] = str(slide)
        try:
            check_slide_path(slide)
            source = open_slide(slide)
            try:
                recorded = source.info.mpp
            finally:
                source.close()
        except MilkdError as exc:
            plan.failures.append(SlideFailure(name, str(slide), str(exc)))
            continue
        slide_mpp = None
        if recorded is None:
            if given is None:
                plan.failures.append(SlideFailure(name, str(slide), _no_mpp(slide)))
                continue
            slide_mpp = float(given)
        elif given is not None and not math.isclose(given, recorded, rel_tol=0.01):
            plan.warnings.append(
                f"{Path(slide).name} records {recorded:g} µm/px; --slide-mpp {given:g} is only for slides "
                "that lack it, so it is not used for this one"
            )
        plan.jobs.append(
            PredictJob(
                slide=str(slide),
                checkpoint=str(checkpoint),
                out_dir=str(out),
                name=name,
                slide_mpp=slide_mpp,
                **options,
            )
        )
    return plan


def _no_mpp(slide: str | os.PathLike[str]) -> str:
    return f"{Path(slide).name} does not record its µm/px; pass --slide-mpp UM (its level-0 µm/px)"


def memory_error(job: PredictJob, exc: BaseException) -> MemoryLimitError | None:
    """A one-line :class:`MemoryLimitError` for ``exc`` when it is an allocation failure, else None."""
    needed = allocation_failure(exc)
    if needed is None:
        return None
    what = f" (needed {needed})" if needed else ""
    return MemoryLimitError(
        f"out of memory{what}; lower --batch-size (now {job.batch_size}) or --read-threads "
        f"(now {job.read_threads}), predict fewer slides at once (--workers 1), or use a model trained at "
        "a coarser µm/px (its map is smaller)"
    )


#: Write failures that mean "no room": a full disk, a quota, a file-size limit, a read-only filesystem.
_DISK_ERRNOS = frozenset(
    e for e in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", None), errno.EROFS) if e is not None
)


def slide_job(job: PredictJob) -> Generator[PredictProgress, None, SlideSummary]:
    """Predict one slide file into ``out_dir/<name>.zarr`` and ``out_dir/<name>.geojson``.

    A generator like :func:`~napari_milkd.core.inference.stream.predict_slide` (progress per batch, a
    summary at the end); resumes an interrupted zarr of the same model. The model runs at the µm/px, tile
    size and (unless ``job.overlap``) overlap its checkpoint's spec records (:func:`model_mpp`). The mask
    and the GeoJSON lie inside the slide's tissue mask (the widget's: :func:`~napari_milkd.core.slides.
    tissue.slide_tissue` on the map); they are written before the zarr is marked complete, and the
    GeoJSON goes in place only after that (so a kill never leaves a complete zarr with a raw mask). Raises
    :class:`SlideError` when the slide has no µm/px and ``slide_mpp`` is not given, :class:`InputError`
    when the model's µm/px is unknown and ``job.mpp`` is not given, or contradicts it, or when an output
    is not milkd's (:func:`check_outputs`), and :class:`MemoryLimitError` when the slide does not fit in
    memory, and :class:`WriteError` when the disk (or ``ulimit -f``) cannot take an output; whatever was
    written stays unmarked and the next run goes on from it.
    """
    try:
        summary: SlideSummary = yield from _slide_job(job)
    except (MemoryError, RuntimeError, ImportError) as exc:
        problem = memory_error(job, exc)
        if problem is None:
            raise
        raise problem from None
    except OSError as exc:
        if isinstance(exc, MilkdError) or exc.errno not in _DISK_ERRNOS:
            raise
        # zarr's writer threads and our own writes alike: name the output, not a library's frame.
        raise write_error(Path(job.out_dir) / f"{job.name}.zarr", exc) from None
    return summary


def _slide_job(job: PredictJob) -> Generator[PredictProgress, None, SlideSummary]:
    import torch

    from napari_milkd.core.engine.checkpoint import load_checkpoint
    from napari_milkd.core.engine.train import load_model
    from napari_milkd.core.inference.cascade import CascadeSettings, predict_slide_cascade
    from napari_milkd.core.inference.stream import predict_slide
    from napari_milkd.core.runtime import reserve_blas
    from napari_milkd.core.slides.geometry import plan_work, tissue_map
    from napari_milkd.core.slides.slide import open_slide

    t0 = time.perf_counter()
    reserve_blas()  # under ulimit -v, OpenBLAS would exit the process later: no error line could be given
    if job.torch_threads:
        torch.set_num_threads(int(job.torch_threads))
    spec = checkpoint_spec(load_checkpoint(job.checkpoint))
    mpp = model_mpp(spec, job.mpp, job.checkpoint)
    model, config = load_model(job.checkpoint, device="cpu")
    threshold = config.threshold if job.threshold is None else job.threshold
    tile = int(config.size) if spec is None else spec.tile
    if job.overlap is not None:
        overlap = int(job.overlap)
    else:
        overlap = default_overlap(tile) if spec is None or spec.overlap is None else spec.overlap
    out_dir = Path(job.out_dir)
    zarr_path = out_dir / f"{job.name}.zarr"
    geojson = out_dir / f"{job.name}.geojson"
    source = open_slide(job.slide)
    if source.info.mpp is None and job.slide_mpp is not None:  # fills only what the file lacks
        source.close()
        source = open_slide(job.slide, mpp=job.slide_mpp)
    try:
        if source.info.mpp is None:
            raise SlideError(_no_mpp(job.slide))
        slide_mpp = float(source.info.mpp)
        work = plan_work(source, work_mpp=mpp, tile=tile, overlap=overlap)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _write_problem(out_dir, exc) from None
        check_outputs(out_dir, job.name, resume=job.resume)
        history = list(_geojson_facts(prediction_facts(zarr_path)).get("history", []))
        tissue = tissue_map(work)

        def finish(folder: Path, probability: Any, mask: Any) -> dict[str, Any]:
            return _finish(folder, probability, mask, tissue, work.downsample, slide_mpp, threshold, history)

        refined: int | None = None
        coarse_s: float | None = None
        n_tiles = len(work.grid)
        how = {
            "threshold": threshold,
            "batch_size": job.batch_size,
            "device": job.device,
            "compile": job.compile,
            "backend": job.backend,
            "workers": job.read_threads,
            "resume": job.resume,
            "stage": job.name,
            "finish": finish,
        }
        if job.cascade:
            settings = CascadeSettings(job.cascade_factor, job.cascade_low, job.cascade_high)
            cascaded = yield from predict_slide_cascade(
                model, source, work.grid, zarr_path, tissue=work.tissue, settings=settings, **how
            )
            result: SlidePrediction = cascaded.prediction
            refined, coarse_s = cascaded.n_refined, cascaded.coarse_seconds
            n_computed = cascaded.n_coarse + result.n_computed
        else:
            result = yield from predict_slide(model, source, work.grid, zarr_path, **how)
            n_computed = result.n_computed
    finally:
        source.close()
        del model
    facts = prediction_facts(zarr_path) or {}
    if not _geojson_facts(facts):  # complete, from a milkd that kept no GeoJSON copy: make one
        facts = _add_geojson_copy(zarr_path, facts, result.downsample, slide_mpp)
    note = _place_geojson(zarr_path, geojson, facts)
    info = _geojson_facts(facts)
    tumour_px = int(facts.get("tumour_px", result.tumour_px))
    return SlideSummary(
        name=job.name,
        slide=job.slide,
        zarr=result.path,
        geojson=str(geojson),
        n_tiles=n_tiles,
        n_computed=n_computed,
        seconds=round(time.perf_counter() - t0, 3),
        tumour_area_mm2=round(tumour_px * result.mpp**2 / 1e6, 6),
        n_polygons=int(info.get("n_polygons", 0)),
        mpp=result.mpp,
        timings=result.timings if coarse_s is None else {**result.timings, "coarse_s": coarse_s},
        note=note,
        refined=refined,
    )


def _write_geojson_copy(
    folder: Path, mask: Any, downsample: float, slide_mpp: float, history: list[str]
) -> dict[str, Any]:
    from napari_milkd.core.annotations import write_geojson
    from napari_milkd.core.inference.masks import mask_polygons

    polygons = mask_polygons(mask, downsample, slide_mpp)
    copy = folder / GEOJSON_COPY
    write_geojson(copy, polygons, name="Tumor", mpp=slide_mpp)
    digest = _sha256(copy)
    return {
        "file": GEOJSON_COPY,
        "sha256": digest,
        "history": [*[h for h in history if h != digest], digest][-GEOJSON_HISTORY:],
        "n_polygons": len(polygons),
    }


def _finish(
    folder: Path,
    probability: Any,
    mask: Any,
    tissue: Any,
    downsample: float,
    slide_mpp: float,
    threshold: float,
    history: list[str],
) -> dict[str, Any]:
    """The mask users get is the one the widget shows (inference.masks: one mask and export policy for
    every front end): smoothed probability, inside the tissue mask, specks removed; written over the
    streamed raw threshold, then its GeoJSON into the zarr folder. Returns the facts that describe them."""
    import numpy as np

    from napari_milkd.core.inference.masks import mask_from_probability_bands
    from napari_milkd.core.inference.stream import decode_probability

    def write(r0: int, r1: int, band: np.ndarray) -> None:
        mask[r0:r1] = band

    # Band by band (the map may not fit in memory twice); the GeoJSON reads the uint8 mask back.
    tumour_px = mask_from_probability_bands(
        lambda r0, r1: decode_probability(probability[r0:r1]), tissue, write, threshold=threshold
    )
    clean = np.asarray(mask[...])
    return {
        "tumour_px": tumour_px,
        "mask": (
            f"labels/tumour/0: 1 where the probability smoothed by a Gaussian (sigma 2 map px) is > "
            f"{threshold:g}, inside the slide's tissue mask, specks under 16 px removed"
        ),
        "tissue": "saturation tissue mask (slides.tissue.slide_tissue) resampled onto the map",
        "geojson": _write_geojson_copy(folder, clean, downsample, slide_mpp, history),
    }


def _add_geojson_copy(
    zarr_path: Path, facts: dict[str, Any], downsample: float, slide_mpp: float
) -> dict[str, Any]:
    import zarr

    from napari_milkd.core.inference.stream import open_prediction

    _, mask, _ = open_prediction(zarr_path)
    info = _write_geojson_copy(zarr_path, mask[...], downsample, slide_mpp, [])
    root = zarr.open_group(str(zarr_path), mode="r+")
    facts = {**root.attrs.asdict()["milkd"], "geojson": info}
    root.attrs["milkd"] = facts
    return facts


def _place_geojson(zarr_path: Path, geojson: Path, facts: dict[str, Any]) -> str:
    """Copy the prediction's GeoJSON to ``geojson`` unless it is already there; a file there that milkd
    did not write for this prediction is left alone. Returns a note for the summary ("" when placed)."""
    info = _geojson_facts(facts)
    copy = zarr_path / str(info.get("file", GEOJSON_COPY))
    if geojson.is_symlink() or (geojson.exists() and not geojson.is_file()):
        raise InputError(f"{geojson} is not a plain file; milkd does not replace it (its regions: {copy})")
    if geojson.exists():
        digest = _sha256(geojson)
        if digest == info.get("sha256"):
            return ""
        if digest not in info.get("history", []):
            return f"{geojson.name} was not written by milkd (or was edited since) and is kept; ours: {copy}"
    with atomic_path(geojson) as tmp:
        shutil.copyfile(copy, tmp)
    return ""


def run_slide_job(job: PredictJob) -> SlideSummary:
    """:func:`slide_job` drained (what a Dask worker runs)."""
    from napari_milkd.core.progress import drain

    return drain(slide_job(job))


def failure_of(job: PredictJob, exc: BaseException) -> SlideFailure:
    """The one-line :class:`SlideFailure` of ``job`` failing with ``exc`` (a :class:`MilkdError` as is;
    anything else named as unexpected)."""
    if isinstance(exc, MilkdError):
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    else:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        reason = f"unexpected {type(exc).__name__}{': ' + text if text else ''} (please report this)"
    return SlideFailure(job.name, job.slide, reason)


def run_local(
    jobs: Sequence[PredictJob],
    on_event: Callable[[Any], None] | None = None,
    on_done: Callable[[SlideSummary], None] | None = None,
    on_fail: Callable[[SlideFailure], None] | None = None,
) -> tuple[list[SlideSummary], list[SlideFailure]]:
    """Run ``jobs`` one after another in this process; a slide that fails is reported (``on_fail``) and
    the next one runs. Returns ``(summaries, failures)``. Ctrl-C stops the run."""
    from napari_milkd.core.progress import drain

    summaries: list[SlideSummary] = []
    failures: list[SlideFailure] = []
    for job in jobs:
        try:
            summary = drain(slide_job(job), on_event)
        except Exception as exc:
            failure = failure_of(job, exc)
            failures.append(failure)
            if on_fail is not None:
                on_fail(failure)
            continue
        summaries.append(summary)
        if on_done is not None:
            on_done(summary)
    return summaries, failures


def run_on_dask(
    jobs: Sequence[PredictJob],
    client: Any,
    on_done: Callable[[SlideSummary], None] | None = None,
    on_fail: Callable[[SlideFailure], None] | None = None,
) -> list[SlideSummary]:
    """Run ``jobs`` on a ``distributed.Client``, one task per slide; return summaries in job order.

    ``on_done`` is called in this process as each slide finishes (in completion order). With ``on_fail``
    a failing slide is reported there and the others go on; without it the first failure raises here
    after the others were cancelled. Tasks are not retried on another worker (``retries=0``): a rerun
    resumes from what the failed task wrote.
    """
    from distributed import as_completed

    futures = [
        client.submit(run_slide_job, job, key=f"milkd-predict-{job.name}-{i}", pure=False, retries=0)
        for i, job in enumerate(jobs)
    ]
    index = {f.key: i for i, f in enumerate(futures)}
    results: list[SlideSummary | None] = [None] * len(jobs)
    try:
        for future in as_completed(futures):
            i = index[future.key]
            try:
                summary = future.result()
            except Exception as exc:
                if on_fail is None:
                    raise
                on_fail(failure_of(jobs[i], exc))
                continue
            results[i] = summary
            if on_done is not None:
                on_done(summary)
    except BaseException:
        client.cancel(futures)
        raise
    return [r for r in results if r is not None]


def iter_local(jobs: Sequence[PredictJob]) -> Iterator[Generator[PredictProgress, None, SlideSummary]]:
    """The jobs' generators, in order, for a single-process run with per-tile progress."""
    for job in jobs:
        yield slide_job(job)
