"""Streaming whole-slide prediction: seams, translation consistency, resume, layout, equality with
the in-memory map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_milkd.core.annotations import read_ome_zarr_labels
from napari_milkd.core.engine.models.dws_mil import SegOutput
from napari_milkd.core.errors import InputError
from napari_milkd.core.inference.stream import (
    PROGRESS_FILE,
    PredictProgress,
    decode_probability,
    open_prediction,
    predict_map,
    predict_slide,
    read_progress,
)
from napari_milkd.core.progress import drain
from napari_milkd.core.slides.geometry import map_geometry
from napari_milkd.core.slides.slide import ArraySlideSource
from napari_milkd.core.slides.tiling import tile_grid


def _out(prob: torch.Tensor) -> SegOutput:
    logit = torch.logit(prob.clamp(1e-6, 1 - 1e-6))
    return SegOutput(sides=(logit, logit, logit), fused_logit=logit, fused_prob=prob)


class Constant(torch.nn.Module):
    """0.6 everywhere (255·0.6 = 153 exactly, no rounding tie)."""

    def __init__(self) -> None:
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> SegOutput:
        return _out(torch.full((x.shape[0], 1, *x.shape[2:]), 0.6) + 0 * self.p)


class Pointwise(torch.nn.Module):
    """A per-pixel function of the colour (no spatial context), counting the tiles it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([[4.0, -3.0, 2.0]]).view(1, 3, 1, 1))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> SegOutput:
        self.calls += x.shape[0]
        return _out(torch.sigmoid((x * self.w).sum(1, keepdim=True) - 1.0))


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack(
        [128 + 90 * np.sin(xx / 13 + yy / 29), 128 + 90 * np.cos(yy / 11), 128 + 60 * np.sin((xx - yy) / 7)],
        -1,
    )
    return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)


def _drain_with_events(gen):  # type: ignore[no-untyped-def]
    events: list[object] = []
    return drain(gen, events.append), events


def test_constant_model_gives_constant_zarr(tmp_path: Path) -> None:
    source = ArraySlideSource(_image(700, 900), mpp=0.5)
    grid = tile_grid(source.info, mpp=1.0, tile=64, overlap=16)
    result, events = _drain_with_events(
        predict_slide(Constant(), source, grid, tmp_path / "c.zarr", batch_size=5, chunk=64, device="cpu")
    )
    prob, mask, facts = open_prediction(result.path)
    assert prob.shape == map_geometry(source, grid)[1] == result.shape
    assert (prob[...] == 153).all()  # every pixel covered, no seam
    assert (mask[...] == 1).all() and result.tumour_px == prob.size
    assert result.tumour_area_mm2 == pytest.approx(prob.size * 1.0**2 / 1e6)
    assert facts["complete"] is True
    assert all(isinstance(e, PredictProgress) for e in events) and events[-1].done == len(grid)
    rows = [e.rows_done for e in events]
    assert rows == sorted(rows) and rows[0] is not None
    # The mask is a valid OME-Zarr label image for the existing reader, with our downsample.
    labels, ds = read_ome_zarr_labels(result.path, "tumour")
    assert ds == pytest.approx(2.0) and labels.shape == result.shape


def test_translation_consistent_across_tile_borders(tmp_path: Path) -> None:
    """The same tissue shifted by a non-multiple of the stride predicts the same values at the same
    tissue pixels: tile placement and blending do not depend on where tile borders fall."""
    image = _image(300, 340, seed=3)
    shift = (37, 53)  # stride is 48
    shifted = np.full((300 + shift[0], 340 + shift[1], 3), 255, np.uint8)
    shifted[shift[0] :, shift[1] :] = image
    model = Pointwise()
    maps = []
    for k, img in enumerate((image, shifted)):
        source = ArraySlideSource(img, mpp=0.5)
        grid = tile_grid(source.info, mpp=0.5, tile=64, overlap=16)
        result = drain(predict_slide(model, source, grid, tmp_path / f"{k}.zarr", chunk=48, device="cpu"))
        maps.append(decode_probability(open_prediction(result.path)[0][...]))
    a, b = maps[0], maps[1][shift[0] :, shift[1] :]
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= 1 / 255 + 1e-6
    # and it equals the model applied to the whole image at once (no tiles at all)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    whole = model(x).fused_prob[0, 0].detach().numpy()
    assert np.abs(a - whole).max() <= 1 / 255 + 1e-5


