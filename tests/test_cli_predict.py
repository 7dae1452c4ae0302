"""``milkd predict``: outputs, summary lines, resume, errors, the model's µm/px from its checkpoint's spec,
and the Dask path giving identical results."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_milkd.cli import main
from napari_milkd.core.engine.checkpoint import save_checkpoint
from napari_milkd.core.engine.spec import ModelSpec
from napari_milkd.core.errors import CheckpointError, InputError
from napari_milkd.core.inference.cohort import (
    make_jobs,
    model_mpp,
    resolve_checkpoint,
    run_on_dask,
    run_slide_job,
)
from napari_milkd.core.inference.stream import open_prediction
from napari_milkd.core.slides.sample import write_pyramidal_tiff
from test_predict_outputs import TINY_SPEC, _run


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
    """A run whose spec says 1 µm/px, 64-px tiles, default overlap."""
    return _run(tmp_path_factory.mktemp("run"), spec=TINY_SPEC)


@pytest.fixture(scope="module")
def legacy_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint from before the spec: it does not say at which µm/px it was trained."""
    return _run(tmp_path_factory.mktemp("legacy"), spec=None)


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
    assert prob.shape == (384, 512) and facts["mpp"] == 1.0 and facts["complete"]
    assert facts["tile"] == 64 and facts["stride"] == 64 - 8  # spec's overlap: round(64 / 8)
    assert prob[...].max() > 0 and (prob[...] == 0).any()  # tissue-only tiles: glass stays 0
    assert set(np.unique(mask[...])) <= {0, 1}
    # The stored mask is the widget's: smoothed probability inside the slide's tissue mask, specks removed
    # (not the raw threshold); its facts describe it.
    from napari_milkd.core.inference.masks import mask_from_probability
    from napari_milkd.core.inference.stream import decode_probability
    from napari_milkd.core.slides.geometry import plan_work, tissue_map
    from napari_milkd.core.slides.slide import open_slide

    with open_slide(slides[0]) as source:
        tissue = tissue_map(plan_work(source, work_mpp=1.0, tile=64, overlap=8))
    p = decode_probability(prob[...])
    assert np.array_equal(mask[...], mask_from_probability(p, tissue))
    assert facts["tumour_px"] == int(mask[...].sum()) and "inside the slide's tissue mask" in facts["mask"]
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
    assert "--mpp must be a positive, finite number" in capsys.readouterr().err
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


