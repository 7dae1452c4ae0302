"""Coarse-to-fine cascade (issue 14): refining every tile is the full prediction; skipped tiles never
reach the model; refined pixels equal the full prediction; the rest is the upsampled coarse map; memory
stays in bands."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_milkd.core.engine.models.dws_mil import SegOutput
from napari_milkd.core.errors import InputError
from napari_milkd.core.inference.cascade import (
    CascadeSettings,
    CoarseFill,
    coarse_grid,
    predict_slide_cascade,
    select_tiles,
)
from napari_milkd.core.inference.stream import open_prediction, predict_map, predict_slide, read_progress
from napari_milkd.core.progress import drain
from napari_milkd.core.slides.geometry import map_geometry, tile_map_origins
from napari_milkd.core.slides.slide import ArraySlideSource
from napari_milkd.core.slides.tiling import tile_grid


class RedIsTumour(torch.nn.Module):
    """Per-pixel probability from the colour (high where red dominates), counting the tiles it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([[8.0, -6.0, -2.0]]).view(1, 3, 1, 1))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> SegOutput:
        self.calls += x.shape[0]
        prob = torch.sigmoid((x * self.w).sum(1, keepdim=True) - 1.0)
        logit = torch.logit(prob.clamp(1e-6, 1 - 1e-6))
        return SegOutput(sides=(logit, logit, logit), fused_logit=logit, fused_prob=prob)


def _slide(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Textured blue-green 'normal tissue' with a red 'tumour' disc in the upper left."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack(
        [60 + 30 * np.sin(xx / 9), 140 + 40 * np.cos(yy / 7), 170 + 30 * np.sin((xx + yy) / 11)], -1
    )
    disc = (yy - h * 0.3) ** 2 + (xx - w * 0.3) ** 2 < (min(h, w) * 0.18) ** 2
    img[disc] = np.stack([230 + 0 * xx[disc], 60 + 20 * np.sin(xx[disc] / 5), 70 + 0 * xx[disc]], -1)
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


def _cascade(model, source, grid, out: Path, low: float, high: float | None = None, **kw):  # type: ignore[no-untyped-def]
    """``predict_slide_cascade`` at factor 4 on the CPU, drained."""
    settings = CascadeSettings(4, low, high)
    return drain(
        predict_slide_cascade(model, source, grid, out, tissue=None, settings=settings, device="cpu", **kw)
    )


def _prob(path: str) -> np.ndarray:
    return np.asarray(open_prediction(path)[0][...])


def test_refining_every_tile_is_the_full_prediction(tmp_path: Path) -> None:
    source = ArraySlideSource(_slide(520, 600), mpp=0.5)
    grid = tile_grid(source.info, mpp=1.0, tile=64, overlap=8)
    model = RedIsTumour()
    full = drain(predict_slide(model, source, grid, tmp_path / "full.zarr", chunk=64, device="cpu"))
    model.calls = 0
    settings = CascadeSettings(factor=4, low=0.0)
    result = drain(
        predict_slide_cascade(
            model, source, grid, tmp_path / "c.zarr", tissue=None, settings=settings, chunk=64, device="cpu"
        )
    )
    assert result.n_refined == result.n_tiles == len(grid)
    assert model.calls == result.n_coarse + len(grid)
    assert np.array_equal(_prob(result.prediction.path), _prob(full.path))
    assert np.array_equal(open_prediction(result.prediction.path)[1][...], open_prediction(full.path)[1][...])
    facts = open_prediction(result.prediction.path)[2]
    assert facts["cascade"]["refined"] == len(grid) and facts["cascade"]["coarse_mpp"] == pytest.approx(4.0)


