"""Bad input on the command line: one line ``milkd: error: ...`` on stderr, exit code 2, no traceback.

Each case runs the real ``milkd`` executable in a subprocess. All cases start together (one module-scoped
fixture) and each test checks its own, so the matrix costs about one process start-up, not one per case.
Cases already covered elsewhere are listed in ``docs/reliability.md`` and not repeated here. A disk that
fills up mid-write is simulated in-process (monkeypatched write), see the end of this file.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from napari_milkd.cli import main

MILKD = str(Path(sys.executable).parent / "milkd")
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MILKD_SHARED_DATA") or (REPO / ".." / "shared" / "data")).resolve()
CMU_SVS = SHARED_DATA / "wsi" / "CMU-1-Small-Region.svs"


def make_folder(root: Path, n: int = 8, size: int = 24) -> Path:
    """``root/images`` with ``n`` noise PNGs (odd ones with a red square), ``root/labels.csv``."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    rows = [("name", "label")]
    for i in range(n):
        img = rng.integers(60, 140, (size, size, 3), dtype=np.uint8)
        if i % 2:
            img[4:14, 4:14] = (220, 40, 40)
        Image.fromarray(img).save(root / "images" / f"im{i}.png")
        rows.append((f"im{i}", "tumour" if i % 2 else "normal"))
    write_csv(root / "labels.csv", rows)
    return root


def write_csv(path: Path, rows: list[tuple[str, ...]]) -> Path:
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return path


def train_args(
    root: Path, *, images: str = "images", labels: str = "labels.csv", out: Path | None = None
) -> list[str]:
    return [
        "train", "--images", str(root / images), "--labels", str(root / labels), "--name-column", "name",
        "--label-column", "label", "--positive", "tumour", "--out", str(out or root / "run"),
        "--backbone", "tiny", "--size", "16", "--teacher-epochs", "1", "--student-epochs", "1",
        "--device", "cpu",
    ]  # fmt: skip


def evaluate_args(root: Path) -> list[str]:
    return [
        "evaluate", "--run", str(root / "run"), "--images", str(root / "images"), "--labels",
        str(root / "labels.csv"), "--name-column", "name", "--label-column", "label", "--positive", "tumour",
        "--masks", str(root / "images"), "--device", "cpu",
    ]  # fmt: skip


