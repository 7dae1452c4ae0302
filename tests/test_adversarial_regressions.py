"""Regressions found by the repeat of the adversarial run (issue 18, ``scripts/adversarial_run.py``).

Each test failed before its fix: a traceback where the contract promises one ``milkd: error:`` line, a
silent wrong result, or a user's file replaced. Real faults where the machine allows them: memory caps are
``RLIMIT_AS`` in a child process, not mocks.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_milkd.cli import main
from napari_milkd.core.errors import CheckpointError
from napari_milkd.core.slides.sample import write_pyramidal_tiff
from test_predict_outputs import _argv, _run, _slide, _tree
from test_reliability_cli import make_folder, train_args

MILKD = str(Path(sys.executable).parent / "milkd")
linux_only = pytest.mark.skipif(
    sys.platform != "linux" or not hasattr(resource, "RLIMIT_AS"), reason="RLIMIT_AS and /proc are Linux's"
)


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip().startswith("milkd: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run(tmp_path_factory.mktemp("run"))


# ---------------------------------------------------------------------------------------------- input


def test_infinite_slide_mpp_is_refused(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Regression: ``--slide-mpp inf`` passed the "positive" check and ended in a ZeroDivisionError while
    the tile grid was planned."""
    import tifffile

    slide = tmp_path / "nompp.tiff"
    tifffile.imwrite(slide, np.full((256, 256, 3), 200, np.uint8), photometric="rgb", tile=(128, 128))
    for value in ("inf", "nan"):
        assert main(_argv(run_dir, slide, tmp_path / "out", "--slide-mpp", value)) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert "--slide-mpp must be a positive, finite number" in line
    assert main(_argv(run_dir, slide, tmp_path / "out", "--mpp", "inf")) == 2
    assert "--mpp must be a positive, finite number" in _one_error_line(capsys.readouterr().err)


def test_deeply_nested_geometry_collections_are_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Regression: geometry collections nested 500 deep exhausted the recursion limit (RecursionError
    traceback) instead of being skipped as malformed."""
    nested = '{"type":"GeometryCollection","geometries":[' * 500 + "]}" * 500
    ring = "[[0,0],[10,0],[10,10],[0,10],[0,0]]"
    good = '{"type":"Feature","properties":{},"geometry":{"type":"Polygon","coordinates":[' + ring + "]}}"
    path = tmp_path / "a.geojson"
    path.write_text(
        '{"type":"FeatureCollection","features":[{"type":"Feature","properties":{},"geometry":'
        + nested
        + "},"
        + good
        + "]}"
    )
    assert main(["annotations", str(path), "--json"]) == 0  # the good polygon is read, the nest skipped
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "nested more than 16 deep" in captured.out + captured.err


def test_deeply_nested_class_map_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Regression: a JSON class map of 100 000 nested arrays raised RecursionError (a traceback)."""
    from qupath_files import qupath_export

    export = qupath_export(tmp_path / "a.geojson")
    class_map = tmp_path / "map.json"
    class_map.write_text("[" * 100_000)
    assert main(["annotations", str(export), "--class-map", str(class_map), "--json"]) == 2
    assert "map.json: not JSON (nested too deeply)" in _one_error_line(capsys.readouterr().err)


def test_converting_onto_the_input_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Regression: ``milkd annotations mine.geojson --to mine.geojson`` (or a link to it) replaced the
    user's QuPath export with the conversion, which keeps classes and geometry only, exit 0."""
    from qupath_files import qupath_export

    export = qupath_export(tmp_path / "mine.geojson")
    (tmp_path / "link.geojson").symlink_to(export)
    before = export.read_bytes()
    for target in (export, tmp_path / "link.geojson"):
        assert main(["annotations", str(export), "--to", str(target)]) == 2
        assert "is the file being read; it is kept" in _one_error_line(capsys.readouterr().err)
    assert export.read_bytes() == before
    assert main(["annotations", str(export), "--to", str(tmp_path / "copy.xml")]) == 0  # another name: fine


# -------------------------------------------------------------------------------------------- checkpoints


def test_integer_weights_are_refused(run_dir: Path, tmp_path: Path) -> None:
    """Regression: a checkpoint whose float weights were replaced by integers loaded (``load_state_dict``
    casts) and predicted silently wrong maps, exit 0."""
    from napari_milkd.core.engine.train import load_model

    data = torch.load(run_dir / "student.pt", map_location="cpu", weights_only=True)
    first = next(iter(data["model"]))
    data["model"][first] = data["model"][first].round().to(torch.int64)
    torch.save(data, tmp_path / "int.pt")
    with pytest.raises(CheckpointError, match=rf"tampered with: weight {first} is torch.int64"):
        load_model(tmp_path / "int.pt", device="cpu")


# ---------------------------------------------------------------------------------------------- outputs


