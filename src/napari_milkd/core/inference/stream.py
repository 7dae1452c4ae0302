"""Tiled prediction over a slide: in memory (:func:`predict_map`) or streamed into an OME-Zarr
(:func:`predict_slide`), with smooth blending where tiles overlap.

Owns the loop "read tiles → model → blend → write", the inference runtime (device, bf16 autocast,
channels_last, optional ``torch.compile``, pinned batches), the prediction zarr layout and its resume
record. May import numpy, zarr, torch (lazily, inside functions: importing this module does not load
torch) and the core's slide/tiling/annotations/atomic/train modules; never napari or Qt.

Geometry. The map has one pixel per tile pixel: downsample ``ds = grid.tile_l0 / grid.tile`` from level 0,
shape ``ceil(level-0 shape / ds)``. Pixel ``(r, c)`` covers level-0 ``[r·ds, (r+1)·ds)``; tile ``i`` lands at
map ``(round(y_l0 / ds), round(x_l0 / ds))``. Each tile's probability is weighted by :func:`blend_window`
(1 inside, falling to 0.1 at the edge) and the map is Σ w·p / Σ w, so overlaps blend without seams.
Pixels no tile covers are 0.

Streaming. Tiles are processed in order of their first map row. The map is cut into **bands** of
``chunk`` rows (one row of zarr chunks); a band is final once the next tile starts below it, and is then
divided by its weights, thresholded, written and dropped. Only ``chunk + tile`` map rows of accumulators
(float32, on the model's device) are alive at any time, so memory does not grow with slide height;
the full-width band is the only thing that grows with slide width.

Engine. Tile reads run in a thread pool (OpenSlide reads are thread-safe and release the GIL) into
reusable batch buffers (pinned on CUDA), ``prefetch`` batches ahead, so decoding overlaps the model; band
writes run on one writer thread, in order. Cancelling = the consumer stops iterating: at most the batches
in flight are lost; the zarr stays consistent because the resume record is written after the data.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_milkd.core.atomic import write_json_atomic
from napari_milkd.core.errors import InputError
from napari_milkd.core.slides.geometry import map_geometry, tile_map_origins
from napari_milkd.core.slides.slide import SlideSource
from napari_milkd.core.slides.tiling import TileGrid, read_tile

if TYPE_CHECKING:
    import torch
    import zarr

#: Format tag of the prediction zarr's ``milkd`` attributes and resume record.
PREDICTION_FORMAT = "napari-milkd/prediction-v1"
#: Name of the label image (the thresholded mask) inside a prediction zarr.
MASK_LABEL = "tumour"
#: The resume record inside a prediction zarr (written atomically, after the data it describes).
PROGRESS_FILE = "milkd-progress.json"
#: Default chunk side (map pixels) of the prediction arrays; also the band height.
DEFAULT_CHUNK = 512
#: The prediction's pyramid (probability and mask) is halved until its longer side is at most this many
#: map pixels, so a viewer opens a whole-slide result from a small overview level.
PYRAMID_SMALLEST = 1024


@dataclass(frozen=True)
class PredictProgress:
    """Yielded after each batch: ``done`` of ``total`` tiles predicted.

    ``rows_done`` (streaming only): map rows ``[0, rows_done)`` are final (written, never change again),
    so a front-end may show them progressively.
    """

    stage: str
    done: int
    total: int
    rows_done: int | None = None


@dataclass(frozen=True)
class SlidePrediction:
    """What :func:`predict_slide` returns.

    ``path`` is the prediction zarr; ``shape``/``downsample`` the map geometry; ``mpp`` the working µm/px
    (map pixel size); ``n_tiles`` the tiles of the grid, ``n_computed`` those run through the model in this
    call (0 when the zarr was already complete); ``tumour_px`` map pixels ≥ threshold; ``seconds`` the wall
    time of this call; ``complete_before`` True when ``path`` already held this complete prediction and
    nothing was written; ``timings`` seconds spent waiting for tiles (``read_wait_s``), in the model and
    blending (``compute_s``) and waiting for the writer (``write_wait_s``).
    """

    path: str
    shape: tuple[int, int]
    downsample: float
    mpp: float
    n_tiles: int
    n_computed: int
    tumour_px: int
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    complete_before: bool = False

    @property
    def tumour_area_mm2(self) -> float:
        """Area of the thresholded mask in mm² (map pixels × (µm/px)² / 10⁶)."""
        return self.tumour_px * self.mpp**2 / 1e6


def blend_window(size: int) -> np.ndarray:
    """A separable weight window, 1 in the middle falling to 0.1 at the edges, for seamless overlaps."""
    ramp = np.minimum(np.arange(size) + 0.5, size - np.arange(size) - 0.5) / (size / 4)
    w1 = np.clip(ramp, 0.1, 1.0).astype(np.float32)
    return np.outer(w1, w1)


# ---------------------------------------------------------------------------------------------------------
# runtime


class InferenceRuntime:
    """Device-dependent inference settings: where the model runs, bf16 autocast on CUDA, channels_last
    on CUDA and CPU, optional ``torch.compile``, pinned host buffers for batches.

    On CPU the model runs in float32, channels_last (1.3–1.5× the NCHW forward of efficientnet_lite0 on
    2 cores with identical masks: ``benchmarks/bench_cpu_infer.py``, ``docs/benchmarks.md``), uncompiled
    unless ``compile=True``; on MPS in float32, NCHW.

    ``backend="onnx"`` runs the forward in ONNX Runtime on the CPU instead (:mod:`.onnx_backend`: the
    model exported once per weights and tile size, cached; an optional extra): ``device`` must then be
    ``"auto"`` or ``"cpu"`` and ``compile`` False, and an :class:`InputError` says so, or that
    onnxruntime is not installed.
    """

    #: The forward backends :meth:`prepare` knows.
    BACKENDS = ("torch", "onnx")

    def __init__(
        self, device: str = "auto", *, amp: bool = True, compile: bool = False, backend: str = "torch"
    ) -> None:
        import torch

        from napari_milkd.core.runtime import resolve_device

        if backend not in self.BACKENDS:
            known = ", ".join(self.BACKENDS)
            raise InputError(f"unknown inference backend {backend!r} (choose from {known})")
        self.backend = backend
        if backend == "onnx":
            from napari_milkd.core.inference.onnx_backend import require_onnxruntime

            require_onnxruntime()
            if device not in ("auto", "cpu"):
                raise InputError(f"the onnx backend runs on the CPU: use device 'cpu', not {device!r}")
            if compile:
                raise InputError("torch.compile applies to the torch backend, not to the onnx backend")
            device = "cpu"
        self.device: torch.device = resolve_device(device)
        self.cuda = self.device.type == "cuda"
        self.amp = bool(amp) and self.cuda
        # ONNX Runtime takes a contiguous NCHW array: a channels_last input would only be copied back.
        self.channels_last = backend == "torch" and (self.cuda or self.device.type == "cpu")
        self.compile = bool(compile)
        if self.cuda:
            torch.backends.cudnn.benchmark = True
        elif self.device.type == "cpu":
            # OpenMP starts its worker threads at the first parallel operation. Start them now, while
            # memory is plentiful: later, under a memory limit (ulimit -v), libgomp cannot create them and
            # aborts the process, which no Python handler can turn into a one-line error.
            torch.ones(1 << 17).sum()

    def prepare(self, model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """Move ``model`` to the device in eval mode; return ``x (N,3,H,W) float → fused prob (N,H,W)``."""
        import torch

        if self.backend == "onnx":
            from napari_milkd.core.inference.onnx_backend import prepare_onnx

            return prepare_onnx(model)
        model.eval().to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        net: Callable[[torch.Tensor], Any] = torch.compile(model, dynamic=False) if self.compile else model

        def fused(x: torch.Tensor) -> torch.Tensor:
            return net(x).fused_prob[:, 0].float()

        return fused

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast on CUDA when ``amp``; a no-op elsewhere."""
        import torch

        if self.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def host_buffer(self, shape: tuple[int, ...]) -> torch.Tensor:
        """A uint8 host tensor for a batch: page-locked on CUDA (async copies), plain elsewhere."""
        import torch

        buf = torch.empty(shape, dtype=torch.uint8)
        return buf.pin_memory() if self.cuda else buf

    def to_input(self, batch: torch.Tensor) -> torch.Tensor:
        """``(N, H, W, 3)`` uint8 host batch → ``(N, 3, H, W)`` float in [0, 1] on the device.

        On CUDA the copy is asynchronous and the permuted view is already channels_last in memory.
        """
        x = batch.to(self.device, non_blocking=self.cuda).permute(0, 3, 1, 2)
        x = x.float().div_(255)
        return x if self.channels_last else x.contiguous()

    def release(self) -> None:
        """Return cached device memory to the driver (end of a job, or cancel)."""
        if self.cuda:
            import torch

            torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------------
