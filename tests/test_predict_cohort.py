"""``milkd predict`` over a cohort: ``--slide-mpp`` fills only what a slide lacks, one bad slide never
stops the others, masks stay on tissue, and running out of memory is one line (issue 15 cases 2, 3, 4;
issue 18 case 8)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_milkd.cli import main
from napari_milkd.core.engine.models.dws_mil import SegOutput
from napari_milkd.core.inference.cohort import PredictJob, memory_error, plan_cohort, run_on_dask
from napari_milkd.core.inference.stream import decode_probability, open_prediction
from napari_milkd.core.slides.geometry import plan_work, tissue_map
from napari_milkd.core.slides.slide import open_slide
from test_predict_outputs import _argv, _run, _slide


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _slide(tmp_path_factory.mktemp("slides") / "s0.tiff")


# ---------------------------------------------------------------------------------------------------------
# issue 15 case 2: --slide-mpp fills only what a slide lacks


def test_slide_mpp_fills_only_what_the_file_lacks(
    run_dir: Path, cmu_svs: Path, tcga_svs: Path, tmp_path: Path
) -> None:
    generic = _slide(tmp_path / "generic.tiff", mpp=0.62)
    plan = plan_cohort([cmu_svs, generic, tcga_svs], run_dir, tmp_path / "out", slide_mpp=0.25)
    assert not plan.failures
    assert {job.name: job.slide_mpp for job in plan.jobs} == {
        "CMU-1-Small-Region": None,  # records 0.499: its own value is used
        "generic": None,  # records 0.62
        "tcga-cr-7395-01a-01-ts1": 0.25,  # records nothing: filled
    }
    assert len(plan.warnings) == 2
    assert plan.warnings[0].startswith("CMU-1-Small-Region.svs records 0.499 µm/px; --slide-mpp 0.25")
    assert plan.warnings[1].startswith("generic.tiff records 0.62 µm/px")
    assert not (tmp_path / "out").exists()


def test_slide_mpp_never_rescales_a_slide_that_records_one(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Regression: ``--slide-mpp 0.25`` predicted a 0.62 µm/px slide as if it were 0.25 µm/px."""
    generic = _slide(tmp_path / "generic.tiff", mpp=0.62)
    assert main(_argv(run_dir, generic, tmp_path / "out", "--slide-mpp", "0.25")) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("milkd: warning: ")]
    assert len(warnings) == 1 and "generic.tiff records 0.62 µm/px" in warnings[0]
    prob, _, facts = open_prediction(tmp_path / "out" / "generic.zarr")
    assert facts["slide_mpp"] == pytest.approx(0.62)
    assert prob.shape == (int(np.ceil(512 / (1 / 0.62))), int(np.ceil(640 / (1 / 0.62))))


# ---------------------------------------------------------------------------------------------------------
# issue 15 case 3: one bad slide never stops the cohort