def test_real_slide(legacy_run: Path, cmu_svs: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A legacy checkpoint runs at the µm/px the user gives (``--mpp`` fills what the file lacks)."""
    argv = ["predict", "--run", str(legacy_run / "student.pt"), str(cmu_svs), "--out", str(tmp_path)]
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


def test_model_mpp_rules() -> None:
    """The spec's µm/px wins; the user's fills a missing one; a different one, or none at all, is an error."""
    at_half = ModelSpec(mpp=0.5, tile=64, backbone="tiny")
    unknown = ModelSpec(mpp=None, tile=64, backbone="tiny")
    assert model_mpp(at_half, None, "m.pt") == 0.5
    assert model_mpp(at_half, 0.5, "m.pt") == 0.5
    assert model_mpp(unknown, 2.0, "m.pt") == 2.0
    assert model_mpp(None, 2.0, "m.pt") == 2.0
    with pytest.raises(InputError, match=r"m\.pt was trained at 0\.5 µm/px but --mpp 1 was given"):
        model_mpp(at_half, 1.0, "m.pt")
    for spec in (unknown, None):
        with pytest.raises(InputError, match="does not record the µm/px it was trained at; pass --mpp UM"):
            model_mpp(spec, None, "m.pt")
    with pytest.raises(InputError, match="--mpp must be positive"):
        model_mpp(None, 0.0, "m.pt")


def test_predict_runs_at_the_checkpoints_mpp(
    slides: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Regression: a model trained at 0.5 µm/px is predicted at 0.5 µm/px, with its spec's tile overlap
    (the old code ignored the spec and ran every such model at 1.0 µm/px with 1/8 overlap)."""
    run = _run(tmp_path / "run", spec=ModelSpec(mpp=0.5, tile=64, overlap=16, backbone="tiny"))
    out = tmp_path / "out"
    argv = ["predict", "--run", str(run), str(slides[0]), "--out", str(out), "--device", "cpu", "--json"]
    assert main([*argv, "--batch-size", "32"]) == 0
    summary = json.loads(capsys.readouterr().out.strip())
    assert summary["mpp"] == 0.5
    prob, _, facts = open_prediction(out / "s0.zarr")
    assert facts["mpp"] == 0.5 and facts["slide_mpp"] == 0.5 and prob.shape == (768, 1024)
    assert facts["tile"] == 64 and facts["stride"] == 64 - 16


def test_legacy_checkpoint_needs_mpp(
    legacy_run: Path, slides: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = [
        "predict",
        "--run",
        str(legacy_run),
        str(slides[0]),
        "--out",
        str(tmp_path / "o"),
        "--device",
        "cpu",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("milkd: error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "student.pt does not record the µm/px it was trained at; pass --mpp UM" in err
    assert not (tmp_path / "o" / "s0.zarr").exists()  # refused before any work
    # The same file passed as a .pt, and the Python API: the same refusal.
    assert main([*argv[:2], str(legacy_run / "student.pt"), *argv[3:]]) == 2
    assert "does not record the µm/px" in capsys.readouterr().err
    with pytest.raises(InputError, match="does not record the µm/px"):
        make_jobs([slides[0]], legacy_run, tmp_path / "o")


def test_conflicting_mpp_is_refused(
    run_dir: Path, slides: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["predict", "--run", str(run_dir), str(slides[0]), "--out", str(tmp_path / "o"), "--device", "cpu"]
    assert main([*argv, "--mpp", "0.5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("milkd: error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "trained at 1 µm/px but --mpp 0.5 was given" in err
    assert not (tmp_path / "o" / "s0.zarr").exists()
    # Agreeing with the spec is allowed; so is a job built by hand (the worker checks again).
    from napari_milkd.core.inference.cohort import PredictJob, slide_job

    job = PredictJob(str(slides[0]), str(run_dir / "student.pt"), str(tmp_path / "o"), "s0", mpp=2.0)
    with pytest.raises(InputError, match="trained at 1 µm/px but --mpp 2 was given"):
        next(slide_job(job))


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


def test_predict_names_the_model_and_warns_when_it_knows_only_the_sample(
    run_dir: Path, slides: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A model trained only on the synthetic sample slide still predicts, but says so before any work."""
    from napari_milkd.core.engine.card import slide_provenance
    from napari_milkd.core.engine.checkpoint import load_checkpoint

    state = load_checkpoint(run_dir / "student.pt")
    state["card"] = slide_provenance(["milkd-sample-v3.tiff"], sample_only=True)
    sample_run = tmp_path / "sample-run"
    save_checkpoint(sample_run / "student.pt", state)
    assert main(["predict", str(slides[0]), "--run", str(sample_run), "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "trained only on the synthetic sample slide" in err
    assert "student model (tiny, 64-px tiles at 1 µm/px) trained on 1 slide (milkd-sample-v3.tiff" in err


def test_without_the_cohort_extra_slides_run_one_after_another(
    run_dir: Path, slides: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    """Dask distributed is the optional ``[cohort]`` extra: without it a cohort still runs (in turn, said
    once), and the flags that need it are refused in one line before any work."""
    import sys

    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` raises ImportError
    out = tmp_path / "o"
    argv = ["predict", *map(str, slides), "--run", str(run_dir), "--out", str(out), "--device", "cpu"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "Dask distributed is not installed" in err and "napari-milkd[cohort]" in err
    assert all((out / f"{s.stem}.geojson").exists() for s in slides)
    for flag in (["--workers", "2"], ["--scheduler", "tcp://127.0.0.1:8786"]):
        assert main([*argv[:-4], "--out", str(tmp_path / "x"), *flag]) == 2
        line = capsys.readouterr().err.strip()
        assert line == f"milkd: error: {flag[0]} needs Dask distributed: pip install 'napari-milkd[cohort]'"
    assert not (tmp_path / "x").exists()