# tile loading


class _BatchLoader:
    """Reads batches of tiles in a thread pool, ``prefetch`` batches ahead, into reusable host buffers.

    Iterating yields ``(tile indices, (n, T, T, 3) uint8 tensor view of a buffer, slot)``. On CUDA the
    consumer calls :meth:`mark_used` with an event recorded after its async copy, so a buffer is not
    overwritten while the copy is in flight.
    """

    def __init__(
        self,
        source: SlideSource,
        grid: TileGrid,
        batches: list[np.ndarray],
        rt: InferenceRuntime,
        *,
        workers: int,
        prefetch: int,
        batch_size: int,
    ) -> None:
        self.source, self.grid, self.batches, self.rt = source, grid, batches, rt
        self.prefetch = max(0, int(prefetch))
        n_slots = min(len(batches), self.prefetch + 2) if batches else 0
        t = grid.tile
        self.buffers = [rt.host_buffer((batch_size, t, t, 3)) for _ in range(n_slots)]
        self.events: list[Any] = [None] * n_slots
        if not rt.cuda:
            # On the CPU the model already uses every core; extra decoding threads only compete with it
            # (bench_infer on 2 cores: 4 read threads 0.83×, 1 read thread 0.94× a plain loop).
            workers = min(int(workers), max(1, (os.cpu_count() or 2) // 2))
        self.pool = ThreadPoolExecutor(max_workers=max(1, int(workers)), thread_name_prefix="milkd-read")
        self.read_wait_s = 0.0

    def _read_into(self, out: np.ndarray, index: int) -> None:
        out[...] = read_tile(self.source, self.grid, index)

    def _submit(self, b: int) -> tuple[int, list[Future[None]]]:
        slot = b % len(self.buffers)
        event = self.events[slot]
        if event is not None:
            event.synchronize()  # the previous async copy out of this buffer has finished
            self.events[slot] = None
        view = self.buffers[slot].numpy()
        futures = [self.pool.submit(self._read_into, view[k], int(i)) for k, i in enumerate(self.batches[b])]
        return slot, futures

    def mark_used(self, slot: int, event: Any) -> None:
        """Record the CUDA event after which buffer ``slot`` may be reused."""
        self.events[slot] = event

    def __iter__(self) -> Iterator[tuple[np.ndarray, Any, int]]:
        pending: deque[tuple[int, int, list[Future[None]]]] = deque()
        next_b = 0
        try:
            for b in range(len(self.batches)):
                while next_b < len(self.batches) and next_b <= b + self.prefetch:
                    pending.append((next_b, *self._submit(next_b)))
                    next_b += 1
                _, slot, futures = pending.popleft()
                t0 = time.perf_counter()
                for f in futures:
                    f.result()
                self.read_wait_s += time.perf_counter() - t0
                n = len(self.batches[b])
                yield self.batches[b], self.buffers[slot][:n], slot
        finally:
            for _, _, futures in pending:
                for f in futures:
                    f.cancel()
            self.pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------------------------------------
# the streaming core


@dataclass
class _Band:
    """A finished band: map rows ``[row0, row0 + rows)``, blended probability (float32), or ``None``
    when no tile reached it (all 0: nothing to write, zarr's fill value already says so)."""

    index: int
    row0: int
    prob: np.ndarray | None
    rows: int


@dataclass
class _StreamStats:
    n_computed: int = 0
    compute_s: float = 0.0
    read_wait_s: float = 0.0


def _blend_one(
    acc: Any, wsum: Any, weighted: Any, window: Any, origin: np.ndarray, base: int, height: int
) -> None:
    """Add one tile's weighted probability (t, t) and its window into the accumulators, whose row 0 is map
    row ``base``; ``origin`` is the tile's (row, col) in the map, rows above ``base`` or past the map's
    edges dropped."""
    t = window.shape[0]
    r0, c0 = int(origin[0]), int(origin[1])
    ra, rb = max(r0, base), min(r0 + t, height)
    c1 = min(c0 + t, acc.shape[1])
    if rb <= ra or c1 <= c0:
        return
    src = slice(ra - r0, rb - r0), slice(0, c1 - c0)
    dst = slice(ra - base, rb - base), slice(c0, c1)
    acc[dst] += weighted[src]
    wsum[dst] += window[src]


def _blend_many(
    acc: Any, wsum: Any, weighted: Any, window: Any, origins: Any, base: int, height: int
) -> None:
    """:func:`_blend_one` for m tiles at once: ``weighted`` (m, t, t), ``origins`` (m, 2) on the device.

    One ``index_put_(accumulate=True)`` per accumulator; pixels outside the map or above ``base`` add 0
    at index 0, so nothing is indexed by a mask (which would synchronise with the device)."""
    import torch

    t, width = window.shape[0], acc.shape[1]
    steps = torch.arange(t, device=origins.device)
    rows = origins[:, :1] + steps  # (m, t) map rows
    cols = origins[:, 1:] + steps  # (m, t) map columns
    ok = ((rows >= base) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
    flat = torch.where(ok, (rows - base)[:, :, None] * width + cols[:, None, :], 0).flatten()
    acc.view(-1).index_put_((flat,), torch.where(ok, weighted, 0).flatten(), accumulate=True)
    wsum.view(-1).index_put_((flat,), torch.where(ok, window, 0).flatten(), accumulate=True)


def _stream_bands(
    model: Any,
    source: SlideSource,
    grid: TileGrid,
    rt: InferenceRuntime,
    *,
    band_rows: int,
    bands_done: int,
    batch_size: int,
    workers: int,
    prefetch: int,
    stage: str,
    stats: _StreamStats,
    blend_vectorised: bool | None = None,
) -> Generator[PredictProgress | _Band, None, None]:
    """Yield :class:`PredictProgress` after every batch and each finished :class:`_Band` (in order).

    Bands ``< bands_done`` are already written: tiles lying entirely inside them are skipped, and rows
    of theirs that straddling tiles cover are dropped. ``blend_vectorised``: blend a batch's tiles with
    one scatter-add (:func:`_blend_many`) or tile by tile (:func:`_blend_one`); ``None`` = on CUDA only.
    """
    import torch

    if batch_size < 1:
        raise InputError(f"batch size must be ≥ 1, got {batch_size}")
    ds, (height, width) = map_geometry(source, grid)
    t = grid.tile
    n_bands = -(-height // band_rows)
    origins = tile_map_origins(grid, ds)
    order = np.argsort(origins[:, 0], kind="stable")
    skip_rows = min(bands_done * band_rows, height)
    ends = np.minimum(origins[order, 0] + t, height)
    todo = order[ends > skip_rows]
    total = len(grid)
    done = total - len(todo)
    batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]

    window = torch.from_numpy(blend_window(t)).to(rt.device)
    cap = band_rows + t
    base = skip_rows  # first map row held by the accumulators
    next_band = bands_done
    max_row = base  # end row of the lowest tile added so far
    acc = torch.zeros((cap, width), dtype=torch.float32, device=rt.device)
    wsum = torch.zeros((cap, width), dtype=torch.float32, device=rt.device)

    def flush_until(row: int) -> Iterator[_Band]:
        """Emit every band that ends at or before ``row`` (all remaining when ``row`` ≥ height)."""
        nonlocal base, next_band, acc, wsum, max_row
        while next_band < n_bands and min((next_band + 1) * band_rows, height) <= row:
            r0 = next_band * band_rows
            r1 = min(r0 + band_rows, height)
            if max_row <= r0:  # no tile reached this band (glass, or past the last tile): all 0
                yield _Band(next_band, r0, None, r1 - r0)
            else:
                a, w = acc[: r1 - r0], wsum[: r1 - r0]
                prob = torch.where(w > 0, a / w.clamp_min(1e-12), torch.zeros_like(a))
                yield _Band(next_band, r0, prob.cpu().numpy(), r1 - r0)
            if max_row > base + band_rows:  # rows below this band hold data: shift them up
                acc = torch.cat([acc[band_rows:], torch.zeros_like(acc[:band_rows])])
                wsum = torch.cat([wsum[band_rows:], torch.zeros_like(wsum[:band_rows])])
            elif max_row > base:  # only this band held data
                acc.zero_()
                wsum.zero_()
            base += band_rows
            next_band += 1

    # One blend per run of tiles on CUDA (a few kernels a batch, no per-tile Python that the reader threads
    # fight over for the GIL); tile by tile on the CPU, where slice adds are cheaper than scattered ones.
    vectorised = rt.cuda if blend_vectorised is None else blend_vectorised
    todo_origins = torch.as_tensor(origins[todo], device=rt.device) if vectorised else None
    pos = 0  # position in ``todo`` of the batch's first tile
    forward = rt.prepare(model)
    loader = _BatchLoader(
        source, grid, batches, rt, workers=workers, prefetch=prefetch, batch_size=batch_size
    )
    pad = rt.compile  # a compiled graph wants one batch shape: pad the last batch
    try:
        for index, host, slot in loader:
            t0 = time.perf_counter()
            x = rt.to_input(host)
            if rt.cuda:
                event = torch.cuda.Event()
                event.record()
                loader.mark_used(slot, event)
            n = len(index)
            if pad and n < batch_size:
                x = torch.cat([x, x.new_zeros((batch_size - n, *x.shape[1:]))])
            with torch.no_grad(), rt.autocast():  # grad mode is not held across a yield
                probs = forward(x)[:n]
            weighted = probs * window
            rows0 = origins[index, 0]  # ascending: the tiles are in row order
            k = 0
            while k < n:
                r0 = int(rows0[k])
                if r0 >= base + band_rows:
                    for band in flush_until(r0):
                        stats.compute_s += time.perf_counter() - t0
                        yield band
                        t0 = time.perf_counter()
                # tiles k..m-1 all start inside the accumulators' first band: one blend for all
                m = k + int(np.searchsorted(rows0[k:], base + band_rows, side="left"))
                if vectorised:
                    assert todo_origins is not None
                    _blend_many(
                        acc, wsum, weighted[k:m], window, todo_origins[pos + k : pos + m], base, height
                    )
                else:
                    for j in range(k, m):
                        _blend_one(acc, wsum, weighted[j], window, origins[index[j]], base, height)
                max_row = max(max_row, min(int(rows0[m - 1]) + t, height))
                k = m
            pos += n
            stats.n_computed += n
            stats.compute_s += time.perf_counter() - t0
            done += n
            yield PredictProgress(stage=stage, done=done, total=total, rows_done=next_band * band_rows)
        stats.read_wait_s = loader.read_wait_s
        for band in flush_until(height):
            yield band
    finally:
        stats.read_wait_s = loader.read_wait_s
        rt.release()


# ---------------------------------------------------------------------------------------------------------
# in memory


def predict_map(
    model: Any,
    source: SlideSource,
    grid: TileGrid,
    *,
    batch_size: int = 16,
    device: str = "auto",
    stage: str = "predict",
    workers: int = 2,
    prefetch: int = 1,
    out: np.ndarray | None = None,
) -> Generator[PredictProgress, None, np.ndarray]:
    """Predict ``model``'s fused probability on every tile of ``grid``; return the blended map (float32).

    The same engine as :func:`predict_slide` (threaded reads, blending in bands), assembled in memory:
    use it for working maps that fit in RAM (the widget's editable masks are at most 16384² anyway).
    ``out`` (zeros, float32, the map's shape) may be given to watch the map fill: rows
    ``[0, event.rows_done)`` are final when an event is yielded.
    """
    rt = InferenceRuntime(device)
    _, shape = map_geometry(source, grid)
    if out is None:
        out = np.zeros(shape, np.float32)
    elif out.shape != shape or out.dtype != np.float32:
        raise ValueError(f"out must be float32 {shape}, got {out.dtype} {out.shape}")
    stats = _StreamStats()
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
        stats=stats,
    ):
        if isinstance(item, _Band):
            if item.prob is not None:
                out[item.row0 : item.row0 + item.rows] = item.prob
        else:
            yield item
    return out


# ---------------------------------------------------------------------------------------------------------
# streamed into an OME-Zarr


def encode_probability(prob: np.ndarray) -> np.ndarray:
    """Float probability in [0, 1] → the stored uint8 ``round(255·p)`` (error ≤ 1/510)."""
    return np.rint(np.clip(prob, 0.0, 1.0) * 255.0).astype(np.uint8)


def decode_probability(stored: np.ndarray) -> np.ndarray:
    """Stored uint8 probability → float32 in [0, 1]."""
    return np.asarray(stored, dtype=np.float32) / 255.0


def model_fingerprint(model: Any) -> str:
    """SHA-1 of a model's state dict (names, shapes, bytes): identifies the weights a zarr was made with."""
    import torch

    digest = hashlib.sha1()
    for name, tensor in model.state_dict().items():
        arr = tensor.detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(arr.shape)).encode())
        digest.update(arr.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _run_fingerprint(
    model_hash: str, source: SlideSource, grid: TileGrid, shape: tuple[int, int], chunk: int, threshold: float
) -> dict[str, Any]:
    origins = hashlib.sha1(np.ascontiguousarray(grid.origins_l0, dtype=np.int64).tobytes()).hexdigest()
    return {
        "format": PREDICTION_FORMAT,
        "model": model_hash,
        "slide_shape_l0": list(source.info.shape),
        "slide_mpp": source.info.mpp,
        "mpp": grid.mpp,
        "tile": grid.tile,
        "stride": grid.stride,
        "level": grid.level,
        "tiles": hashlib.sha1(origins.encode()).hexdigest(),
        "shape": list(shape),
        "chunk": int(chunk),
        "threshold": float(threshold),
    }


def read_progress(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The resume record of a prediction zarr (``None`` when absent or unreadable)."""
    try:
        data = json.loads((Path(path) / PROGRESS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _create_prediction_zarr(
    path: Path,
    shape: tuple[int, int],
    chunk: int,
    *,
    mpp_l0: float | None,
    downsample: float,
    facts: dict[str, Any],
) -> tuple[zarr.Array, zarr.Array]:
    """Create (replacing) the prediction hierarchy; return ``(probability, mask)`` arrays."""
    import zarr

    from napari_milkd.core.annotations import DEFAULT_CLASS_NAMES, DEFAULT_LABEL_COLORS, ome_multiscales

    if path.exists():  # only ever a prediction of ours (check_prediction_target) or our own aside folder
        shutil.rmtree(path)
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.attrs["ome"] = {"version": "0.5", "multiscales": ome_multiscales("probability", mpp_l0, downsample)}
    root.attrs["milkd"] = facts
    chunks = (min(chunk, max(1, shape[0])), min(chunk, max(1, shape[1])))
    kw: dict[str, Any] = {"shape": shape, "chunks": chunks, "dtype": "uint8", "fill_value": 0}
    prob = root.create_array("0", dimension_names=("y", "x"), **kw)
    labels = root.create_group("labels")
    labels.attrs["ome"] = {"version": "0.5", "labels": [MASK_LABEL]}
    label = labels.create_group(MASK_LABEL)
    label.attrs["ome"] = {
        "version": "0.5",
        "multiscales": ome_multiscales(MASK_LABEL, mpp_l0, downsample),
        "image-label": {
            "colors": [{"label-value": 1, "rgba": list(DEFAULT_LABEL_COLORS[1])}],
            "properties": [{"label-value": 1, "class": DEFAULT_CLASS_NAMES[1]}],
            "source": {"image": "../../"},
        },
    }
    label.attrs["milkd"] = {"downsample": float(downsample), "mpp": mpp_l0}
    mask = label.create_array("0", dimension_names=("y", "x"), **kw)
    return prob, mask


def open_prediction(
    path: str | os.PathLike[str], mode: str = "r"
) -> tuple[zarr.Array, zarr.Array, dict[str, Any]]:
    """``(probability uint8, mask uint8, milkd facts)`` of a prediction zarr, lazily (zarr arrays).

    Raises :class:`InputError` when ``path`` is not a prediction written by :func:`predict_slide`.
    """
    import zarr

    folder = Path(path)
    try:
        root = zarr.open_group(str(folder), mode=mode)  # type: ignore[arg-type]
        facts = root.attrs.asdict().get("milkd", {})
        if facts.get("format") != PREDICTION_FORMAT:
            raise InputError(f"{folder} is not a napari-milkd prediction")
        return root["0"], root[f"labels/{MASK_LABEL}/0"], facts
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError, ValueError) as exc:
        raise InputError(f"{folder} is not a napari-milkd prediction ({exc.__class__.__name__})") from None


def prediction_levels(
    path: str | os.PathLike[str],
) -> tuple[list[zarr.Array], list[zarr.Array], dict[str, Any]]:
    """``(probability levels, mask levels, milkd facts)`` of a prediction zarr, lazily, level 0 first:
    the arrays its NGFF ``multiscales`` list (one level for predictions made before the pyramid).

    Raises :class:`InputError` when ``path`` is not a prediction written by :func:`predict_slide`.
    """
    import zarr

    folder = Path(path)
    try:
        root = zarr.open_group(str(folder), mode="r")
        facts = root.attrs.asdict().get("milkd", {})
        if facts.get("format") != PREDICTION_FORMAT:
            raise InputError(f"{folder} is not a napari-milkd prediction")
        label = root[f"labels/{MASK_LABEL}"]

        def listed(group: Any) -> list[zarr.Array]:
            datasets = group.attrs.asdict()["ome"]["multiscales"][0]["datasets"]
            return [group[str(d["path"])] for d in datasets] or [group["0"]]

        return listed(root), listed(label), facts
    except (
        FileNotFoundError,
        KeyError,
        IndexError,
        TypeError,
        zarr.errors.GroupNotFoundError,
        ValueError,
    ) as exc:
        raise InputError(f"{folder} is not a napari-milkd prediction ({exc.__class__.__name__})") from None


def _write_prediction_pyramid(
    folder: Path, shape: tuple[int, int], *, mpp_l0: float | None, downsample: float
) -> int:
    """Levels 1.. of the probability (2×2 mean of the stored uint8, rounded) and of the mask (every second
    pixel, so level ``k`` is ``mask[::2ᵏ, ::2ᵏ]`` and stays 0/1) from their complete level 0, halved until
    the longer side is at most :data:`PYRAMID_SMALLEST`; then both ``multiscales`` list every level.
    Idempotent (levels are rewritten), so a resumed run redoes it. Returns the number of levels."""
    import zarr

    from napari_milkd.core.annotations import extend_pyramid, ome_multiscales, pyramid_levels

    levels = pyramid_levels(shape, smallest=PYRAMID_SMALLEST, least=1, most=16)
    root = zarr.open_group(str(folder), mode="r+")
    label = root[f"labels/{MASK_LABEL}"]
    extend_pyramid(root, levels, mean=True)
    extend_pyramid(label, levels, mean=False)
    # The metadata after the arrays it lists.
    root.attrs["ome"] = {
        **root.attrs.asdict()["ome"],
        "multiscales": ome_multiscales("probability", mpp_l0, downsample, levels=levels),
    }
    label.attrs["ome"] = {
        **label.attrs.asdict()["ome"],
        "multiscales": ome_multiscales(MASK_LABEL, mpp_l0, downsample, levels=levels),
    }
    return levels


#: What the top of a prediction folder holds: milkd writes nothing else there (``tumour.geojson`` is the
#: GeoJSON's copy, :data:`napari_milkd.core.inference.cohort.GEOJSON_COPY`; hidden ``.*.part`` files are
#: atomic writes a kill interrupted). A folder with anything else in it is not replaced.
#: What a prediction folder holds besides its pyramid levels (``0``, ``1``, …: see :func:`_is_level`).
PREDICTION_ENTRIES = frozenset({"zarr.json", "labels", PROGRESS_FILE, "tumour.geojson"})


def _is_level(name: str) -> bool:
    """A pyramid level's array folder: ``0``, ``1``, … (the multiscale levels milkd writes)."""
    return name.isdigit() and str(int(name)) == name


def prediction_facts(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``milkd`` attributes of a prediction zarr (its marker), or ``None`` when ``path`` is not one.

    Reads only the root's ``zarr.json`` (no zarr import): this is how milkd tells its own output from a
    user's folder of the same name before it replaces anything.
    """
    folder = Path(path)
    if folder.is_symlink() or not folder.is_dir():
        return None
    try:
        meta = json.loads((folder / "zarr.json").read_text(encoding="utf-8"))
        facts = meta["attributes"]["milkd"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return facts if isinstance(facts, dict) and facts.get("format") == PREDICTION_FORMAT else None


def check_prediction_target(path: str | os.PathLike[str]) -> None:
    """Raise :class:`InputError` (one line) unless ``path`` is absent or a prediction milkd wrote.

    A symbolic link, a file, or a folder without milkd's marker (a user's OME-Zarr, bioformats2raw's
    output of the same name) is never replaced or deleted.
    """
    target = Path(path)
    if target.is_symlink():
        raise InputError(
            f"{target} is a symbolic link; milkd does not write predictions through links "
            "(remove the link or choose another --out)"
        )
    if not target.exists():
        return
    if not target.is_dir():
        raise InputError(f"{target} exists and is a file; move it away or choose another --out")
    if prediction_facts(target) is None:
        raise InputError(
            f"{target} exists and is not a napari-milkd prediction (milkd replaces only its own output); "
            "move it away or choose another --out"
        )
    foreign = sorted(
        entry.name
        for entry in target.iterdir()
        if entry.name not in PREDICTION_ENTRIES
        and not (_is_level(entry.name) and entry.is_dir())
        and not (entry.name.startswith(".") and entry.name.endswith(".part"))
    )
    if foreign:
        raise InputError(
            f"{target} holds files milkd did not write ({', '.join(foreign[:3])}"
            f"{', …' if len(foreign) > 3 else ''}); they are kept: move them away or choose another --out"
        )


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _aside_name(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def stale_asides(path: str | os.PathLike[str]) -> list[Path]:
    """Folders that killed runs left beside ``path``, after putting back a prediction a killed swap had
    moved aside; returns the stale ``.<name>.tmp-*`` folders (unfinished writes), newest first.

    Matches only milkd's own hidden names: ``.<name>.tmp-<pid>-<hex>`` / ``.<name>.old-<pid>-<hex>`` written
    here, and ``.<name>.tmp-<hex>`` of OME-Zarr exports; a folder whose pid is a live process other than
    this one is left alone. Stale ``.old-*`` folders are deleted (or restored when ``path`` is missing).
    """
    target = Path(path)
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(tmp|old)-(?:(\d+)-)?[0-9a-f]{{8}}$")
    found: list[tuple[str, Path]] = []
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return []
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None or entry.is_symlink() or not entry.is_dir():
            continue
        pid = match.group(2)
        if pid is not None and int(pid) != os.getpid() and _pid_alive(int(pid)):
            continue  # another live process is writing it
        found.append((match.group(1), entry))
    for kind, entry in found:
        if kind != "old":
            continue
        if not target.exists() and not target.is_symlink() and prediction_facts(entry) is not None:
            os.replace(entry, target)  # a swap was killed between its two renames: the previous one is back
        else:
            shutil.rmtree(entry, ignore_errors=True)
    tmps = [entry for kind, entry in found if kind == "tmp" and entry.exists()]
    return sorted(tmps, key=lambda e: e.stat().st_mtime, reverse=True)


def _swap_into_place(work: Path, path: Path) -> None:
    """Rename the finished ``work`` folder onto ``path``; a previous prediction there is moved aside
    first and deleted only after the rename (a kill in between leaves it to :func:`stale_asides`)."""
    old = None
    if path.exists():
        old = _aside_name(path, "old")
        os.replace(path, old)
    try:
        os.replace(work, path)
    except BaseException:
        if old is not None:
            os.replace(old, path)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


#: ``finish(folder, probability, mask)``: called once all bands are written, before the prediction is
#: marked complete; may rewrite the mask and write files into ``folder``; returns facts merged into the
#: ``milkd`` attributes (``tumour_px`` among them replaces the streamed count).
Finish = Callable[[Path, "zarr.Array", "zarr.Array"], dict[str, Any]]

#: ``compose(row0, rows, prob)``: called (on the writer thread, in band order) with each finished band's
#: blended probability (float32 ``(rows, width)``, map rows ``[row0, row0 + rows)``; ``None`` when no tile
#: reached the band) before it is encoded and thresholded; returns the band to write (``None``: all 0).
#: The coarse-to-fine cascade fills the pixels its refined tiles do not cover (``inference.cascade``).
Compose = Callable[[int, int, "np.ndarray | None"], "np.ndarray | None"]


def predict_slide(
    model: Any,
    source: SlideSource,
    grid: TileGrid,
    out: str | os.PathLike[str],
    *,
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
    compose: Compose | None = None,
    run_facts: dict[str, Any] | None = None,
) -> Generator[PredictProgress, None, SlidePrediction]:
    """Predict ``model`` over ``grid`` and stream probability and mask into the OME-Zarr ``out``.

    Layout (NGFF 0.5, zarr v3; see ``docs/cohort.md``): the root is an image whose array ``0`` is the
    blended probability as **uint8** ``round(255·p)`` (0 where no tile); ``labels/tumour/0`` the mask
    (uint8, 1 where ``p ≥ threshold`` on the float probability, else 0, unless ``finish`` rewrites it);
    both ``chunk``² chunks, with NGFF ``scale``/``translation`` from
    :func:`~napari_milkd.core.annotations.ome_zarr_transform`, so
    :func:`~napari_milkd.core.annotations.read_ome_zarr_labels` reads the mask back.

    A generator: yields :class:`PredictProgress` after each batch, returns :class:`SlidePrediction`.
    With ``resume`` an interrupted zarr made by the same model over the same grid continues: bands in
    its record (``milkd-progress.json``, written after each band's data) are kept and only tiles reaching
    below them are run; a complete one is returned without running the model. ``finish`` runs after the
    last band and before the prediction is marked complete (completion is always the last write); then
    both images get their pyramid (arrays ``1``, ``2``, ... halved until the longer side is at most
    :data:`PYRAMID_SMALLEST`, see :func:`_write_prediction_pyramid`), also before completion.

    ``out`` is never a user's file: a link, a file or a folder without milkd's marker is refused
    (:func:`check_prediction_target`). An existing prediction that is not resumed (``resume=False``, another
    model, other settings) is kept until the new one is complete: the new one is written beside it under a
    hidden name and renamed over it at the end. Folders that killed runs left beside ``out`` are cleaned
    (:func:`stale_asides`); with ``resume`` an unfinished one of the same run is continued.
    ``workers`` threads read tiles, ``prefetch`` batches ahead; ``compile`` uses ``torch.compile`` (pads
    the last batch to keep one shape). ``compose`` rewrites each band before it is written (see
    :data:`Compose`); ``run_facts`` (JSON values: no tuples) describe what else decides the output (the
    cascade's settings): they join the resume fingerprint and the ``milkd`` attributes.
    """
    import torch

    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"threshold must be in [0, 1], got {threshold}")
    if chunk < 16:
        raise InputError(f"chunk must be ≥ 16 map pixels, got {chunk}")
    t_start = time.perf_counter()
    path = Path(out)
    ds, shape = map_geometry(source, grid)
    n_bands = -(-shape[0] // chunk)
    if not isinstance(model, torch.nn.Module):
        raise InputError("predict_slide needs a torch.nn.Module (its weights identify resumable output)")
    check_prediction_target(path)
    fingerprint = _run_fingerprint(model_fingerprint(model), source, grid, shape, chunk, threshold)
    if run_facts:
        fingerprint = {**fingerprint, **run_facts}
    leftovers = stale_asides(path)
    check_prediction_target(path)  # a restored previous prediction is one of ours

    def matches(folder: Path) -> dict[str, Any] | None:
        record = read_progress(folder) if resume and prediction_facts(folder) is not None else None
        return record if record is not None and record.get("fingerprint") == fingerprint else None

    work = path
    record = matches(path) if path.exists() else None
    if record is not None and record.get("complete"):
        for folder in leftovers:
            shutil.rmtree(folder, ignore_errors=True)
        return SlidePrediction(
            path=str(path),
            shape=shape,
            downsample=ds,
            mpp=grid.mpp,
            n_tiles=len(grid),
            n_computed=0,
            tumour_px=int(record.get("tumour_px", 0)),
            seconds=time.perf_counter() - t_start,
            timings={"read_wait_s": 0.0, "compute_s": 0.0, "write_wait_s": 0.0},
            complete_before=True,
        )
    if record is None:
        adopted = next((folder for folder in leftovers if matches(folder) is not None), None)
        for folder in leftovers:
            if folder != adopted:
                shutil.rmtree(folder, ignore_errors=True)
        if path.exists():  # a prediction that is not resumed: keep it until the new one is complete
            work = _aside_name(path, "tmp")
        if adopted is not None:  # an unfinished write of this same run, left by a killed process
            os.replace(adopted, work)
            record = matches(work)
    else:
        for folder in leftovers:
            shutil.rmtree(folder, ignore_errors=True)
    if record is not None:
        prob_arr, mask_arr, _ = open_prediction(work, mode="r+")
        bands_done = int(record.get("bands_done", 0))
        tumour_px = int(record.get("tumour_px", 0))
    else:
        facts = {
            "format": PREDICTION_FORMAT,
            "slide": source.info.to_dict(),
            "slide_mpp": source.info.mpp,
            "downsample": ds,
            "mpp": grid.mpp,
            "tile": grid.tile,
            "stride": grid.stride,
            "threshold": float(threshold),
            "n_tiles": len(grid),
            "probability": "uint8 round(255*p); 0 where no tile",
            "mask": f"labels/{MASK_LABEL}/0: 1 where p >= threshold",
            "complete": False,
            **(run_facts or {}),
        }
        prob_arr, mask_arr = _create_prediction_zarr(
            work, shape, chunk, mpp_l0=source.info.mpp, downsample=ds, facts=facts
        )
        bands_done, tumour_px = 0, 0
        write_json_atomic(work / PROGRESS_FILE, _record(fingerprint, 0, n_bands, 0, False))

    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="milkd-write")
    pending: deque[Future[None]] = deque()
    write_wait = 0.0
    counter = {"tumour_px": tumour_px}

    def write_band(band: _Band) -> None:
        prob = band.prob if compose is None else compose(band.row0, band.rows, band.prob)
        if prob is not None:
            mask = (prob >= threshold).astype(np.uint8)
            rows = slice(band.row0, band.row0 + band.rows)
            prob_arr[rows, :] = encode_probability(prob)
            mask_arr[rows, :] = mask
            counter["tumour_px"] += int(mask.sum())
        elif band.index + 1 < n_bands:
            return  # nothing written: the record catches up at the next written band or at the end
        write_json_atomic(
            work / PROGRESS_FILE, _record(fingerprint, band.index + 1, n_bands, counter["tumour_px"], False)
        )

    stats = _StreamStats()
    rt = InferenceRuntime(device, amp=amp, compile=compile, backend=backend)
    try:
        for item in _stream_bands(
            model,
            source,
            grid,
            rt,
            band_rows=chunk,
            bands_done=bands_done,
            batch_size=batch_size,
            workers=workers,
            prefetch=prefetch,
            stage=stage,
            stats=stats,
        ):
            if isinstance(item, _Band):
                t0 = time.perf_counter()
                while len(pending) >= 2:  # bound the queue: at most two bands in host memory
                    pending.popleft().result()
                write_wait += time.perf_counter() - t0
                pending.append(writer.submit(write_band, item))
                while pending and pending[0].done():
                    pending.popleft().result()
            else:
                yield item
        t0 = time.perf_counter()
        while pending:
            pending.popleft().result()
        write_wait += time.perf_counter() - t0
    finally:
        writer.shutdown(wait=True)
    import zarr

    extra = dict(finish(work, prob_arr, mask_arr)) if finish is not None else {}
    tumour_px = int(extra.get("tumour_px", counter["tumour_px"]))
    extra["levels"] = _write_prediction_pyramid(work, shape, mpp_l0=source.info.mpp, downsample=ds)
    # Completion is the last write: the attributes, then the resume record, then (when written aside) the
    # rename over the previous prediction.
    root = zarr.open_group(str(work), mode="r+")
    root.attrs["milkd"] = {**root.attrs.asdict()["milkd"], **extra, "complete": True, "tumour_px": tumour_px}
    write_json_atomic(work / PROGRESS_FILE, _record(fingerprint, n_bands, n_bands, tumour_px, True))
    if work != path:
        _swap_into_place(work, path)
    return SlidePrediction(
        path=str(path),
        shape=shape,
        downsample=ds,
        mpp=grid.mpp,
        n_tiles=len(grid),
        n_computed=stats.n_computed,
        tumour_px=tumour_px,
        seconds=time.perf_counter() - t_start,
        timings={
            "read_wait_s": round(stats.read_wait_s, 4),
            "compute_s": round(stats.compute_s, 4),
            "write_wait_s": round(write_wait, 4),
        },
    )


def _record(
    fingerprint: dict[str, Any], bands_done: int, n_bands: int, tumour_px: int, complete: bool
) -> dict[str, Any]:
    return {
        "fingerprint": fingerprint,
        "bands_done": int(bands_done),
        "n_bands": int(n_bands),
        "tumour_px": int(tumour_px),
        "complete": bool(complete),
    }
