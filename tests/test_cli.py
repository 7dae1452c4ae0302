"""The ``milkd`` command line: info, errors, the headless demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from napari_milkd.cli import main


def _milkd(*args: str, module: bool = False) -> subprocess.CompletedProcess[str]:
    cmd = (
        [sys.executable, "-m", "napari_milkd", *args]
        if module
        else [str(Path(sys.executable).parent / "milkd"), *args]
    )
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=os.environ.copy())


def test_info_json_contract(cmu_svs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(cmu_svs), "--json"]) == 0
    out = capsys.readouterr().out
    payload = json.loads(out)
    assert list(payload) == ["path", "vendor", "levels", "mpp_x", "mpp_y", "objective_power"]
    assert payload["levels"] == [{"width": 2220, "height": 2967, "downsample": 1.0}]
    assert payload["mpp_x"] == pytest.approx(0.499) and payload["objective_power"] == 20
    assert out.count("\n") == 1


def test_info_json_nulls_and_module_entry(tcga_svs: Path) -> None:
    result = _milkd("info", str(tcga_svs), "--json", module=True)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["mpp_x"] is None and payload["mpp_y"] is None and payload["objective_power"] is None
    assert len(payload["levels"]) == 2 and payload["levels"][0]["downsample"] == 1.0


def test_info_human_readable(exact_pyramid: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(exact_pyramid)]) == 0
    out = capsys.readouterr().out
    assert "generic-tiff" in out and "0.25 × 0.25 µm/px (tiff)" not in out  # OpenSlide reports it
    assert "0.25 × 0.25 µm/px" in out and out.count("\n") >= 8


@pytest.mark.parametrize("kind", ["missing", "text", "truncated", "usage"])
def test_errors_are_one_line_exit_2(tmp_path: Path, exact_pyramid: Path, kind: str) -> None:
    if kind == "missing":
        args = ["info", str(tmp_path / "nope.svs")]
    elif kind == "text":
        (tmp_path / "notes.svs").write_text("hello")
        args = ["info", str(tmp_path / "notes.svs")]
    elif kind == "truncated":
        (tmp_path / "cut.tiff").write_bytes(exact_pyramid.read_bytes()[:100_000])
        args = ["info", str(tmp_path / "cut.tiff")]
    else:
        args = ["info"]
    result = _milkd(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("milkd: error: "), result.stderr
    assert "Traceback" not in result.stderr


def test_demo_headless_runs_teacher_student_export(tmp_path: Path) -> None:
    """The README's headless main job with a tiny model: weak labels → teacher → student → GeoJSON."""
    out = tmp_path / "demo"
    args = ["demo", "--headless", "--out", str(out), "--backbone", "tiny", "--epochs", "1", "--device", "cpu"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["slide"]["vendor"] == "generic-tiff"
    assert summary["n_tiles"] > 0 and 0.3 < summary["tissue_fraction"] < 0.8
    assert summary["n_positive_bags"] > 0 and summary["n_negative_bags"] > 0
    assert 0.0 <= summary["dice_teacher"] <= 1.0 and 0.0 <= summary["dice_student"] <= 1.0
    assert summary["true_tumour_area_mm2"] == pytest.approx(0.379, abs=0.01)
    for stage in ("teacher", "student"):
        collection = json.loads((out / f"{stage}.geojson").read_text())
        assert collection["type"] == "FeatureCollection"
        assert len(collection["features"]) == summary[f"{stage}_features"]
        assert (out / "checkpoints" / f"{stage}.pt").exists()
    import imageio.v3 as iio

    picture = iio.imread(out / "overview.png")
    assert picture.ndim == 3 and picture.shape[2] == 3 and picture.std() > 10
    assert (picture[5:8, 5:8] == 255).all()  # the legend's white box at the top left


def test_demo_headless_on_slide_without_mpp_needs_mpp(tcga_svs: Path, tmp_path: Path) -> None:
    result = _milkd("demo", "--headless", "--out", str(tmp_path), "--slide", str(tcga_svs))
    assert result.returncode == 2 and "--mpp" in result.stderr
    assert main(["demo", "--headless", "--out", str(tmp_path), "--slide", str(tcga_svs), "--mpp", "0.5"]) == 0
