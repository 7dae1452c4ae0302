"""``milkd predict`` never loses a user's file: only milkd's own outputs are replaced, a prediction that is
recomputed is kept until its successor is complete, the output folder is checked and locked before any
work, completion is written last, and what killed runs leave behind is cleaned (issue 18 cases 1, 4, 10,
12; issue 15 case 6)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from napari_milkd.cli import main
from napari_milkd.core.engine.checkpoint import save_checkpoint
from napari_milkd.core.engine.config import TrainConfig
from napari_milkd.core.engine.spec import ModelSpec
from napari_milkd.core.inference.cohort import LOCK_FILE, plan_cohort, slide_name
from napari_milkd.core.inference.stream import open_prediction, read_progress
from napari_milkd.core.slides.sample import write_pyramidal_tiff

REPO = Path(__file__).resolve().parents[1]


def _slide(path: Path, seed: int = 0, mpp: float = 0.5) -> Path:
    """A 512×640 generated slide: textured 'tissue' on white glass."""
    rng = np.random.default_rng(seed)
    image = np.full((512, 640, 3), 240, np.uint8)
    yy, xx = np.mgrid[0:360, 0:440].astype(np.float32)
    tissue = np.stack([150 + 60 * np.sin(xx / 17), 80 + 50 * np.cos(yy / 13), 170 + 40 * np.sin(xx / 9)], -1)
    image[80:440, 100:540] = np.clip(tissue + rng.normal(0, 10, tissue.shape), 0, 255).astype(np.uint8)
    write_pyramidal_tiff(path, [image, image[::4, ::4].copy()], mpp=mpp, tile=128)
    return path


#: The input spec of the tiny test models: 1 µm/px, 64-px tiles, default overlap.
TINY_SPEC = ModelSpec(mpp=1.0, tile=64, backbone="tiny")


def _run(folder: Path, seed: int = 0, spec: ModelSpec | None = TINY_SPEC) -> Path:
    """A `milkd train`-like run folder with a tiny random student (64-px tiles); ``spec=None``: a legacy
    checkpoint from before the spec, which does not say at which µm/px it was trained."""
    import torch

    from napari_milkd.core.engine.models import build_model

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = build_model("tiny", "random")
    payload = {
        "stage": "student",
        "backbone": "tiny",
        "config": TrainConfig(backbone="tiny", size=64, device="cpu").to_dict(),
        "epoch": 1,
        "complete": True,
        "model": model.state_dict(),
        "history": [],
        "best_epoch": 1,
        "best_score": None,
    }
    if spec is not None:
        payload["spec"] = spec.to_dict()
    save_checkpoint(folder / "student.pt", payload)
    return folder


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _slide(tmp_path_factory.mktemp("slides") / "s0.tiff")


def _argv(run: Path, slide: Path, out: Path, *extra: str) -> list[str]:
    return ["predict", "--run", str(run), str(slide), "--out", str(out), "--device", "cpu", *extra]


def _one_error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("milkd: error: ") and "Traceback" not in err, err
    return lines[0]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------------------
# issue 18 case 1: files milkd did not write


def test_predict_refuses_a_users_zarr_and_geojson(
    run_dir: Path, slide: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Regression: an existing ``<stem>.zarr`` (bioformats2raw's default name) was removed with rmtree and
    ``<stem>.geojson`` (QuPath's) replaced, exit 0."""
    out = tmp_path / "out"
    (out / "s0.zarr" / "0").mkdir(parents=True)
    (out / "s0.zarr" / "0" / "chunk").write_bytes(b"the user's pixels")
    (out / "s0.zarr" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    (out / "s0.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    before = _tree(out)
    assert main(_argv(run_dir, slide, out)) == 2
    line = _one_error_line(capsys)
    assert "s0.zarr exists and is not a napari-milkd prediction" in line
    assert _tree(out) == before  # nothing deleted, nothing added (no lock left either)

    shutil.rmtree(out / "s0.zarr")  # only the hand-made GeoJSON now
    assert main(_argv(run_dir, slide, out)) == 2
    assert "s0.geojson was not written by milkd predict" in _one_error_line(capsys)
    assert (out / "s0.geojson").read_text() == before["s0.geojson"].decode()
    assert not (out / "s0.zarr").exists()


def test_rerun_replaces_only_its_own_geojson(
    run_dir: Path, slide: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """milkd's own GeoJSON is replaced by a recomputed prediction; one a user edited afterwards is kept."""
    out = tmp_path / "out"
    assert main(_argv(run_dir, slide, out)) == 0
    first = (out / "s0.geojson").read_bytes()
    assert main(_argv(run_dir, slide, out, "--no-resume")) == 0
    second = (out / "s0.geojson").read_bytes()
    assert second != first  # rewritten (fresh feature ids): it was ours
    capsys.readouterr()
    (out / "s0.geojson").write_text('{"type": "FeatureCollection", "features": []}\n')  # edited in QuPath
    assert main(_argv(run_dir, slide, out, "--no-resume")) == 2
    assert "was not written by milkd predict (or was edited since)" in _one_error_line(capsys)
    assert (out / "s0.geojson").read_text() == '{"type": "FeatureCollection", "features": []}\n'
    # A plain re-run of the finished prediction leaves the edited file alone and succeeds.
    assert main(_argv(run_dir, slide, out)) == 0
    assert "is kept" in capsys.readouterr().out
    assert (out / "s0.geojson").read_text() == '{"type": "FeatureCollection", "features": []}\n'


@pytest.mark.parametrize("change", ["no-resume", "other-model"])
def test_recompute_keeps_the_finished_prediction_until_the_new_one_is_complete(
    change: str,
    run_dir: Path,
    slide: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression: ``--no-resume`` and a changed model deleted the finished prediction before the new one
    was computed; interrupted, the user had neither."""
    out = tmp_path / "out"
    assert main(_argv(run_dir, slide, out)) == 0
    before = _tree(out)
    run = _run(tmp_path / "other", seed=1) if change == "other-model" else run_dir
    extra = ("--no-resume",) if change == "no-resume" else ()

    import napari_milkd.core.inference.masks as masks

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # Ctrl-C after the new prediction's tiles, before it is complete

    with monkeypatch.context() as m:
        m.setattr(masks, "mask_from_probability", interrupted)
        assert main(_argv(run, slide, out, *extra)) == 130
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".s0.zarr.tmp-")]
    assert len(leftovers) == 1  # the unfinished successor, beside the finished prediction
    assert {k: v for k, v in _tree(out).items() if not k.startswith(".s0.zarr.tmp-")} == before
    assert open_prediction(out / "s0.zarr")[2]["complete"]
    # Run again: the other model's successor is completed (resumed from where it was stopped); --no-resume
    # computes afresh. Either is swapped in at the end, and nothing is left beside it.
    assert main(_argv(run, slide, out, "--json", *extra)) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n_computed"] == (0 if change == "other-model" else summary["n_tiles"])
    assert sorted(p.name for p in out.iterdir()) == ["s0.geojson", "s0.zarr"]
    assert (out / "s0.geojson").read_bytes() != before["s0.geojson"]


# ---------------------------------------------------------------------------------------------------------
# issue 18 case 4: where the output goes


def test_output_location_problems_are_one_line_before_any_work(
    run_dir: Path, slide: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Regression: each of these ended in a traceback (exit 1)."""
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert main(_argv(run_dir, slide, a_file)) == 2
    assert "is a file, not a folder" in _one_error_line(capsys)
    assert main(_argv(run_dir, slide, a_file / "sub" / "out")) == 2
    assert f"is below {a_file}, which is a file" in _one_error_line(capsys)
    assert a_file.read_text() == "x"

    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (out / "s0.zarr").symlink_to(tmp_path / "elsewhere")
    assert main(_argv(run_dir, slide, out)) == 2
    assert "s0.zarr is a symbolic link" in _one_error_line(capsys)
    assert list((tmp_path / "elsewhere").iterdir()) == []
    (out / "s0.zarr").unlink()
    (out / "s0.zarr").write_text("not a folder")
    assert main(_argv(run_dir, slide, out)) == 2
    assert "s0.zarr exists and is a file" in _one_error_line(capsys)
    assert (out / "s0.zarr").read_text() == "not a folder"
    assert sorted(p.name for p in out.iterdir()) == ["s0.zarr"]


def test_read_only_output_folder(run_dir: Path, slide: Path, tmp_path: Path) -> None:
    """A folder the user cannot write (a real permission fault: as root the run drops to ``nobody``)."""
    public = Path(tempfile.mkdtemp(prefix="milkd-ro-", dir="/tmp"))
    try:
        os.chmod(public, 0o755)
        shutil.copy(slide, public / "s0.tiff")
        shutil.copytree(run_dir, public / "run")
        for p in [public / "s0.tiff", *(public / "run").rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        locked = public / "locked"
        locked.mkdir()
        os.chmod(locked, 0o555)
        argv = _argv(public / "run", public / "s0.tiff", locked / "out")
        code = "import sys; from napari_milkd.cli import main; sys.exit(main(sys.argv[1:]))"
        env = {**os.environ, "HOME": str(public), "MILKD_CACHE_DIR": str(public / "cache")}
        kwargs: dict[str, object] = {}
        if os.geteuid() == 0:
            kwargs = {"user": 65534, "group": 65534, "extra_groups": []}
        try:
            proc = subprocess.run(
                [sys.executable, "-c", code, *argv],
                capture_output=True,
                text=True,
                env=env,
                timeout=120,
                **kwargs,  # type: ignore[call-overload]
            )
        except PermissionError:
            pytest.skip("this Python cannot run as an unprivileged user (see the EROFS test below)")
        assert proc.returncode == 2, proc.stderr
        err = proc.stderr.strip()
        assert (
            err.count("\n") == 0 and err.startswith("milkd: error: cannot write in ") and "permission" in err
        )
        assert list(locked.iterdir()) == []
    finally:
        shutil.rmtree(public, ignore_errors=True)


def test_read_only_file_system(
    run_dir: Path, slide: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only file system (no such mount on this machine: the kernel's EROFS is raised where the
    first file would be created, the lock file)."""
    import errno

    real_open = os.open
    out = tmp_path / "out"

    def read_only(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if str(path).startswith(str(out)) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", read_only)
    assert main(_argv(run_dir, slide, out)) == 2
    assert f"cannot write in {out}: the file system is read-only" in _one_error_line(capsys)
    assert list(out.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------
# issue 15 case 6: one writer per output folder


def test_a_second_run_is_refused_and_a_stale_lock_is_taken_over(
    run_dir: Path, slide: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Regression: two runs into one folder both ran to the end; the last one won."""
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(["sleep", "60"])  # a live process on this host holds the lock
    try:
        lock = {"pid": holder.pid, "host": socket.gethostname(), "started": "2025-01-01 10:00:00"}
        (out / LOCK_FILE).write_text(json.dumps(lock))
        assert main(_argv(run_dir, slide, out)) == 2
        line = _one_error_line(capsys)
        assert f"in use by another milkd predict (pid {holder.pid} on {socket.gethostname()}" in line
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]
    finally:
        holder.kill()
        holder.wait()
    # The holder is dead now: its lock is stale and taken over; the run removes its own lock at the end.
    assert main(_argv(run_dir, slide, out)) == 0
    assert sorted(p.name for p in out.iterdir()) == ["s0.geojson", "s0.zarr"]


def test_two_real_runs_into_one_folder(run_dir: Path, slide: Path, tmp_path: Path) -> None:
    """Two ``milkd predict`` processes at once: the second is refused while the first runs."""
    out = tmp_path / "out"
    code = "import sys; from napari_milkd.cli import main; sys.exit(main(sys.argv[1:]))"
    slow = textwrap.dedent(
        """
        import sys, time
        import napari_milkd.core.inference.masks as masks
        from napari_milkd.cli import main

        real = masks.mask_from_probability

        def slow(*args, **kwargs):
            time.sleep(15)  # the first run is still working while the second starts
            return real(*args, **kwargs)

        masks.mask_from_probability = slow
        sys.exit(main(sys.argv[1:]))
        """
    )
    first = subprocess.Popen(
        [sys.executable, "-c", slow, *_argv(run_dir, slide, out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(600):
            if (out / LOCK_FILE).exists() or first.poll() is not None:
                break
            import time

            time.sleep(0.05)
        second = subprocess.run(
            [sys.executable, "-c", code, *_argv(run_dir, slide, out)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        _, first_err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 0, first_err
    assert second.returncode == 2 and f"pid {first.pid} on " in second.stderr
    assert second.stderr.strip().count("\n") == 0


# ---------------------------------------------------------------------------------------------------------
# issue 18 case 10: completion is the last write

_KILL_AT_GEOJSON = textwrap.dedent(
    """
    import os, signal, sys
    import napari_milkd.core.annotations as annotations
    from napari_milkd.cli import main

    def killed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    annotations.write_geojson = killed
    sys.exit(main(sys.argv[1:]))
    """
)


def test_killed_while_finishing_the_zarr_is_not_complete(run_dir: Path, slide: Path, tmp_path: Path) -> None:
    """Regression: SIGKILL in the last moments of a prediction left a zarr marked complete whose mask was
    raw and whose GeoJSON was missing; ``tumour_px`` counted the raw mask, not the cleaned one stored."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_AT_GEOJSON, *_argv(run_dir, slide, out)],
        capture_output=True,
        timeout=180,
    )
    assert proc.returncode == -signal.SIGKILL
    record = read_progress(out / "s0.zarr")
    assert record is not None and record["complete"] is False
    assert not open_prediction(out / "s0.zarr")[2].get("complete")
    assert not (out / "s0.geojson").exists()
    # The re-run finishes it; what is stored is described by the facts.
    assert main(_argv(run_dir, slide, out)) == 0
    _, mask, facts = open_prediction(out / "s0.zarr")
    assert facts["complete"] and facts["tumour_px"] == int(mask[...].sum())
    assert read_progress(out / "s0.zarr")["tumour_px"] == facts["tumour_px"]  # type: ignore[index]
    assert "smoothed" in facts["mask"] and (out / "s0.geojson").is_file()


# ---------------------------------------------------------------------------------------------------------
# issue 18 case 12: leftovers and names


def test_stale_hidden_folders_of_killed_runs_are_cleaned(
    run_dir: Path, slide: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    stale = [out / ".s0.zarr.tmp-0badc0de", out / ".s0.zarr.tmp-999999-deadbeef"]  # export, predict
    for folder in stale:
        (folder / "labels").mkdir(parents=True)
        (folder / "zarr.json").write_text("{}")
    mine = out / ".s0.zarr.tmp-notours"  # not milkd's naming: left alone
    mine.mkdir()
    assert main(_argv(run_dir, slide, out)) == 0
    assert not any(folder.exists() for folder in stale)
    assert mine.is_dir()


def test_slide_names_links_and_out_not_created(
    run_dir: Path,
    tcga_svs: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = tmp_path / "loop.svs"
    loop.symlink_to(loop)
    out = tmp_path / "out"
    assert main(_argv(run_dir, loop, out)) == 2
    assert "symbolic link loop" in _one_error_line(capsys)
    broken = tmp_path / "broken.svs"
    broken.symlink_to(tmp_path / "gone.svs")
    assert main(_argv(run_dir, broken, out)) == 2
    assert "broken symbolic link" in _one_error_line(capsys)
    # A slide that cannot be predicted: --out is not created.
    assert main(_argv(run_dir, tcga_svs, out)) == 2
    assert "--slide-mpp" in _one_error_line(capsys)
    assert not out.exists()
    # A DICOM-WSI folder given as "." (or "dir/.."): the folder's real name, never a hidden ".zarr".
    dicom = tmp_path / "CASE-7"
    (dicom / "sub").mkdir(parents=True)
    monkeypatch.chdir(dicom)
    assert slide_name(".") == "CASE-7" and slide_name("sub/..") == "CASE-7" and slide_name("./") == "CASE-7"


def test_dicom_folder_given_as_dot(
    run_dir: Path, dicom_dcm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(dicom_dcm.parent)
    plan = plan_cohort(["."], run_dir, tmp_path / "out")
    assert [job.name for job in plan.jobs] == ["CMU-1-Small-Region.dicom"] and not plan.failures
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs RLIMIT_FSIZE (POSIX)")
@pytest.mark.parametrize("limit", [600, 6000])
def test_a_full_disk_is_one_line_and_leaves_no_half_prediction(
    run_dir: Path, slide: Path, tmp_path: Path, limit: int
) -> None:
    """Issue 18 case 3, real fault: ``milkd predict`` under ``ulimit -f`` (EFBIG on every write past
    ``limit`` bytes, as on a full disk), whether the zarr's writer thread or the GeoJSON hits it first."""
    import resource

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = tmp_path / "out"
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "milkd"), *_argv(run_dir, slide, out)],
        capture_output=True,
        text=True,
        preexec_fn=limited,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("milkd: error:")]
    assert len(errors) == 1 and "could not write" in errors[0] and "limit" in errors[0], proc.stderr
    # Nothing that looks finished: no GeoJSON, and no zarr marked complete.
    assert not (out / "s0.geojson").exists()
    zarr_dir = out / "s0.zarr"
    if zarr_dir.exists():
        assert not (read_progress(zarr_dir) or {}).get("complete"), read_progress(zarr_dir)
