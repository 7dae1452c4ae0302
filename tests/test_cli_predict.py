"""``milkd predict``: outputs, summary lines, resume, errors, and the Dask path giving identical results."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_milkd.cli import main
from napari_milkd.core.engine.checkpoint import save_checkpoint
from napari_milkd.core.engine.config import TrainConfig
from napari_milkd.core.errors import CheckpointError, InputError
from napari_milkd.core.inference.cohort import (
    DEFAULT_MODEL_MPP,
    checkpoint_mpp,
    make_jobs,
    resolve_checkpoint,
    run_on_dask,
    run_slide_job,
)
from napari_milkd.core.inference.stream import open_prediction
from napari_milkd.core.slides.sample import write_pyramidal_tiff


def _slide(path: Path, seed: int, mpp: float | None = 0.5) -> Path:
    """A 768×1024 generated slide: textured 'tissue' on white glass."""
    rng = np.random.default_rng(seed)
    image = np.full((768, 1024, 3), 240, np.uint8)
    yy, xx = np.mgrid[0:560, 0:760].astype(np.float32)
    tissue = np.stack([150 + 60 * np.sin(xx / 17), 80 + 50 * np.cos(yy / 13), 170 + 40 * np.sin(xx / 9)], -1)
    image[100:660, 120:880] = np.clip(tissue + rng.normal(0, 10, tissue.shape), 0, 255).astype(np.uint8)
    write_pyramidal_tiff(path, [image, image[::4, ::4].copy()], mpp=mpp or 0.5, tile=128)
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `milkd train`-like run folder with a tiny random student (64-px tiles)."""
    import torch

    from napari_milkd.core.engine.models import build_model

    torch.manual_seed(0)
    model = build_model("tiny", "random")
    folder = tmp_path_factory.mktemp("run")
    save_checkpoint(
        folder / "student.pt",
        {
            "stage": "student",
            "backbone": "tiny",
            "config": TrainConfig(backbone="tiny", size=64, device="cpu").to_dict(),
            "epoch": 1,
            "complete": True,
            "model": model.state_dict(),
            "history": [],
            "best_epoch": 1,
            "best_score": None,
        },
    )
    return folder


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("slides")
    return [_slide(folder / f"s{i}.tiff", seed=i) for i in range(2)]


def test_predict_one_slide(
    run_dir: Path, slides: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    args = ["predict", "--run", str(run_dir), str(slides[0]), "--out", str(out), "--device", "cpu"]
    assert main([*args, "--batch-size", "8"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("s0: ") and " tiles at 1 µm/px in " in line and "mm²" in line
    prob, mask, facts = open_prediction(out / "s0.zarr")
    assert prob.shape == (384, 512) and facts["mpp"] == DEFAULT_MODEL_MPP and facts["complete"]
    assert prob[...].max() > 0 and (prob[...] == 0).any()  # tissue-only tiles: glass stays 0
    assert set(np.unique(mask[...])) <= {0, 1}
    # The stored mask is the widget's: smoothed probability, specks removed (not the raw threshold).
    from napari_milkd.core.inference.masks import mask_from_probability
    from napari_milkd.core.inference.stream import decode_probability

    p = decode_probability(prob[...])
    assert np.array_equal(mask[...], mask_from_probability(p, p > 0))
    features = json.loads((out / "s0.geojson").read_text())["features"]
    assert all(f["properties"]["classification"]["name"] == "Tumor" for f in features)
    # Rerun: resumed from the finished zarr, nothing computed; JSON summary.
    assert main([*args, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip())
    assert summary["n_computed"] == 0 and 0 < summary["n_tiles"] < 7 * 9  # of the full 7 × 9 grid


def test_predict_errors(
    run_dir: Path, slides: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = str(tmp_path / "o")
    assert main(["predict", "--run", str(tmp_path / "nope"), str(slides[0]), "--out", out]) == 2
    assert "run folder or checkpoint not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["predict", "--run", str(tmp_path / "empty"), str(slides[0]), "--out", out]) == 2
    assert "neither student.pt nor teacher.pt" in capsys.readouterr().err
    assert main(["predict", "--run", str(run_dir), str(tmp_path / "missing.svs"), "--out", out]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["predict", "--run", str(run_dir), str(slides[0]), "--out", out, "--mpp", "-1"]) == 2
    assert "--mpp must be positive" in capsys.readouterr().err
    with pytest.raises(InputError, match="both write"):
        make_jobs([slides[0], slides[0]], run_dir, out)


def test_slide_without_mpp(
    run_dir: Path, tcga_svs: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert (
        main(["predict", "--run", str(run_dir), str(tcga_svs), "--out", str(tmp_path), "--device", "cpu"])
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("milkd: error: ") and "--slide-mpp" in err and len(err.strip().splitlines()) == 1


def test_real_slide(run_dir: Path, cmu_svs: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["predict", "--run", str(run_dir / "student.pt"), str(cmu_svs), "--out", str(tmp_path)]
    assert main([*argv, "--device", "cpu", "--mpp", "2.0", "--batch-size", "32"]) == 0
    prob, _, facts = open_prediction(tmp_path / "CMU-1-Small-Region.zarr")
    ds = 2.0 / facts["slide_mpp"]  # ≈ 4.008 at 0.499 µm/px
    assert facts["mpp"] == 2.0 and prob.shape == (int(np.ceil(2967 / ds)), int(np.ceil(2220 / ds)))
    assert (tmp_path / "CMU-1-Small-Region.geojson").is_file()


def test_checkpoint_resolution_and_mpp(run_dir: Path, tmp_path: Path) -> None:
    assert resolve_checkpoint(run_dir) == run_dir / "student.pt"
    assert resolve_checkpoint(run_dir / "student.pt") == run_dir / "student.pt"
    teacher_only = tmp_path / "t"
    teacher_only.mkdir()
    (teacher_only / "teacher.pt").write_bytes(b"x")
    assert resolve_checkpoint(teacher_only) == teacher_only / "teacher.pt"
    with pytest.raises(CheckpointError):
        resolve_checkpoint(tmp_path / "missing")
    assert checkpoint_mpp({"config": {"size": 256}}) is None
    assert checkpoint_mpp({"config": {"mpp": 0.5}}) == 0.5
    assert checkpoint_mpp({"work_mpp": 2, "config": {}}) == 2.0


def test_dask_matches_single_process(run_dir: Path, slides: list[Path], tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    local = [run_slide_job(j) for j in make_jobs(slides, run_dir, tmp_path / "local", device="cpu")]
    jobs = make_jobs(slides, run_dir, tmp_path / "dask", device="cpu")
    done: list[str] = []
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        summaries = run_on_dask(jobs, client, on_done=lambda s: done.append(s.name))
    assert sorted(done) == ["s0", "s1"] and [s.name for s in summaries] == ["s0", "s1"]
    for a, b in zip(local, summaries, strict=True):
        pa, ma, _ = open_prediction(a.zarr)
        pb, mb, _ = open_prediction(b.zarr)
        np.testing.assert_array_equal(pa[...], pb[...])
        np.testing.assert_array_equal(ma[...], mb[...])
        assert a.tumour_area_mm2 == b.tumour_area_mm2 and a.n_tiles == b.n_tiles
        ga = json.loads(Path(a.geojson).read_text())["features"]
        gb = json.loads(Path(b.geojson).read_text())["features"]
        assert [f["geometry"] for f in ga] == [f["geometry"] for f in gb]
