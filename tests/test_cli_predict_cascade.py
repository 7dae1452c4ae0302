"""``milkd predict --cascade``: one-line errors for bad cascade flags before any work, and a cascade
that refines every tile writes the full prediction's zarr."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_milkd.cli import main
from napari_milkd.core.inference.cascade import DEFAULT_FACTOR
from napari_milkd.core.inference.stream import open_prediction
from napari_milkd.core.slides.sample import write_pyramidal_tiff
from test_predict_outputs import _run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `milkd train`-like run folder with a tiny random student (1 µm/px, 64-px tiles)."""
    return _run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 768×896 generated slide at 0.5 µm/px: textured 'tissue' on white glass."""
    rng = np.random.default_rng(0)
    image = np.full((768, 896, 3), 240, np.uint8)
    yy, xx = np.mgrid[0:600, 0:700].astype(np.float32)
    tissue = np.stack([150 + 60 * np.sin(xx / 17), 80 + 50 * np.cos(yy / 13), 170 + 40 * np.sin(xx / 9)], -1)
    image[80:680, 100:800] = np.clip(tissue + rng.normal(0, 10, tissue.shape), 0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("slides") / "s0.tiff"
    write_pyramidal_tiff(path, [image, image[::4, ::4].copy()], mpp=0.5, tile=128)
    return path


def _argv(run: Path, slide: Path, out: Path, *extra: str) -> list[str]:
    return ["predict", "--run", str(run), str(slide), "--out", str(out), "--device", "cpu", *extra]


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--cascade-low", "0.3"], "--cascade-low needs --cascade"),
        (["--cascade-factor", "2"], "--cascade-factor needs --cascade"),
        (["--cascade", "--cascade-factor", "1"], "--cascade-factor must be > 1"),
        (["--cascade", "--cascade-factor", "nan"], "--cascade-factor must be > 1"),
        (["--cascade", "--cascade-factor", "100"], "--cascade-factor must be > 1"),
        (["--cascade", "--cascade-low", "1.5"], "--cascade-low must be in [0, 1]"),
        (["--cascade", "--cascade-low", "-0.1"], "--cascade-low must be in [0, 1]"),
        (["--cascade", "--cascade-low", "0.5", "--cascade-high", "0.4"], "--cascade-high must be in"),
        (["--cascade", "--cascade-high", "inf"], "--cascade-high must be in"),
    ],
)
def test_bad_cascade_flags_are_one_line_before_any_work(
    run_dir: Path, slide: Path, tmp_path: Path, capsys: pytest.CaptureFixture, flags: list[str], says: str
) -> None:
    out = tmp_path / "out"
    assert main(_argv(run_dir, slide, out, *flags)) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("milkd: error: ") and "Traceback" not in err, err
    assert says in lines[0]
    assert not out.exists()


def test_cascade_refining_everything_writes_the_full_prediction(
    run_dir: Path, slide: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(_argv(run_dir, slide, tmp_path / "full", "--json")) == 0
    full = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(_argv(run_dir, slide, tmp_path / "c", "--json", "--cascade", "--cascade-low", "0")) == 0
    cascade = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert cascade["refined"] == cascade["n_tiles"] == full["n_tiles"] and full["refined"] is None
    assert cascade["n_computed"] > cascade["n_tiles"]  # the coarse tiles as well
    a_prob, a_mask, _ = open_prediction(full["zarr"])
    b_prob, b_mask, facts = open_prediction(cascade["zarr"])
    assert np.array_equal(a_prob[...], b_prob[...]) and np.array_equal(a_mask[...], b_mask[...])
    assert facts["cascade"]["low"] == 0.0 and facts["cascade"]["coarse_mpp"] == pytest.approx(DEFAULT_FACTOR)
    assert cascade["tumour_area_mm2"] == full["tumour_area_mm2"]

    def regions(folder: Path) -> list[object]:  # feature ids are random UUIDs: compare the geometry
        features = json.loads((folder / "s0.geojson").read_text())["features"]
        return [f["geometry"] for f in features]

    assert regions(tmp_path / "c") == regions(tmp_path / "full") != []


def test_cascade_summary_line_and_resume(
    run_dir: Path, slide: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = _argv(run_dir, slide, tmp_path / "c", "--cascade", "--cascade-low", "0.5")
    assert main(argv) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "refined by the cascade" in line
    before = (tmp_path / "c" / "s0.zarr" / "milkd-progress.json").read_bytes()
    assert main(argv) == 0  # the same cascade again: the complete zarr is kept
    assert (tmp_path / "c" / "s0.zarr" / "milkd-progress.json").read_bytes() == before


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--backend", "tensorrt"], "unknown --backend 'tensorrt'"),
        (["--backend", "onnx", "--compile"], "--compile is for the torch backend"),
        (["--backend", "onnx", "--device", "cuda"], "--backend onnx runs on the CPU"),
    ],
)
def test_bad_backend_flags_are_one_line_before_any_work(
    run_dir: Path, slide: Path, tmp_path: Path, capsys: pytest.CaptureFixture, flags: list[str], says: str
) -> None:
    if "onnx" in flags:
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnx")
    out = tmp_path / "out"
    argv = ["predict", "--run", str(run_dir), str(slide), "--out", str(out), *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("milkd: error: ") and says in lines[0], err
    assert not out.exists()


def test_the_onnx_backend_writes_the_torch_mask(
    run_dir: Path, slide: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    assert main(_argv(run_dir, slide, tmp_path / "t", "--json")) == 0
    by_torch = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(_argv(run_dir, slide, tmp_path / "o", "--json", "--backend", "onnx")) == 0
    by_onnx = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    a_prob, a_mask, _ = open_prediction(by_torch["zarr"])
    b_prob, b_mask, _ = open_prediction(by_onnx["zarr"])
    assert np.abs(a_prob[...].astype(int) - b_prob[...].astype(int)).max() <= 1  # stored as round(255 p)
    assert np.array_equal(a_mask[...], b_mask[...])