def test_skipped_tiles_are_not_run_and_take_the_coarse_map(tmp_path: Path) -> None:
    source = ArraySlideSource(_slide(900, 1000, seed=2), mpp=0.5)
    grid = tile_grid(source.info, mpp=1.0, tile=64, overlap=8)
    model = RedIsTumour()
    full = drain(predict_slide(model, source, grid, tmp_path / "full.zarr", chunk=128, device="cpu"))
    full_prob = _prob(full.path)
    model.calls = 0
    settings = CascadeSettings(factor=4, low=0.3)
    result = drain(
        predict_slide_cascade(
            model, source, grid, tmp_path / "c.zarr", tissue=None, settings=settings, chunk=128, device="cpu"
        )
    )
    assert 0 < result.n_refined < len(grid) // 2
    # Only the coarse tiles and the refined ones went through the model.
    assert model.calls == result.n_coarse + result.n_refined
    assert result.prediction.n_computed == result.n_refined

    # The refined set is select_tiles on the coarse map (recomputed independently here).
    cgrid = coarse_grid(source, grid, 4, None)
    coarse = np.rint(np.clip(drain(predict_map(RedIsTumour(), source, cgrid, device="cpu")), 0, 1) * 255)
    coarse_ds, _ = map_geometry(source, cgrid)
    refined = select_tiles(coarse.astype(np.uint8), coarse_ds, grid, low=0.3)
    assert int(refined.sum()) == result.n_refined

    # Pixels only refined tiles cover equal the full prediction; the others are the upsampled coarse map.
    ds, shape = map_geometry(source, grid)
    fill = CoarseFill(coarse.astype(np.uint8), coarse_ds, grid, ds, shape, refined)
    covered, fine = fill.coverage(0, shape[0])
    others = CoarseFill(coarse.astype(np.uint8), coarse_ds, grid, ds, shape, ~refined)
    skipped = others.coverage(0, shape[0])[1]
    out = _prob(result.prediction.path)
    only_fine = fine & ~skipped
    assert only_fine.sum() > 0 and np.array_equal(out[only_fine], full_prob[only_fine])
    coarse_px = covered & ~fine
    expected = np.rint(fill.upsampled(0, shape[0]) * 255).astype(np.uint8)
    assert coarse_px.sum() > 0 and np.abs(out[coarse_px].astype(int) - expected[coarse_px]).max() <= 1
    assert (out[~covered] == 0).all()
    # On this slide the tumour is where the full prediction says so: the masks agree (Dice).
    a, b = out >= 128, full_prob >= 128
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.97


def test_high_skips_confident_tiles_and_nothing_to_refine(tmp_path: Path) -> None:
    source = ArraySlideSource(_slide(600, 640, seed=4), mpp=0.5)
    grid = tile_grid(source.info, mpp=1.0, tile=64, overlap=8)
    model = RedIsTumour()
    low_only = drain(
        predict_slide_cascade(
            model,
            source,
            grid,
            tmp_path / "a.zarr",
            tissue=None,
            settings=CascadeSettings(4, 0.3),
            device="cpu",
        )
    )
    both = drain(
        predict_slide_cascade(
            model,
            source,
            grid,
            tmp_path / "b.zarr",
            tissue=None,
            settings=CascadeSettings(4, 0.3, 0.6),
            device="cpu",
        )
    )
    assert both.n_refined < low_only.n_refined  # tiles entirely inside the disc keep the coarse map
    model.calls = 0
    none = drain(
        predict_slide_cascade(
            model,
            source,
            grid,
            tmp_path / "n.zarr",
            tissue=None,
            settings=CascadeSettings(4, 1.0),
            device="cpu",
        )
    )
    assert none.n_refined == 0 and model.calls == none.n_coarse and none.prediction.n_computed == 0
    assert _prob(none.prediction.path).max() > 0  # the coarse map fills the slide


def test_settings_are_checked() -> None:
    for bad in ((1.0, 0.1, None), (float("nan"), 0.1, None), (4, -0.1, None), (4, 0.5, 0.5), (4, 0.2, 1.5)):
        with pytest.raises(InputError, match="--cascade-"):
            CascadeSettings(*bad)


