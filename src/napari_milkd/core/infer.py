"""Tiled prediction over a slide into a probability map at the working resolution.

Owns the loop "read tiles → model → paste into the map", with smooth blending where tiles overlap.
A generator: it yields :class:`PredictProgress` after every batch and returns the map, so the widget
runs it in a worker (cancellable between batches) and the CLI drains it. May import numpy, torch
(lazily), and the core's slide/tiling/train modules.

The map has one pixel per tile pixel: downsample ``grid.tile_l0 / grid.tile`` from level 0, shape
``ceil(level-0 shape / downsample)``. Pixel ``(r, c)`` covers level-0 ``[r·ds, (r+1)·ds)``. Pixels no tile
covers are 0.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_milkd.core.slide import SlideSource
from napari_milkd.core.tiling import TileGrid, read_tile


@dataclass(frozen=True)
class PredictProgress:
    """Yielded after each batch: ``done`` of ``total`` tiles predicted."""

    stage: str
    done: int
    total: int


def map_geometry(source: SlideSource, grid: TileGrid) -> tuple[float, tuple[int, int]]:
    """``(downsample, (rows, cols))`` of the working-resolution map for ``grid`` over ``source``."""
    ds = grid.tile_l0 / grid.tile
    h0, w0 = source.info.shape
    return ds, (int(np.ceil(h0 / ds)), int(np.ceil(w0 / ds)))


def blend_window(size: int) -> np.ndarray:
    """A separable weight window, 1 in the middle falling to 0.1 at the edges, for seamless overlaps."""
    ramp = np.minimum(np.arange(size) + 0.5, size - np.arange(size) - 0.5) / (size / 4)
    w1 = np.clip(ramp, 0.1, 1.0).astype(np.float32)
    return np.outer(w1, w1)


def read_tiles(source: SlideSource, grid: TileGrid, index: np.ndarray) -> np.ndarray:
    """Tiles ``index`` of ``grid`` as ``(N, tile, tile, 3)`` uint8."""
    return np.stack([read_tile(source, grid, int(i)) for i in index])


def predict_map(
    model: Any,
    source: SlideSource,
    grid: TileGrid,
    *,
    batch_size: int = 16,
    device: str = "auto",
    stage: str = "predict",
) -> Generator[PredictProgress, None, np.ndarray]:
    """Predict ``model``'s fused probability on every tile of ``grid``; return the blended map (float32)."""
    from napari_milkd.core.train import predict_probs

    ds, shape = map_geometry(source, grid)
    acc = np.zeros(shape, np.float32)
    weight = np.zeros(shape, np.float32)
    window = blend_window(grid.tile)
    n = len(grid)
    for start in range(0, n, batch_size):
        index = np.arange(start, min(start + batch_size, n))
        probs = predict_probs(model, read_tiles(source, grid, index), batch_size=batch_size, device=device)
        for i, prob in zip(index, probs, strict=True):
            r0 = round(grid.origins_l0[i, 0] / ds)
            c0 = round(grid.origins_l0[i, 1] / ds)
            r1, c1 = min(r0 + grid.tile, shape[0]), min(c0 + grid.tile, shape[1])
            w = window[: r1 - r0, : c1 - c0]
            acc[r0:r1, c0:c1] += prob[: r1 - r0, : c1 - c0] * w
            weight[r0:r1, c0:c1] += w
        yield PredictProgress(stage=stage, done=int(index[-1]) + 1, total=n)
    np.divide(acc, weight, out=acc, where=weight > 0)
    return acc