def test_resume_skips_written_bands(tmp_path: Path) -> None:
    source = ArraySlideSource(_image(640, 512, seed=1), mpp=0.5)
    grid = tile_grid(source.info, mpp=0.5, tile=64, overlap=16)  # 13 rows × 10 cols of tiles
    out = tmp_path / "r.zarr"
    full = Pointwise()
    reference = drain(predict_slide(full, source, grid, tmp_path / "ref.zarr", chunk=128, batch_size=10))
    assert full.calls == len(grid) == reference.n_computed

    model = Pointwise()
    gen = predict_slide(model, source, grid, out, chunk=128, batch_size=10, prefetch=0)
    for event in gen:
        if event.rows_done is not None and event.rows_done >= 256:
            break  # cancel: the consumer stops iterating
    gen.close()
    record = read_progress(out)
    assert record is not None and not record["complete"]
    done_rows = record["bands_done"] * 128
    assert done_rows >= 256

    resumed = Pointwise()
    result = drain(predict_slide(resumed, source, grid, out, chunk=128, batch_size=10))
    origins_r = np.round(grid.origins_l0[:, 0]).astype(int)
    expected = int((np.minimum(origins_r + 64, 640) > done_rows).sum())
    assert resumed.calls == expected == result.n_computed < len(grid)
    np.testing.assert_array_equal(open_prediction(out)[0][...], open_prediction(reference.path)[0][...])
    np.testing.assert_array_equal(open_prediction(out)[1][...], open_prediction(reference.path)[1][...])
    assert result.tumour_px == reference.tumour_px

    again = Pointwise()
    done = drain(predict_slide(again, source, grid, out, chunk=128))
    assert again.calls == 0 and done.n_computed == 0 and done.tumour_px == reference.tumour_px
    # A different model (different weights) never reuses the old output.
    other = Pointwise()
    with torch.no_grad():
        other.w.mul_(-1)
    drain(predict_slide(other, source, grid, out, chunk=128))
    assert other.calls == len(grid)
    assert read_progress(out)["complete"] is True  # type: ignore[index]
    assert (out / PROGRESS_FILE).is_file()


def test_stream_equals_in_memory_map_with_tissue(tmp_path: Path) -> None:
    from napari_milkd.core.engine.models import build_model
    from napari_milkd.core.slides.tissue import slide_tissue

    image = np.full((900, 1100, 3), 245, np.uint8)
    image[100:800, 150:700] = _image(700, 550, seed=2)
    source = ArraySlideSource(image, mpp=0.5)
    grid = tile_grid(source.info, mpp=1.0, tile=64, overlap=8, tissue=slide_tissue(source))
    torch.manual_seed(0)
    model = build_model("tiny", "random")
    memory = drain(predict_map(model, source, grid, batch_size=8, device="cpu"))
    result = drain(predict_slide(model, source, grid, tmp_path / "t.zarr", chunk=96, batch_size=8, workers=3))
    prob = decode_probability(open_prediction(result.path)[0][...])
    assert np.abs(prob - memory).max() <= 1 / 510 + 1e-6
    assert result.n_tiles == len(grid) < 18 * 9  # tissue-only tiles
    assert (prob[:20, :20] == 0).all()  # background outside every tile stays 0
    np.testing.assert_array_equal(open_prediction(result.path)[1][...], (memory >= 0.5).astype(np.uint8))


def test_predict_slide_rejects_bad_options(tmp_path: Path) -> None:
    source = ArraySlideSource(_image(200, 200), mpp=0.5)
    grid = tile_grid(source.info, mpp=1.0, tile=64)
    with pytest.raises(InputError, match="threshold"):
        drain(predict_slide(Constant(), source, grid, tmp_path / "x.zarr", threshold=2.0))
    with pytest.raises(InputError, match="batch size"):
        drain(predict_slide(Constant(), source, grid, tmp_path / "x.zarr", batch_size=0))
    with pytest.raises(InputError, match="not a napari-milkd prediction"):
        open_prediction(tmp_path)


def test_vectorised_blend_equals_tile_by_tile(tmp_path: Path) -> None:
    # The scatter-add blend CUDA uses gives the tile-by-tile map, on the CPU here: tissue-only tiles,
    # overlaps, the map's right and bottom edges, bands flushed in the middle of a batch, and a resume.
    from napari_milkd.core.engine.models import build_model
    from napari_milkd.core.inference.stream import InferenceRuntime, _Band, _stream_bands, _StreamStats
    from napari_milkd.core.slides.tissue import slide_tissue

    image = np.full((700, 900, 3), 245, np.uint8)
    image[60:650, 90:870] = _image(590, 780, seed=3)
    source = ArraySlideSource(image, mpp=0.5)
    grid = tile_grid(source.info, mpp=1.0, tile=48, overlap=8, tissue=slide_tissue(source))
    torch.manual_seed(0)
    model = build_model("tiny", "random")

    def bands(vectorised: bool, bands_done: int) -> dict[int, np.ndarray | None]:
        out = _stream_bands(
            model, source, grid, InferenceRuntime("cpu"), band_rows=40, bands_done=bands_done, batch_size=16,
            workers=2, prefetch=2, stage="t", stats=_StreamStats(), blend_vectorised=vectorised,
        )  # fmt: skip
        return {b.index: b.prob for b in out if isinstance(b, _Band)}

    for done in (0, 3):
        loop, many = bands(False, done), bands(True, done)
        assert loop.keys() == many.keys() and len(loop) > 5
        for index, prob in loop.items():
            assert (prob is None) == (many[index] is None), index
            if prob is not None:
                np.testing.assert_allclose(many[index], prob, rtol=1e-6, atol=1e-6)
        assert any(p is not None and p.any() for p in loop.values())