def test_memory_stays_in_bands(tmp_path: Path) -> None:
    """No full-size float map: the numpy memory the cascade allocates (tracemalloc traces numpy) stays well
    below one float32 map (12 000 × 400 map: 19.2 MB; the uint8 map predict_slide's pyramid reads back is a
    quarter of it), while predict_map, which holds one, does not."""
    source = ArraySlideSource(_slide(12000, 400, seed=5), mpp=1.0)
    grid = tile_grid(source.info, mpp=1.0, tile=64, overlap=8)
    _, shape = map_geometry(source, grid)
    float_map = shape[0] * shape[1] * 4
    model = RedIsTumour()

    def peak(gen) -> int:  # type: ignore[no-untyped-def]
        tracemalloc.start()
        try:
            drain(gen)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    full_peak = peak(predict_map(model, source, grid, device="cpu"))
    cascade_peak = peak(
        predict_slide_cascade(
            model,
            source,
            grid,
            tmp_path / "m.zarr",
            tissue=None,
            settings=CascadeSettings(4, 0.3),
            device="cpu",
        )
    )
    assert full_peak >= float_map
    assert cascade_peak < float_map / 2, (cascade_peak, float_map)


def test_coverage_matches_the_tile_rectangles() -> None:
    source = ArraySlideSource(_slide(300, 330), mpp=0.5)
    grid = tile_grid(source.info, mpp=1.0, tile=64, overlap=8)
    ds, shape = map_geometry(source, grid)
    keep = np.arange(len(grid)) % 3 == 0
    fill = CoarseFill(np.zeros((10, 10), np.uint8), ds * 4, grid, ds, shape, keep)
    expected = np.zeros(shape, bool)
    for r, c in tile_map_origins(grid, ds)[keep]:
        expected[r : r + 64, c : c + 64] = True
    # Band by band (rows 0-49, 50-99, ...) the same as all at once.
    bands = np.concatenate([fill.coverage(r, min(50, shape[0] - r))[1] for r in range(0, shape[0], 50)])
    assert np.array_equal(bands, expected)


def test_an_interrupted_cascade_resumes_to_the_same_output(tmp_path: Path) -> None:
    source = ArraySlideSource(_slide(900, 1000, seed=2), mpp=0.5)
    grid = tile_grid(source.info, mpp=1.0, tile=64, overlap=8)
    reference = _cascade(RedIsTumour(), source, grid, tmp_path / "ref.zarr", 0.3, chunk=64, batch_size=4)
    out = tmp_path / "r.zarr"
    settings = CascadeSettings(4, 0.3)
    gen = predict_slide_cascade(
        RedIsTumour(), source, grid, out, tissue=None, settings=settings, device="cpu", chunk=64, batch_size=4
    )
    for event in gen:
        if event.stage == "predict" and event.rows_done is not None and event.rows_done >= 128:
            break  # cancelled during the fine step, some bands (with their coarse fill) written
    gen.close()
    record = read_progress(out)
    assert record is not None and not record["complete"] and record["bands_done"] >= 2

    model = RedIsTumour()
    resumed = _cascade(model, source, grid, out, 0.3, chunk=64, batch_size=4)
    assert 0 < resumed.prediction.n_computed < resumed.n_refined == reference.n_refined
    assert model.calls == resumed.n_coarse + resumed.prediction.n_computed
    assert np.array_equal(_prob(str(out)), _prob(reference.prediction.path))
    assert np.array_equal(open_prediction(out)[1][...], open_prediction(reference.prediction.path)[1][...])
    # Other cascade settings never resume this zarr: the settings are part of its fingerprint.
    other = _cascade(RedIsTumour(), source, grid, out, 0.3, high=0.9, chunk=64, batch_size=4)
    assert other.prediction.n_computed == other.n_refined and not other.prediction.complete_before
