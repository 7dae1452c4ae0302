"""Whole-slide prediction of slide *files*, one at a time or many in parallel on Dask distributed.

Owns the job "slide file → tissue → tile grid at the model's µm/px →
:func:`~napari_milkd.core.inference.stream.predict_slide` → ``<name>.zarr`` + QuPath ``<name>.geojson`` →
:class:`SlideSummary`", how a run folder or checkpoint is resolved and which µm/px a model runs at (its
checkpoint's :class:`~napari_milkd.core.engine.spec.ModelSpec`; the user's ``--mpp`` only fills a spec
that lacks one and never replaces it), and submitting jobs to a Dask cluster. Headless: may import numpy,
torch (inside functions), dask/distributed (inside functions) and core modules.

A job gets only paths and plain values (:class:`PredictJob`, picklable), opens its slide and loads its
model itself, so the same function runs in this process or on any Dask worker, and gives the same bytes.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from napari_milkd.core.engine.spec import ModelSpec, checkpoint_spec, default_overlap
from napari_milkd.core.errors import CheckpointError, InputError, SlideError
from napari_milkd.core.inference.stream import PredictProgress, SlidePrediction


@dataclass(frozen=True)
class PredictJob:
    """Everything one slide's prediction needs, as plain values (sent to Dask workers as is).

    ``mpp`` is the µm/px of the model's training tiles as the user states it: required when the checkpoint's
    spec does not record one, and refused when it records a different one (``None``: the spec's);
    ``slide_mpp`` overrides the slide's own level-0 µm/px (required when the file has none); ``overlap`` is
    in tile pixels (``None``: the spec's, else 1/8 of the tile); ``torch_threads`` caps torch's CPU threads
    in the process that runs the job (``None``: leave as is).
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
    read_threads: int = 4
    resume: bool = True
    torch_threads: int | None = None


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

    def line(self) -> str:
        """The one-line summary the CLI prints."""
        reused = "" if self.n_computed == self.n_tiles else f" ({self.n_computed} computed, rest resumed)"
        return (
            f"{self.name}: {self.n_tiles} tiles{reused} at {self.mpp:g} µm/px in {self.seconds:.1f} s, "
            f"tumour {self.tumour_area_mm2:.3f} mm² in {self.n_polygons} regions → {self.zarr}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


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
    """Output name of a slide: its file stem, or the folder name of a DICOM-WSI folder."""
    path = Path(slide)
    return path.name if path.is_dir() else path.stem


def make_jobs(
    slides: Sequence[str | os.PathLike[str]],
    run: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    **options: Any,
) -> list[PredictJob]:
    """One :class:`PredictJob` per slide; refuses missing slides, two slides with the same name, and a
    model whose µm/px is unknown or contradicted by ``options["mpp"]`` (see :func:`model_mpp`), before any
    job starts."""
    from napari_milkd.core.engine.checkpoint import load_checkpoint
    from napari_milkd.core.slides.slide import resolve_slide_path

    checkpoint = resolve_checkpoint(run)
    model_mpp(checkpoint_spec(load_checkpoint(checkpoint)), options.get("mpp"), checkpoint)
    jobs: list[PredictJob] = []
    seen: dict[str, str] = {}
    for slide in slides:
        resolve_slide_path(slide)  # SlideError for a missing path, before any work starts
        name = slide_name(slide)
        if name in seen:
            raise InputError(f"two slides would both write {name}.zarr: {seen[name]} and {slide}")
        seen[name] = str(slide)
        jobs.append(
            PredictJob(
                slide=str(slide), checkpoint=str(checkpoint), out_dir=str(out_dir), name=name, **options
            )
        )
    return jobs


def slide_job(job: PredictJob) -> Generator[PredictProgress, None, SlideSummary]:
    """Predict one slide file into ``out_dir/<name>.zarr`` and ``out_dir/<name>.geojson``.

    A generator like :func:`~napari_milkd.core.inference.stream.predict_slide` (progress per batch, a
    summary at the end); resumes an interrupted zarr of the same model. The model runs at the µm/px, tile
    size and (unless ``job.overlap``) overlap its checkpoint's spec records (:func:`model_mpp`). Raises
    :class:`SlideError` when the slide has no µm/px and ``slide_mpp`` is not given, :class:`InputError` when
    the model's µm/px is unknown and ``job.mpp`` is not given, or contradicts it.
    """
    import torch

    from napari_milkd.core.annotations import write_geojson
    from napari_milkd.core.engine.checkpoint import load_checkpoint
    from napari_milkd.core.engine.train import load_model
    from napari_milkd.core.inference.masks import mask_from_probability, mask_polygons
    from napari_milkd.core.inference.stream import decode_probability, open_prediction, predict_slide
    from napari_milkd.core.slides.slide import open_slide
    from napari_milkd.core.slides.tiling import tile_grid
    from napari_milkd.core.slides.tissue import slide_tissue

    t0 = time.perf_counter()
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
    out_dir.mkdir(parents=True, exist_ok=True)
    source = open_slide(job.slide, mpp=job.slide_mpp)
    try:
        if source.info.mpp is None:
            raise SlideError(
                f"{Path(job.slide).name} does not record its µm/px; pass --slide-mpp UM (its level-0 µm/px)"
            )
        grid = tile_grid(source.info, mpp=mpp, tile=tile, overlap=overlap, tissue=slide_tissue(source))
        result: SlidePrediction = yield from predict_slide(
            model,
            source,
            grid,
            out_dir / f"{job.name}.zarr",
            threshold=threshold,
            batch_size=job.batch_size,
            device=job.device,
            compile=job.compile,
            workers=job.read_threads,
            resume=job.resume,
            stage=job.name,
        )
        slide_mpp = source.info.mpp
    finally:
        source.close()
        del model
    # The mask users get is the one the widget shows: smoothed probability, specks removed (inference.masks:
    # one mask and export policy for every front end), written back over the streamed raw threshold.
    probability, mask, _ = open_prediction(result.path, mode="r+")
    prob = decode_probability(probability[...])
    clean = mask_from_probability(prob, prob > 0)
    mask[...] = clean
    tumour_area_mm2 = float(clean.sum()) * result.mpp**2 / 1e6
    polygons = mask_polygons(clean, result.downsample, slide_mpp)
    geojson = out_dir / f"{job.name}.geojson"
    write_geojson(geojson, polygons, name="Tumor", mpp=slide_mpp)
    return SlideSummary(
        name=job.name,
        slide=job.slide,
        zarr=result.path,
        geojson=str(geojson),
        n_tiles=result.n_tiles,
        n_computed=result.n_computed,
        seconds=round(time.perf_counter() - t0, 3),
        tumour_area_mm2=round(tumour_area_mm2, 6),
        n_polygons=len(polygons),
        mpp=result.mpp,
        timings=result.timings,
    )


def run_slide_job(job: PredictJob) -> SlideSummary:
    """:func:`slide_job` drained (what a Dask worker runs)."""
    from napari_milkd.core.progress import drain

    return drain(slide_job(job))


def run_on_dask(
    jobs: Sequence[PredictJob],
    client: Any,
    on_done: Callable[[SlideSummary], None] | None = None,
) -> list[SlideSummary]:
    """Run ``jobs`` on a ``distributed.Client``, one task per slide; return summaries in job order.

    ``on_done`` is called in this process as each slide finishes (in completion order). A failing slide
    raises its error here after the others were cancelled. Tasks are not retried on another worker
    (``retries=0``): a rerun resumes from what the failed task wrote.
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
            summary = future.result()
            results[index[future.key]] = summary
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