def test_one_bad_slide_never_stops_the_cohort(
    run_dir: Path, slide: Path, tcga_svs: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Regression: the slide without µm/px aborted the run before the others were written."""
    out = tmp_path / "out"
    missing = tmp_path / "missing.svs"
    argv = ["predict", "--run", str(run_dir), str(tcga_svs), str(slide), str(missing), "--out", str(out)]
    assert main([*argv, "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("milkd: error: ")]
    assert len(errors) == 2 and "Traceback" not in captured.err
    assert errors[0].startswith("milkd: error: tcga-cr-7395-01a-01-ts1: ") and "--slide-mpp" in errors[0]
    assert errors[1].startswith("milkd: error: missing: ") and "no such file" in errors[1]
    assert "milkd: 1 of 3 slides written, 2 failed (tcga-cr-7395-01a-01-ts1, missing)" in captured.err
    assert captured.out.startswith("s0: ")
    assert open_prediction(out / "s0.zarr")[2]["complete"] and (out / "s0.geojson").is_file()
    # The re-run retries only what failed: s0 is finished (nothing computed), the TCGA slide now runs.
    assert main([*argv[:-3], *argv[-2:], "--device", "cpu", "--slide-mpp", "0.25", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    by_name = {line["name"]: line for line in lines}
    assert by_name["s0"]["n_computed"] == 0
    assert by_name["tcga-cr-7395-01a-01-ts1"]["n_computed"] > 0


def test_dask_cohort_reports_failures_and_goes_on(
    run_dir: Path, slide: Path, tcga_svs: Path, tmp_path: Path
) -> None:
    from distributed import Client, LocalCluster

    jobs = [
        PredictJob(str(tcga_svs), str(run_dir / "student.pt"), str(tmp_path), "tcga", device="cpu"),
        PredictJob(str(slide), str(run_dir / "student.pt"), str(tmp_path), "s0", device="cpu"),
    ]
    failures: list[str] = []
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        summaries = run_on_dask(jobs, client, on_fail=lambda f: failures.append(f.line()))
    assert [s.name for s in summaries] == ["s0"]
    assert len(failures) == 1 and failures[0].startswith("tcga: tcga-cr-7395-01a-01-ts1.svs does not record")


# ---------------------------------------------------------------------------------------------------------
# issue 15 case 4: masks on glass


def _seg(prob: torch.Tensor) -> SegOutput:
    logit = torch.logit(prob.clamp(1e-6, 1 - 1e-6))
    return SegOutput(sides=(logit, logit, logit), fused_logit=logit, fused_prob=prob)


class _Constant(torch.nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> SegOutput:
        return _seg(torch.full((x.shape[0], 1, *x.shape[2:]), self.value) + 0 * self.p)


@pytest.mark.parametrize("value", [1.0, 0.3])
def test_masks_stay_on_tissue(
    value: float, run_dir: Path, slide: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: tiles reaching onto glass put blobs and stripes of mask (and GeoJSON polygons) on the
    glass beside the tissue. A model that says "tumour" everywhere now marks exactly the tissue, and a
    constant model gives that constant over all the tissue (no seams where tiles meet)."""
    import napari_milkd.core.engine.train as train

    real = train.load_model

    def constant_model(path: object, device: str = "cpu") -> tuple[torch.nn.Module, object]:
        _, config = real(path, device=device)  # type: ignore[arg-type]
        return _Constant(value), config

    monkeypatch.setattr(train, "load_model", constant_model)
    out = tmp_path / "out"
    assert main(_argv(run_dir, slide, out)) == 0
    prob, mask, _ = open_prediction(out / "s0.zarr")
    with open_slide(slide) as source:
        work = plan_work(source, work_mpp=1.0, tile=64, overlap=8)
    tissue = tissue_map(work)
    p, m = decode_probability(prob[...]), mask[...].astype(bool)
    assert 0.2 < tissue.mean() < 0.8  # there is glass around the tissue
    assert np.all(np.abs(p[tissue] - value) <= 1 / 510)  # constant over all tissue: no seams, no gaps
    assert not (m & ~tissue).any()  # nothing on glass
    if value > 0.5:
        assert np.array_equal(m, tissue)  # all of the tissue, no stripes
        features = json.loads((out / "s0.geojson").read_text())["features"]
        from shapely.geometry import shape

        area_l0 = sum(shape(f["geometry"]).area for f in features)
        assert area_l0 == pytest.approx(tissue.sum() * work.downsample**2, rel=0.02)
    else:
        assert not m.any() and json.loads((out / "s0.geojson").read_text())["features"] == []


# ---------------------------------------------------------------------------------------------------------
# issue 18 case 8: memory caps

_CAPPED = textwrap.dedent(
    """
    import resource, sys
    # what a run loads is loaded before the cap (else the first lazy import is what fails)
    import napari_milkd.core.engine.train, scipy.ndimage, skimage.morphology, skimage.transform
    import skimage.color, skimage.filters, shapely, zarr, openslide
    from napari_milkd.cli import main
    import torch
    torch.ones(1 << 17).sum()  # OpenMP's threads start now, as InferenceRuntime starts them (libgomp aborts
    # a process that cannot create them, with no Python error to report: not what this test is about)

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (used + int(sys.argv[1]) * 2**20, hard))
    sys.exit(main(sys.argv[2:]))
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS and /proc are Linux's")
def test_memory_cap_is_one_line(run_dir: Path, slide: Path, tmp_path: Path) -> None:
    """Regression: under ``ulimit -v`` predict ended in tracebacks (``can't start new thread``,
    ``DefaultCPUAllocator``, ``_ArrayMemoryError``)."""
    argv = _argv(run_dir, slide, tmp_path / "out", "--batch-size", "4096")
    proc = subprocess.run(
        [sys.executable, "-c", _CAPPED, "300", *argv], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2, proc.stderr
    # The model's one-line card comes first (work had started), then exactly one error line.
    model, *err = proc.stderr.strip().splitlines()
    assert model.startswith("milkd: student model (tiny, 64-px tiles at 1 µm/px)"), proc.stderr
    assert len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert err[0].startswith("milkd: error: out of memory") and "--batch-size (now 4096)" in err[0]


def test_memory_errors_name_what_was_needed_and_what_to_change(tmp_path: Path) -> None:
    """The three allocation failures seen under caps, raised for real, each become one line."""
    job = PredictJob("s.svs", "m.pt", str(tmp_path), "s", batch_size=32, read_threads=4)
    caught: list[BaseException] = []
    try:
        np.empty(1 << 50, np.uint8)  # numpy's _ArrayMemoryError
    except MemoryError as exc:
        caught.append(exc)
    try:
        torch.empty(1 << 50, dtype=torch.uint8)  # DefaultCPUAllocator
    except RuntimeError as exc:
        caught.append(exc)
    caught.append(RuntimeError("can't start new thread"))  # threading's own text
    lines = [str(memory_error(job, exc)) for exc in caught]
    assert lines[0].startswith("out of memory (needed 1.00 PiB more)")
    assert lines[1].startswith("out of memory (needed 1.0 PiB more)")
    assert lines[2].startswith("out of memory (needed memory for another thread)")
    assert all("--batch-size (now 32)" in line and "\n" not in line for line in lines)
    assert memory_error(job, RuntimeError("a bug")) is None and memory_error(job, ValueError("x")) is None