class Evil:
    """A pickle that runs code when loaded: ``torch.load(weights_only=True)`` must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str, ...]]:
        return (os.system, (f"touch {self.marker}",))


def _missing_labels(root: Path) -> list[str]:
    make_folder(root)
    return train_args(root, labels="nope.csv")


def _empty_images(root: Path) -> list[str]:
    make_folder(root)
    (root / "empty").mkdir()
    return train_args(root, images="empty")


def _no_negatives(root: Path) -> list[str]:
    make_folder(root)
    write_csv(root / "pos.csv", [("name", "label"), *[(f"im{i}", "tumour") for i in range(8)]])
    return train_args(root, labels="pos.csv")


def _names_match_nothing(root: Path) -> list[str]:
    make_folder(root)
    write_csv(root / "other.csv", [("name", "label"), ("scan_1", "tumour"), ("scan_2", "normal")])
    return train_args(root, labels="other.csv")


def _csv_path_traversal(root: Path) -> list[str]:
    """Names that point outside the images folder, at real images there: they must match nothing."""
    make_folder(root)
    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(root / "outside.png")
    rows = [("name", "label"), ("../outside.png", "tumour"), (str(root / "outside.png"), "normal")]
    write_csv(root / "evil.csv", rows)
    return train_args(root, labels="evil.csv")


def _out_under_a_file(root: Path) -> list[str]:
    # Tests may run as root, where chmod does not stop writes: a folder below a regular file cannot be
    # created by anyone, which is what an unwritable output folder looks like to the code.
    make_folder(root)
    (root / "a_file").write_text("not a folder")
    return train_args(root, out=root / "a_file" / "run")


def _demo_out_under_a_file(root: Path) -> list[str]:
    root.mkdir(parents=True)
    (root / "a_file").write_text("not a folder")
    return ["demo", "--headless", "--out", str(root / "a_file" / "out")]


def _garbage_checkpoint(root: Path) -> list[str]:
    make_folder(root)
    (root / "run").mkdir()
    (root / "run" / "teacher.pt").write_bytes(b"\x00\x01 this is not a checkpoint" * 40)
    return evaluate_args(root)


def _foreign_checkpoint(root: Path) -> list[str]:
    make_folder(root)
    (root / "run").mkdir()
    torch.save({"conv1.weight": torch.zeros(4, 3, 3, 3)}, root / "run" / "student.pt")
    return evaluate_args(root)


def _pickle_with_code(root: Path) -> list[str]:
    make_folder(root)
    (root / "run").mkdir()
    torch.save(
        {"format": "napari-milkd/checkpoint-v1", "model": Evil(root / "PWNED")}, root / "run" / "teacher.pt"
    )
    with (root / "run" / "student.pt").open("wb") as fh:
        pickle.dump(Evil(root / "PWNED"), fh)
    return evaluate_args(root)


def _truncated_real_slide(root: Path) -> list[str] | None:
    if not CMU_SVS.is_file():
        return None
    root.mkdir(parents=True)
    (root / "cut.svs").write_bytes(CMU_SVS.read_bytes()[:100_000])
    return ["info", str(root / "cut.svs")]


#: case → (arguments from a fresh folder, a phrase the message must contain).
CASES: dict[str, tuple[Callable[[Path], list[str] | None], str]] = {
    "missing-label-csv": (_missing_labels, "label CSV not found"),
    "empty-image-folder": (_empty_images, "no images found in"),
    "csv-no-negatives": (_no_negatives, "no negative bag"),
    "csv-names-match-no-image": (_names_match_nothing, "matches a name in other.csv"),
    "csv-path-traversal": (_csv_path_traversal, "matches a name in evil.csv"),
    "output-not-writable": (_out_under_a_file, "could not write"),
    "demo-output-not-writable": (_demo_out_under_a_file, "could not write"),
    "garbage-checkpoint": (_garbage_checkpoint, "cannot read checkpoint"),
    "foreign-checkpoint": (_foreign_checkpoint, "is not a napari-milkd checkpoint"),
    "pickle-with-code": (_pickle_with_code, "cannot read checkpoint"),
    "truncated-real-slide": (_truncated_real_slide, "cut.svs"),
}


@pytest.fixture(scope="module")
def runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[Path, subprocess.CompletedProcess[str] | None]]:
    """Every case's folder and finished ``milkd`` process (``None`` when its data is absent)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started: dict[str, tuple[Path, list[str] | None, subprocess.Popen[str] | None]] = {}
    for name, (setup, _) in CASES.items():
        root = tmp_path_factory.mktemp(name)
        args = setup(root / "case")
        proc = None
        if args is not None:
            proc = subprocess.Popen(
                [MILKD, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
            )
        started[name] = (root / "case", args, proc)
    done = {}
    for name, (root, args, proc) in started.items():
        if proc is None:
            done[name] = (root, None)
            continue
        out, err = proc.communicate(timeout=240)
        done[name] = (root, subprocess.CompletedProcess(args or [], proc.returncode, out, err))
    return done


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2(runs: dict, case: str) -> None:
    root, result = runs[case]
    if result is None:
        pytest.skip("real data not available")
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("milkd: error: "), result.stderr
    assert "Traceback" not in result.stderr
    assert CASES[case][1] in lines[0], lines[0]
    if case == "pickle-with-code":
        assert not (root / "PWNED").exists()  # the pickled code never ran


def test_full_disk_during_checkpoint_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """ENOSPC half-way through epoch 2's checkpoint: one-line error, exit 2, epoch 1's checkpoint intact,
    and ``--resume`` continues from it. (The OS call is simulated here; the real size-limited disk is
    ``tests/test_engine_faults_disk.py``.)"""
    from napari_milkd.core.engine import checkpoint

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to tell the checkpoint's fsync from the others")
    make_folder(tmp_path)
    args = [*train_args(tmp_path), "--teacher-epochs", "2", "--batch-size", "4"]
    teacher = tmp_path / "run" / "teacher.pt"
    real_fsync = os.fsync
    seen: list[bytes] = []

    def fsync_then_fill_the_disk(fd: int) -> None:
        real_fsync(fd)
        if ".teacher.pt." not in os.readlink(f"/proc/self/fd/{fd}"):
            return  # config.json, history.jsonl
        if seen:  # second checkpoint: its bytes are written, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        seen.append(b"first")

    monkeypatch.setattr(checkpoint.os, "fsync", fsync_then_fill_the_disk)
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("milkd: error: could not write ") and "the disk is full" in err[-1], err
    assert "Traceback" not in "\n".join(err)
    monkeypatch.setattr(checkpoint.os, "fsync", real_fsync)
    assert checkpoint.load_checkpoint(teacher)["epoch"] == 1  # the previous version, whole
    assert [p.name for p in teacher.parent.iterdir() if p.name.endswith(".part")] == []
    assert main([*args, "--resume"]) == 0
    state = checkpoint.load_checkpoint(teacher)
    assert state["epoch"] == 2 and state["complete"]


# ------------------------------------------------------------------------------------------ SIGKILL


def _wait_for(predicate: Callable[[], bool], proc: subprocess.Popen[str], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the process ended first:\n{proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.01)


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def test_sigkill_during_training_then_resume(tmp_path: Path) -> None:
    """Kill ``milkd train`` right after its first checkpoint: what is on disk is whole, and ``--resume``
    continues from the last complete epoch and finishes."""
    from napari_milkd.core.engine.checkpoint import load_checkpoint

    make_folder(tmp_path)
    run = tmp_path / "run"
    args = train_args(tmp_path)
    long = [*args, "--batch-size", "4", "--teacher-epochs", "1000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [MILKD, *long], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )
    _wait_for(lambda: (run / "teacher.pt").exists(), proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    json.loads((run / "config.json").read_text())  # whole
    killed = load_checkpoint(run / "teacher.pt")  # whole: it loads
    done = int(killed["epoch"])
    assert 1 <= done < 1000 and not killed["complete"]
    if (run / "history.jsonl").exists():  # written after each checkpoint, so never ahead of it
        assert [h["epoch"] for h in _history(run)] == list(range(1, len(_history(run)) + 1))
        assert len(_history(run)) <= done

    assert main([*args, "--batch-size", "4", "--teacher-epochs", str(done + 2), "--resume"]) == 0
    history = _history(run)
    teacher = [h for h in history if h["stage"] == "teacher"]
    assert [h["epoch"] for h in teacher] == list(range(1, done + 3))
    assert teacher[:done] == [dict(h) for h in killed["history"]]  # the finished epochs were not redone
    assert [h["epoch"] for h in history if h["stage"] == "student"] == [1]
    final = load_checkpoint(run / "teacher.pt")
    assert final["complete"] and final["epoch"] == done + 2
    assert load_checkpoint(run / "student.pt")["complete"]


_EXPORT_SCRIPT = """
import sys
from pathlib import Path
from shapely.geometry import box
from napari_milkd.core.annotations import write_geojson

path, flag = Path(sys.argv[1]), Path(sys.argv[2])

def polygons():
    for i in range(10**7):
        if i == 3000:
            flag.touch()
        yield box(2 * i, 0, 2 * i + 1, 1)

write_geojson(path, polygons())
"""


def test_sigkill_during_export_keeps_the_previous_file(tmp_path: Path) -> None:
    """Kill a process in the middle of a large GeoJSON export: the previous export is intact, and the
    temporary file left behind is hidden (``.name.*.part``), so nothing takes it for the export."""
    from shapely.geometry import box

    from napari_milkd.core.annotations import read_geojson, write_geojson

    exports = tmp_path / "exports"
    target = exports / "tumour.geojson"
    write_geojson(target, [box(0, 0, 5, 5)])
    before = target.read_bytes()
    flag = tmp_path / "started"
    proc = subprocess.Popen(
        [sys.executable, "-c", _EXPORT_SCRIPT, str(target), str(flag)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(flag.exists, proc)
    assert list(exports.glob(".tumour.geojson.*.part"))  # the export is under way
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert target.read_bytes() == before
    assert len(read_geojson(target)) == 1
    leftovers = [p.name for p in exports.iterdir() if p != target]
    assert leftovers and all(n.startswith(".tumour.geojson.") and n.endswith(".part") for n in leftovers)
    assert list(exports.glob("*.geojson")) == [target]  # what a folder scan or a file dialog lists
