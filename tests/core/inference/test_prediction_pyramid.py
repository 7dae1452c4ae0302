"""``milkd predict`` writes a multiscale pyramid for the probability and the mask (issue 14 item 3): levels
halved until the longer side fits :data:`PYRAMID_SMALLEST`, each level the 2×2 mean (probability) or every
second pixel (mask) of the one above, listed in valid NGFF 0.5 ``multiscales``, rewritten by a resumed run,
and opened by napari's reader as multiscale layers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_milkd.core.annotations.omezarr import _halve_mean
from napari_milkd.core.atomic import write_json_atomic
from napari_milkd.core.inference import stream
from napari_milkd.core.inference.stream import (
    MASK_LABEL,
    PROGRESS_FILE,
    predict_slide,
    prediction_levels,
    read_progress,
)
from napari_milkd.core.progress import drain
from napari_milkd.core.slides.slide import ArraySlideSource
from napari_milkd.core.slides.tiling import tile_grid

torch = pytest.importorskip("torch")
zarr = pytest.importorskip("zarr")


class Ramp(torch.nn.Module):
    """Probability from the red channel: a varied map, and a mask with both values."""

    def __init__(self) -> None:
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> object:
        from napari_milkd.core.engine.models.dws_mil import SegOutput

        prob = (x[:, :1] * 0.8 + 0.1).clamp(0.01, 0.99) + 0 * self.p
        logit = torch.logit(prob)
        return SegOutput(sides=(logit, logit, logit), fused_logit=logit, fused_prob=prob)


def _predict(out: Path, *, resume: bool = True) -> stream.SlidePrediction:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    image[:, :150] = 255  # a bright block: mask 1 there
    source = ArraySlideSource(image, mpp=0.5)
    grid = tile_grid(source.info, mpp=1.0, tile=64, overlap=16)  # downsample 2: a 150×200 map
    return drain(
        predict_slide(Ramp(), source, grid, out, chunk=32, device="cpu", resume=resume), lambda _: None
    )


@pytest.fixture
def small_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream, "PYRAMID_SMALLEST", 64)  # 200 → 100 → 50: three levels


def _check_pyramid(path: Path) -> None:
    probability, mask, facts = prediction_levels(path)
    assert [a.shape for a in probability] == [(150, 200), (75, 100), (38, 50)]
    assert [a.shape for a in mask] == [(150, 200), (75, 100), (38, 50)]
    assert facts["complete"] is True and facts["levels"] == 3
    m0 = mask[0][...]
    assert set(np.unique(m0)) == {0, 1}
    for k in range(1, 3):
        np.testing.assert_array_equal(probability[k][...], _halve_mean(probability[k - 1][...]))
        np.testing.assert_array_equal(mask[k][...], m0[:: 2**k, :: 2**k])
        assert probability[k].dtype == np.uint8 and mask[k].dtype == np.uint8
    # the multiscales list every level, placed at downsample ds·2ᵏ (µm: mpp 0.5, ds 2)
    root = zarr.open_group(str(path), mode="r")
    for group in (root, root[f"labels/{MASK_LABEL}"]):
        datasets = group.attrs["ome"]["multiscales"][0]["datasets"]
        assert [d["path"] for d in datasets] == ["0", "1", "2"]
        for k, d in enumerate(datasets):
            scale, translation = (t[t["type"]] for t in d["coordinateTransformations"])
            assert scale == pytest.approx([0.5 * 2 * 2**k] * 2)
            assert translation == pytest.approx([0.5 * (2 * 2**k - 1) / 2] * 2)
    assert "image-label" in root[f"labels/{MASK_LABEL}"].attrs["ome"]


def test_levels_are_halvings_of_the_level_above(tmp_path: Path, small_limit: None) -> None:
    result = _predict(tmp_path / "s0.zarr")
    assert result.shape == (150, 200)
    _check_pyramid(tmp_path / "s0.zarr")


def test_pyramid_is_valid_ngff(tmp_path: Path, small_limit: None) -> None:
    pytest.importorskip("ome_zarr_models")
    from ome_zarr_models.v05.image import Image
    from ome_zarr_models.v05.image_label import ImageLabel

    _predict(tmp_path / "s0.zarr")
    group = zarr.open_group(str(tmp_path / "s0.zarr"), mode="r")
    image = Image.from_zarr(group)
    assert len(image.ome_attributes.multiscales[0].datasets) == 3
    assert image.labels is not None and image.labels.label_paths == [MASK_LABEL]
    label = ImageLabel.from_zarr(group[f"labels/{MASK_LABEL}"])
    assert len(label.ome_attributes.multiscales[0].datasets) == 3


def test_a_map_that_fits_has_one_level(tmp_path: Path) -> None:
    _predict(tmp_path / "s0.zarr")  # 150×200 ≤ 1024: no pyramid
    probability, mask, facts = prediction_levels(tmp_path / "s0.zarr")
    assert len(probability) == len(mask) == 1 and facts["levels"] == 1
    assert "1" not in zarr.open_group(str(tmp_path / "s0.zarr"), mode="r")


def test_resumed_run_rewrites_a_partly_written_pyramid(tmp_path: Path, small_limit: None) -> None:
    """A kill after some levels were written, before completion: the resumed run computes no tile, rewrites
    every level and the metadata, and marks completion last."""
    out = tmp_path / "s0.zarr"
    _predict(out)
    root = zarr.open_group(str(out), mode="r+")
    root["1"][...] = 7  # a half-written level
    del root[f"labels/{MASK_LABEL}/2"]  # a level not written yet
    root.attrs["milkd"] = {**root.attrs.asdict()["milkd"], "complete": False}
    write_json_atomic(out / PROGRESS_FILE, {**read_progress(out), "complete": False})  # type: ignore[dict-item]
    result = _predict(out)
    assert result.n_computed == 0 and not result.complete_before
    assert read_progress(out)["complete"] is True  # type: ignore[index]
    _check_pyramid(out)


def test_napari_reader_opens_a_multiscale_probability_and_mask(tmp_path: Path, small_limit: None) -> None:
    from napari_milkd._prediction_reader import napari_get_reader

    out = tmp_path / "s0.zarr"
    _predict(out)
    assert napari_get_reader(str(tmp_path)) is None  # not a prediction
    reader = napari_get_reader(str(out))
    assert reader is not None
    (prob, prob_kw, prob_type), (mask, mask_kw, mask_type) = reader(str(out))
    assert (prob_type, mask_type) == ("image", "labels")
    assert prob_kw["multiscale"] is True and mask_kw["multiscale"] is True
    assert [a.shape for a in prob] == [a.shape for a in mask] == [(150, 200), (75, 100), (38, 50)]
    # level 0 placed like the slide's mask: µm, scale mpp·ds, centre of pixel 0 at mpp·(ds − 1)/2
    for kw in (prob_kw, mask_kw):
        assert kw["scale"] == pytest.approx((1.0, 1.0)) and kw["translate"] == pytest.approx((0.25, 0.25))
        assert kw["units"] == ("micrometer", "micrometer")
        assert kw["metadata"]["milkd_prediction"]["complete"] is True
    layers = pytest.importorskip("napari.layers")
    image = layers.Image(prob, **prob_kw)
    labels = layers.Labels(mask, **mask_kw)
    assert image.multiscale and labels.multiscale and len(labels.data) == 3


def test_napari_finds_the_prediction_reader_through_npe2(tmp_path: Path, small_limit: None) -> None:
    npe2 = pytest.importorskip("npe2")
    out = tmp_path / "s0.zarr"
    _predict(out)
    manager = npe2.PluginManager.instance()
    manager.discover()
    layers = npe2.read([str(out)], plugin_name="napari-milkd", stack=False)
    assert [t[2] for t in layers] == ["image", "labels"]


def test_reading_a_prediction_loads_no_torch(tmp_path: Path, small_limit: None) -> None:
    import subprocess
    import sys

    out = tmp_path / "s0.zarr"
    _predict(out)
    code = (
        "import sys; from napari_milkd._prediction_reader import read_prediction; "
        f"layers = read_prediction({str(out)!r}); assert len(layers[0][0]) == 3; "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
