"""A project under faults: damaged saved files (issue 18 case 6), two sessions on one project (issue 15
case 6), and reopening at another working resolution (issue 15 case 1)."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from napari_milkd.core.errors import InputError, WriteError
from napari_milkd.core.session.labels import NO_OPINION
from napari_milkd.core.session.project import LOCK_NAME, DamagedProjectFile, Project
from napari_milkd.core.session.slide_session import SlideSession
from napari_milkd.core.slides.sample import write_pyramidal_tiff


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """768×1024 at 0.25 µm/px, single level: a pink rectangle on white glass."""
    image = np.full((768, 1024, 3), 245, np.uint8)
    image[64:704, 96:928] = (220, 120, 180)
    path = tmp_path_factory.mktemp("slide") / "s.tiff"
    write_pyramidal_tiff(path, [image], mpp=0.25, tile=128)
    return path


def _saved_project(slide: Path, root: Path) -> Project:
    project = Project(root)
    with SlideSession(slide, project=project) as session:
        session.prepare(1.0, 64)
        session.weak[20:60, 30:90] = 1
        session.hard[25:35, 40:50] = 1
        session.save()
    return project


def _truncated_npz() -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, data=np.ones((200, 200), np.uint8), meta="{}")
    return buffer.getvalue()[:300]


# ------------------------------------------------------------------------------------ damaged files


@pytest.mark.parametrize(
    "content",
    [b"PK\x03\x04 this is not a zip archive", _truncated_npz(), b"garbage"],
    ids=["garbage-PK", "truncated", "garbage"],
)
def test_a_damaged_array_is_kept_aside_and_prepare_starts_clean(
    slide: Path, tmp_path: Path, content: bytes
) -> None:
    """Regression: a ``.npz`` starting with ``PK`` raised an uncaught ``BadZipFile`` out of Prepare."""
    project = _saved_project(slide, tmp_path / "p")
    weak = project.root / "arrays" / "weak_labels.npz"
    weak.write_bytes(content)
    with SlideSession(slide, project=project) as session:
        restored = session.prepare(1.0, 64)
        [note] = [r for r in restored if "weak_labels.npz" in r]
        assert note.startswith("weak_labels.npz was damaged: kept aside as weak_labels.npz.corrupt-")
        assert note.endswith(", starting empty")
        assert not session.weak.any()  # that item starts clean ...
        assert session.corrected_pixels == 100  # ... the others are restored
        session.save()
    [aside] = list(weak.parent.glob("weak_labels.npz.corrupt-*"))
    assert aside.read_bytes() == content  # nothing deleted
    assert project.load_array("weak_labels")[0].shape == (192, 256)  # the new save is readable


def test_load_array_reports_what_it_set_aside(tmp_path: Path) -> None:
    project = Project(tmp_path / "p")
    project.save_array("weak_labels", np.zeros((4, 4), np.uint8))
    path = project.root / "arrays" / "weak_labels.npz"
    path.write_bytes(b"PK\x03\x04xx")
    with pytest.raises(DamagedProjectFile, match=r"damaged \(BadZipFile") as info:
        project.load_array("weak_labels")
    assert isinstance(info.value, InputError) and info.value.aside is not None and info.value.aside.exists()
    assert project.load_array("weak_labels") is None  # set aside: a second load finds nothing
    # an archive that is a zip but not a milkd array (no 'data'), or an object array
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("other.npy", b"")
    with pytest.raises(DamagedProjectFile):
        project.load_array("weak_labels")


def test_a_damaged_project_json_is_kept_aside_and_prepare_goes_on(slide: Path, tmp_path: Path) -> None:
    project = _saved_project(slide, tmp_path / "p")
    (project.root / "project.json").write_text('{"work_mpp": 1.0, "tile": ')
    with SlideSession(slide, project=project) as session:
        assert session.saved_settings() == {}  # what the widget asks before Prepare: no exception
        restored = session.prepare(1.0, 64)
        assert any(
            r.startswith("project.json was damaged: kept aside as project.json.corrupt-") for r in restored
        )
        assert "weak labels" in restored
    assert len(list(project.root.glob("project.json.corrupt-*"))) == 1
    assert json.loads((project.root / "project.json").read_text())["work_mpp"] == 1.0  # rewritten whole
    (project.root / "project.json").write_text("[1, 2]")  # JSON, but not settings
    with pytest.raises(DamagedProjectFile, match="not a settings object"):
        project.load_settings()


def test_a_saved_map_of_the_wrong_rank_is_set_aside(slide: Path, tmp_path: Path) -> None:
    project = _saved_project(slide, tmp_path / "p")
    project.save_array("teacher_probability", np.zeros((3, 4, 5), np.float16))
    with SlideSession(slide, project=project) as session:
        restored = session.prepare(1.0, 64)
    assert any(r.startswith("teacher_probability.npz was damaged") for r in restored)
    assert "teacher" not in session.probabilities


# ------------------------------------------------------------------------------------ two writers

HOLDER = """
import sys, time
from napari_milkd.core.session.project import Project
lock = Project(sys.argv[1]).lock()
print("locked", flush=True)
sys.stdin.read()
lock.release()
"""


def _holder(root: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_process_is_refused_with_the_holder_named(slide: Path, tmp_path: Path) -> None:
    project = _saved_project(slide, tmp_path / "p")
    proc = _holder(project.root)
    try:
        session = SlideSession(slide, project=project)
        with pytest.raises(InputError) as info:
            session.prepare(1.0, 64)
        message = str(info.value)
        assert "\n" not in message
        assert f"in use by process {proc.pid} on {socket.gethostname()}" in message
        assert session.work is None  # nothing changed
    finally:
        proc.communicate("")  # the holder releases and exits
    with SlideSession(slide, project=project) as session:  # now free
        session.prepare(1.0, 64)
        held = json.loads((project.root / LOCK_NAME).read_text())
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
    assert not (project.root / LOCK_NAME).exists()  # close() released it


def test_the_stale_lock_of_a_killed_process_is_taken_over(slide: Path, tmp_path: Path) -> None:
    project = _saved_project(slide, tmp_path / "p")
    proc = _holder(project.root)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((project.root / LOCK_NAME).read_text())["pid"] == proc.pid  # left behind
    with SlideSession(slide, project=project) as session:
        assert "weak labels" in session.prepare(1.0, 64)
        assert json.loads((project.root / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_a_lock_held_on_another_host_is_respected(slide: Path, tmp_path: Path) -> None:
    project = Project(tmp_path / "p")
    project.root.mkdir()
    (project.root / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "scope-pc-7", "token": "x"}))
    with pytest.raises(InputError, match="in use by process 1 on scope-pc-7"):
        SlideSession(slide, project=project).prepare(1.0, 64)


def test_within_one_process_a_later_session_takes_over_and_the_earlier_stops_saving(
    slide: Path, tmp_path: Path
) -> None:
    """The widget makes a new session at each Prepare; two in one process must not both write."""
    project = _saved_project(slide, tmp_path / "p")
    first = SlideSession(slide, project=project)
    first.prepare(1.0, 64)
    second = SlideSession(slide, project=project)
    second.prepare(1.0, 64)
    first.weak[:] = 0
    with pytest.raises(WriteError, match="was opened by another session: this one no longer saves"):
        first.save()
    assert project.load_array("weak_labels")[0].any()  # the earlier session's empty map was not written
    second.close()
    with pytest.raises(WriteError, match="was closed"):
        second.save()
    assert not (project.root / LOCK_NAME).exists()
    first.prepare(1.0, 64)  # prepare again takes it back
    first.save()
    first.close()


def test_a_session_dropped_without_close_releases_its_lock(slide: Path, tmp_path: Path) -> None:
    import gc

    project = Project(tmp_path / "p")
    session = SlideSession(slide, project=project)
    session.prepare(1.0, 64)
    assert (project.root / LOCK_NAME).exists()
    del session
    gc.collect()
    assert not (project.root / LOCK_NAME).exists()


# ------------------------------------------------------------------------------------ reopen


def test_reopening_at_another_resolution_never_erases_saved_work(slide: Path, tmp_path: Path) -> None:
    """Issue 15 case 1, the exact scenario: made at 1.0 µm/px, reopened at 0.5 (the form's default), one
    save (the autosave after a stroke), reopened at 1.0: weak labels and corrections are all there."""
    project = Project(tmp_path / "p")
    with SlideSession(slide, project=project) as made:
        made.prepare(1.0, 64)
        made.weak[10:100, 20:120] = 1
        made.weak[120:180, 150:240] = 2
        made.hard[30:50, 40:60] = 1
        made.hard[130:140, 160:170] = 0
        made.save()
        weak, hard = made.weak.copy(), made.hard.copy()
    with SlideSession(slide, project=project) as fine:
        restored = fine.prepare(0.5, 64)
        assert "weak labels (resampled from 1 µm/px)" in restored
        assert any(r.startswith("2000 corrected pixels (resampled from 1 µm/px)") for r in restored)
        assert fine.weak.shape == (384, 512) and fine.weak.any()
        fine.save()
    with SlideSession(slide, project=project) as again:
        again.prepare(1.0, 64)
        assert np.array_equal(again.weak, weak)
        assert np.array_equal(again.hard, hard)
        assert (again.hard != NO_OPINION).sum() == 500
