"""Coarse-to-fine whole-slide prediction: predict coarsely everywhere, refine only where it matters.

Owns the cascade (issue 14): step 1 runs the **same model** over the slide at ``factor`` × its working
µm/px (same tile size in pixels, so each coarse tile covers ``factor``² times the field and the model sees
a ``factor`` × coarser image than it was trained on: a proxy, not the model's own operating point);
step 2 runs the model at the working µm/px only on the tiles of the working grid whose footprint holds a
coarse probability ≥ ``low`` (and, when ``high`` is given, not entirely ≥ ``high``). The final map is the
fine prediction on the pixels refined tiles cover and the coarse probability, upsampled bilinearly,
on the other pixels the working grid covers (0 where no working tile reaches, as for the full
prediction). Everything after that (mask policy, GeoJSON, pyramid) is :func:`~napari_milkd.core.
inference.stream.predict_slide` and its ``finish`` as for a full prediction.

Memory: the coarse map is held as uint8 (``round(255·p)``, 1/``factor``² byte per map pixel); the fine
step is predict_slide's bounded band stream over the refined tiles, and the coarse values are merged
into each band before it is written (:data:`~napari_milkd.core.inference.stream.Compose`), so no
full-size float map is ever held.

Coordinates. As in ``core.slides.geometry``: arrays are ``(row, col) = (y, x)``; the working map has
downsample ``ds = grid.tile_l0 / grid.tile`` from level 0 and map pixel ``(r, c)`` covers level-0
``[r·ds, (r+1)·ds)``; the coarse map likewise with ``ds_c = coarse.tile_l0 / coarse.tile``
(= ``factor · ds``).
A tile's coarse footprint is the coarse pixels its level-0 square touches: rows ``floor(y0 / ds_c)`` to
``ceil((y0 + tile_l0) / ds_c)`` (end exclusive), columns alike. Upsampling maps the centre of working
pixel ``r``, level-0 ``(r + 0.5)·ds``, to coarse coordinate ``(r + 0.5)·ds / ds_c − 0.5`` (pixel centres
at integers), interpolated linearly between the two nearest coarse pixels, clamped at the edges.

May import numpy, torch (inside functions), ``core.slides`` and ``core.inference.stream`` (its band
engine ``_stream_bands`` and runtime too: same package); never napari, Qt or the session layer.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_milkd.core.errors import InputError
from napari_milkd.core.inference.stream import (
    DEFAULT_CHUNK,
    Finish,
    PredictProgress,
    SlidePrediction,
    decode_probability,
    encode_probability,
    predict_slide,
)
from napari_milkd.core.slides.geometry import map_geometry, tile_map_origins
from napari_milkd.core.slides.slide import SlideSource
from napari_milkd.core.slides.tiling import TileGrid, tile_grid
from napari_milkd.core.slides.tissue import TissueMask

#: Default coarse factor: the coarse step runs at 2 × the working µm/px (about 1/4 of the tiles). At 4 ×
#: the sample-slide student's coarse probability of tumour fell below 0.4 (its fine one is > 0.5), so a
#: usable threshold left 87 % of the tiles to refine; at 2 × it stays ≥ 0.4 (docs/benchmarks.md,
#: "Coarse-to-fine cascade").
DEFAULT_FACTOR = 2.0
#: Default refinement threshold: a working tile is refined when any coarse pixel of its footprint has
#: probability ≥ this. 0.4 kept the mask's Dice against the full prediction ≥ 0.998 on both slides
#: measured (GlaS mosaic, 2 µm/px run; sample slide, 1 µm/px student).
DEFAULT_LOW = 0.4
#: Largest coarse factor accepted (a coarse tile of 64 × the field is no longer a useful proxy).
MAX_FACTOR = 64.0


@dataclass(frozen=True)
class CascadeSettings:
    """The cascade's knobs: ``factor`` (coarse µm/px = ``factor`` × working µm/px, > 1), ``low``
    (refine a tile when any coarse pixel of its footprint is ≥ ``low``, in [0, 1]) and ``high``
    (``None``, or in (``low``, 1]: also skip tiles whose whole footprint is ≥ ``high``; they take the
    coarse, upsampled probability — confident tumour)."""

    factor: float = DEFAULT_FACTOR
    low: float = DEFAULT_LOW
    high: float | None = None

    def __post_init__(self) -> None:
        check_settings(self.factor, self.low, self.high)

    def to_facts(self) -> dict[str, Any]:
        """JSON-ready form (the prediction zarr's ``milkd.cascade`` and its resume fingerprint)."""
        return {"factor": float(self.factor), "low": float(self.low), "high": self.high}


def check_settings(factor: float, low: float, high: float | None) -> None:
    """Raise :class:`InputError` (one line, named as the CLI flags) unless the settings are usable."""
    if not (math.isfinite(factor) and 1.0 < factor <= MAX_FACTOR):
        raise InputError(f"--cascade-factor must be > 1 and ≤ {MAX_FACTOR:g}, got {factor}")
    check_thresholds(low, high)


def check_thresholds(low: float, high: float | None) -> None:
    """Raise :class:`InputError` (one line) unless ``0 ≤ low ≤ 1`` and ``high`` is ``None`` or in
    ``(low, 1]``."""
    if not (math.isfinite(low) and 0.0 <= low <= 1.0):
        raise InputError(f"--cascade-low must be in [0, 1], got {low}")
    if high is not None and not (math.isfinite(high) and low < high <= 1.0):
        raise InputError(f"--cascade-high must be in (--cascade-low, 1] = ({low:g}, 1], got {high}")


@dataclass(frozen=True)
class CascadeResult:
    """What :func:`predict_slide_cascade` returns: the fine step's :class:`SlidePrediction` (its
    ``n_tiles`` are the refined tiles), the working grid's tile count ``n_tiles``, ``n_refined`` of them
    refined, ``n_coarse`` coarse tiles at ``coarse_mpp``, ``coarse_seconds`` of the coarse step and
    ``seconds`` of both steps."""

    prediction: SlidePrediction
    n_tiles: int
    n_refined: int
    n_coarse: int
    coarse_mpp: float
    coarse_seconds: float
    seconds: float

    @property
    def refined_fraction(self) -> float:
        """Share of the working grid's tiles that were refined (1.0 for an empty grid)."""
        return self.n_refined / self.n_tiles if self.n_tiles else 1.0


def coarse_grid(source: SlideSource, grid: TileGrid, factor: float, tissue: TissueMask | None) -> TileGrid:
    """The coarse step's grid: ``grid``'s tile size and overlap (pixels) at ``factor`` × its µm/px,
    keeping tiles that touch ``tissue`` (all tiles when ``None``)."""
    return tile_grid(
        source.info, mpp=grid.mpp * factor, tile=grid.tile, overlap=grid.tile - grid.stride, tissue=tissue
    )


def predict_coarse(
    model: Any,
    source: SlideSource,
    grid: TileGrid,
    *,
    batch_size: int = 16,
    device: str = "auto",
    amp: bool = True,
    compile: bool = False,
    backend: str = "torch",
    workers: int = 4,
    prefetch: int = 2,
    stage: str = "coarse",
) -> Generator[PredictProgress, None, np.ndarray]:
    """``model``'s blended probability over ``grid`` (the coarse grid), returned as the stored uint8
    ``round(255·p)`` at ``map_geometry(source, grid)``'s shape (0 where no tile). The band engine of
    :func:`~napari_milkd.core.inference.stream.predict_slide`; only the uint8 map is kept."""
    from napari_milkd.core.inference.stream import InferenceRuntime, _Band, _stream_bands, _StreamStats

    _, shape = map_geometry(source, grid)
    out = np.zeros(shape, np.uint8)
    rt = InferenceRuntime(device, amp=amp, compile=compile, backend=backend)
    for item in _stream_bands(
        model,
        source,
        grid,
        rt,
        band_rows=DEFAULT_CHUNK,
        bands_done=0,
        batch_size=batch_size,
        workers=workers,
        prefetch=prefetch,
        stage=stage,
        stats=_StreamStats(),
    ):
        if isinstance(item, _Band):
            if item.prob is not None:
                out[item.row0 : item.row0 + item.rows] = encode_probability(item.prob)
        else:
            yield item
    return out


def footprints(grid: TileGrid, coarse_ds: float, coarse_shape: tuple[int, int]) -> np.ndarray:
    """``(N, 4)`` int64 coarse-map ``(r0, c0, r1, c1)`` (end exclusive, clipped to ``coarse_shape``) of
    each tile of ``grid``: the coarse pixels its level-0 square touches (at least one pixel)."""
    o = grid.origins_l0.astype(np.float64)
    h, w = coarse_shape
    r0 = np.clip(np.floor(o[:, 0] / coarse_ds), 0, max(h - 1, 0)).astype(np.int64)
    c0 = np.clip(np.floor(o[:, 1] / coarse_ds), 0, max(w - 1, 0)).astype(np.int64)
    r1 = np.clip(np.ceil((o[:, 0] + grid.tile_l0) / coarse_ds), r0 + 1, h).astype(np.int64)
    c1 = np.clip(np.ceil((o[:, 1] + grid.tile_l0) / coarse_ds), c0 + 1, w).astype(np.int64)
    return np.stack([r0, c0, r1, c1], axis=1)


def select_tiles(
    coarse: np.ndarray,
    coarse_ds: float,
    grid: TileGrid,
    *,
    low: float = DEFAULT_LOW,
    high: float | None = None,
) -> np.ndarray:
    """Which tiles of the working ``grid`` to refine (bool, one per tile): those whose coarse footprint
    (:func:`footprints`) holds a probability ≥ ``low`` and, when ``high`` is given, is not entirely
    ≥ ``high``. ``coarse`` is the uint8 coarse map of :func:`predict_coarse`, compared as ``p = v / 255``."""
    check_thresholds(low, high)
    boxes = footprints(grid, coarse_ds, coarse.shape)
    keep = np.zeros(len(boxes), bool)
    for i, (r0, c0, r1, c1) in enumerate(boxes):
        crop = coarse[r0:r1, c0:c1]
        if crop.size == 0:
            continue
        hi = float(crop.max()) / 255.0
        keep[i] = hi >= low and (high is None or float(crop.min()) / 255.0 < high)
    return keep


def _axis_weights(n: int, ds: float, coarse_ds: float, coarse_n: int) -> tuple[np.ndarray, ...]:
    """Per working pixel along one axis: the two coarse indices and the weight of the second."""
    u = (np.arange(n, dtype=np.float64) + 0.5) * ds / coarse_ds - 0.5
    u = np.clip(u, 0.0, max(coarse_n - 1, 0))
    i0 = np.floor(u).astype(np.int64)
    i1 = np.minimum(i0 + 1, max(coarse_n - 1, 0))
    return i0, i1, (u - i0).astype(np.float32)


class CoarseFill:
    """The :data:`~napari_milkd.core.inference.stream.Compose` of the cascade's fine step.

    Called with each finished band of the fine prediction over the refined tiles; returns the band with
    every pixel that a working tile covers but no refined tile covers set to the upsampled coarse
    probability. Pixels of refined tiles keep the fine value; pixels no working tile covers stay 0.
    Holds the uint8 coarse map and the tiles' map rectangles; per call, memory of a few bands.
    """

    def __init__(
        self,
        coarse: np.ndarray,
        coarse_ds: float,
        grid: TileGrid,
        ds: float,
        shape: tuple[int, int],
        refined: np.ndarray,
    ) -> None:
        self.coarse = coarse
        self.shape = shape
        self.tile = grid.tile
        origins = tile_map_origins(grid, ds)
        order = np.argsort(origins[:, 0], kind="stable")
        self.origins = origins[order]
        self.refined = np.asarray(refined, bool)[order]
        self.rows = _axis_weights(shape[0], ds, coarse_ds, coarse.shape[0])
        self.cols = _axis_weights(shape[1], ds, coarse_ds, coarse.shape[1])
        self.filled_px = 0

    def coverage(self, row0: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """``(covered, refined)`` bool ``(rows, width)``: pixels of map rows ``[row0, row0 + rows)`` that
        any working tile covers, and those a refined tile covers."""
        width, t = self.shape[1], self.tile
        covered = np.zeros((rows, width), bool)
        fine = np.zeros((rows, width), bool)
        r_end = row0 + rows
        lo = int(np.searchsorted(self.origins[:, 0], row0 - t, side="right"))
        hi = int(np.searchsorted(self.origins[:, 0], r_end, side="left"))
        for k in range(lo, hi):
            r0, c0 = int(self.origins[k, 0]), int(self.origins[k, 1])
            ra, rb = max(r0, row0) - row0, min(r0 + t, r_end) - row0
            ca, cb = max(c0, 0), min(c0 + t, width)
            if rb <= ra or cb <= ca:
                continue
            covered[ra:rb, ca:cb] = True
            if self.refined[k]:
                fine[ra:rb, ca:cb] = True
        return covered, fine

    def upsampled(self, row0: int, rows: int) -> np.ndarray:
        """The coarse probability (float32) bilinearly upsampled onto map rows ``[row0, row0 + rows)``."""
        i0, i1, fy = (a[row0 : row0 + rows] for a in self.rows)
        c = decode_probability(self.coarse[i0.min() : i1.max() + 1])
        base = i0.min()
        along = c[i0 - base] * (1 - fy)[:, None] + c[i1 - base] * fy[:, None]
        j0, j1, fx = self.cols
        out = np.take(along, j0, axis=1)
        out *= 1 - fx
        out += np.take(along, j1, axis=1) * fx
        return out

    def __call__(self, row0: int, rows: int, prob: np.ndarray | None) -> np.ndarray | None:
        covered, fine = self.coverage(row0, rows)
        fill = covered & ~fine
        if not fill.any():
            return prob
        out = np.zeros((rows, self.shape[1]), np.float32) if prob is None else prob
        out[fill] = self.upsampled(row0, rows)[fill]
        self.filled_px += int(fill.sum())
        return out


def predict_slide_cascade(
    model: Any,
    source: SlideSource,
    grid: TileGrid,
    out: str | Path,
    *,
    tissue: TissueMask | None,
    settings: CascadeSettings | None = None,
    threshold: float = 0.5,
    batch_size: int = 16,
    device: str = "auto",
    amp: bool = True,
    compile: bool = False,
    backend: str = "torch",
    chunk: int = DEFAULT_CHUNK,
    workers: int = 4,
    prefetch: int = 2,
    resume: bool = True,
    stage: str = "predict",
    finish: Finish | None = None,
) -> Generator[PredictProgress, None, CascadeResult]:
    """:func:`~napari_milkd.core.inference.stream.predict_slide` of ``model`` over ``grid`` (the working
    grid), coarse-to-fine: the coarse step (:func:`coarse_grid` over ``tissue``, :func:`predict_coarse`),
    the choice of tiles (:func:`select_tiles`), then predict_slide over the refined tiles only, with the
    coarse probability merged into every band (:class:`CoarseFill`). The zarr has the same layout,
    geometry and ``finish`` as a full prediction, and ``milkd.cascade`` attributes (settings and counts).

    With thresholds that refine every tile (``low=0``, no ``high``) the output equals predict_slide's.
    Resuming an interrupted cascade reruns the coarse step (1/``factor``² of the tiles) and continues the
    fine one (the refined tiles and settings are part of its fingerprint). Yields the progress of both
    steps (stages ``"<stage> coarse"`` and ``stage``); returns :class:`CascadeResult`.
    """
    settings = settings or CascadeSettings()
    t0 = time.perf_counter()
    cgrid = coarse_grid(source, grid, settings.factor, tissue)
    coarse_ds, coarse_shape = map_geometry(source, cgrid)
    ds, shape = map_geometry(source, grid)
    coarse = yield from predict_coarse(
        model,
        source,
        cgrid,
        batch_size=batch_size,
        device=device,
        amp=amp,
        compile=compile,
        backend=backend,
        workers=workers,
        prefetch=prefetch,
        stage=f"{stage} coarse",
    )
    coarse_seconds = time.perf_counter() - t0
    refined = select_tiles(coarse, coarse_ds, grid, low=settings.low, high=settings.high)
    subgrid = dataclasses.replace(
        grid, origins_l0=grid.origins_l0[refined], tissue_fraction=grid.tissue_fraction[refined]
    )
    fill = CoarseFill(coarse, coarse_ds, grid, ds, shape, refined)
    n_refined = int(refined.sum())
    facts = {
        "cascade": {
            **settings.to_facts(),
            "coarse_mpp": float(cgrid.mpp),
            "coarse_tiles": len(cgrid),
            "tiles": len(grid),
            "refined": n_refined,
            "coarse_shape": [int(coarse_shape[0]), int(coarse_shape[1])],
        }
    }
    prediction = yield from predict_slide(
        model,
        source,
        subgrid,
        out,
        threshold=threshold,
        batch_size=batch_size,
        device=device,
        amp=amp,
        compile=compile,
        backend=backend,
        chunk=chunk,
        workers=workers,
        prefetch=prefetch,
        resume=resume,
        stage=stage,
        finish=finish,
        compose=fill,
        run_facts=facts,
    )
    return CascadeResult(
        prediction=prediction,
        n_tiles=len(grid),
        n_refined=n_refined,
        n_coarse=len(cgrid),
        coarse_mpp=float(cgrid.mpp),
        coarse_seconds=round(coarse_seconds, 4),
        seconds=round(time.perf_counter() - t0, 4),
    )