def test_a_prediction_folder_holding_a_users_file_is_kept(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Regression: a file the user put in milkd's prediction folder (``<stem>.zarr``) was deleted with the
    folder when the prediction was recomputed (``--no-resume``), exit 0."""
    slide = _slide(tmp_path / "s0.tiff")
    out = tmp_path / "out"
    assert main(_argv(run_dir, slide, out)) == 0
    (out / "s0.zarr" / "notes.docx").write_bytes(b"the user's notes")
    before = _tree(out)
    capsys.readouterr()
    assert main(_argv(run_dir, slide, out, "--no-resume")) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "s0.zarr holds files milkd did not write (notes.docx)" in line
    assert _tree(out) == before


def test_train_keeps_a_users_config_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Regression: ``milkd train --out DIR`` replaced a ``DIR/config.json`` (or ``history.jsonl``) that
    milkd had not written."""
    make_folder(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"my": "settings"}')
    assert main(train_args(tmp_path)) == 2
    assert "config.json was not written by milkd train" in _one_error_line(capsys.readouterr().err)
    assert (run / "config.json").read_text() == '{"my": "settings"}'
    (run / "config.json").unlink()
    (run / "history.jsonl").write_text("my lab notebook\n")
    assert main(train_args(tmp_path)) == 2
    assert "history.jsonl was not written by milkd train" in _one_error_line(capsys.readouterr().err)
    assert (run / "history.jsonl").read_text() == "my lab notebook\n"
    assert sorted(p.name for p in run.iterdir()) == ["history.jsonl"]


def test_two_trainings_into_one_folder_one_is_refused(tmp_path: Path) -> None:
    """Regression: two ``milkd train`` into one empty ``--out`` at once both ran and both exited 0, each
    writing checkpoints and ``config.json`` there; with different seeds the folder mixed the two runs.
    Now the second is refused with one line (the folder's lock, or the first run's checkpoint)."""
    make_folder(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [*train_args(tmp_path), "--teacher-epochs", "8", "--batch-size", "4"]
    procs = [
        subprocess.Popen(
            [MILKD, *args, "--seed", str(seed)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for seed in (1, 2)
    ]
    results = [(p.wait(timeout=600), p.communicate()[1]) for p in procs]
    assert sorted(rc for rc, _ in results) == [0, 2], results
    err = next(e for rc, e in results if rc == 2)
    line = _one_error_line(err)
    assert "is in use by another milkd train" in line or "already holds a run" in line, line
    run = tmp_path / "run"
    seed = json.loads((run / "config.json").read_text())["config"]["seed"]
    for name in ("teacher.pt", "student.pt"):
        assert torch.load(run / name, weights_only=True)["config"]["seed"] == seed
    assert not (run / ".milkd-train.lock").exists()


# ----------------------------------------------------------------------------------------- memory caps


def _capped(limit_bytes: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    return apply


@linux_only
def test_a_cap_too_small_for_torch_is_one_line(run_dir: Path, tmp_path: Path) -> None:
    """Regression: under ``ulimit -v 500M`` ``milkd predict`` and ``milkd train`` died while torch loaded:
    ``std::bad_alloc`` (abort, exit -6) or a ``MemoryError`` traceback."""
    slide = _slide(tmp_path / "s0.tiff")
    make_folder(tmp_path / "train")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for argv in (_argv(run_dir, slide, tmp_path / "out"), train_args(tmp_path / "train")):
        proc = subprocess.run(
            [MILKD, *argv],
            capture_output=True,
            text=True,
            env=env,
            preexec_fn=_capped(500 << 20),
            timeout=120,
        )
        assert proc.returncode == 2, proc.stderr
        assert "loading torch needs about 512 MiB" in _one_error_line(proc.stderr)


@linux_only
def test_openblas_under_a_memory_cap_is_one_line(run_dir: Path, tmp_path: Path) -> None:
    """Regression: under ``ulimit -v 900M`` numpy's OpenBLAS could not map its buffer when tissue detection
    first imported ``skimage.color``; it printed ``OpenBLAS error: Memory allocation still failed`` and
    exited 1 (scipy's copy hung instead). The buffers are now mapped at the start of the job."""
    rng = np.random.default_rng(1)
    image = np.full((1536, 2048, 3), 240, np.uint8)
    image[256:1280, 340:1700] = rng.integers(60, 200, (1024, 1360, 3), dtype=np.uint8)
    slide = tmp_path / "big.tiff"
    write_pyramidal_tiff(slide, [image, image[::4, ::4].copy()], mpp=0.5, tile=128)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = _argv(run_dir, slide, tmp_path / "out", "--batch-size", "64")
    proc = subprocess.run(
        [MILKD, *argv], capture_output=True, text=True, env=env, preexec_fn=_capped(900 << 20), timeout=240
    )
    assert "OpenBLAS" not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 2), proc.stderr
    if proc.returncode == 2:
        assert _one_error_line(proc.stderr).startswith("milkd: error: out of memory")


_TRAIN_CAPPED = textwrap.dedent(
    """
    import resource, sys
    import torch  # loaded before the cap: the cap then hits training itself
    from napari_milkd.cli import main
    used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (used + int(sys.argv[1]) * 2**20, resource.RLIM_INFINITY))
    sys.exit(main(sys.argv[2:]))
    """
)


@linux_only
def test_training_out_of_memory_is_one_line(tmp_path: Path) -> None:
    """Regression: a memory cap hit during training (torch's lazy imports, its allocator) ended in a
    ``MemoryError`` traceback, exit 1."""
    make_folder(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _TRAIN_CAPPED, "8", *train_args(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert proc.returncode == 2, proc.stderr
    line = _one_error_line(proc.stderr)
    assert line.startswith("milkd: error: out of memory") and "--batch-size" in line, line
