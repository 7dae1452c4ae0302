"""Rounds kept in the project (issue 16, "Rounds you can go back to"), headless: Next round keeps the
finished round, its files never change after, going back brings its masks back and keeps the state it
replaces, corrections are never rolled back, and a killed archive leaves no half round listed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from napari_milkd.core.engine.presets import schedule
from napari_milkd.core.errors import InputError
from napari_milkd.core.progress import drain
from napari_milkd.core.session import rounds as rounds_module
from napari_milkd.core.session.labels import NO_OPINION, apply_corrections
from napari_milkd.core.session.project import Project
from napari_milkd.core.session.rounds import archive_round, list_rounds, load_mask
from napari_milkd.core.session.slide_session import SlideSession
from napari_milkd.core.session.weak_labels import REGION_FREE, REGION_TUMOUR
from napari_milkd.core.slides.sample import write_pyramidal_tiff


def _slide(path: Path) -> Path:
    """768×1024 at 0.25 µm/px: left half purple ("tumour"), right half pink, on white glass."""
    rng = np.random.default_rng(1)
    image = np.full((768, 1024, 3), 245, np.uint8)
    image[32:736, 32:512] = (120, 60, 160)
    image[32:736, 512:992] = (230, 140, 190)
    image[32:736, 32:992] = np.clip(image[32:736, 32:992] + rng.normal(0, 6, (704, 960, 3)), 0, 255)
    write_pyramidal_tiff(path, [image, image[::4, ::4].copy()], mpp=0.25, tile=128)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _session(tmp_path: Path) -> SlideSession:
    session = SlideSession(_slide(tmp_path / "s.tiff"), project=Project(tmp_path / "project"))
    session.prepare(0.5, 64)
    weak = np.zeros(session.work.shape, np.uint8)
    half = session.work.shape[1] // 2
    weak[:, :half], weak[:, half:] = REGION_TUMOUR, REGION_FREE
    weak[~session.tissue] = 0
    session.set_weak_labels(weak)
    return session


CONFIG = schedule("quick", backbone="tiny", teacher_epochs=1, student_epochs=1, batch_size=8, device="cpu")


def test_next_round_keeps_the_round_and_going_back_restores_it(tmp_path: Path) -> None:
    session = _session(tmp_path)
    session.train("teacher", CONFIG)
    session.train("student", CONFIG)
    assert session.rounds() == []  # nothing replaced yet
    round1 = {stage: session.mask(stage).copy() for stage in ("teacher", "student")}
    round1_prob = session.probabilities["student"].copy()
    student_sha = _sha(session.checkpoint("student"))
    teacher_sha = _sha(session.checkpoint("teacher"))
    session.record_edit("student", round1["student"])  # no change: no correction
    corrected_before = session.corrected_pixels

    # Next round: round 1 is kept before the student becomes the teacher.
    output = drain(session.next_round_job(CONFIG))
    session.accept(output)
    (kept,) = session.rounds()
    assert kept.number == 1 and kept.session_round == 0 and kept.reason == "next round"
    assert kept.stages == ("teacher", "student") and kept.maps == ("teacher", "student")
    assert kept.corrected_pixels == corrected_before and kept.dice is not None and 0 <= kept.dice <= 1
    assert kept.metrics["student"]["epochs"] == 1 and kept.metrics["teacher"]["n_positive"] > 0
    assert kept.label().startswith("round 1 · ") and "teacher + student" in kept.label()
    folder = tmp_path / "project" / "rounds" / "1"
    record = json.loads((folder / "round.json").read_text())
    assert record["number"] == 1 and record["settings"]["tile"] == 64 and record["date"].startswith("20")
    assert (folder / "masks.png").stat().st_size > 0
    np.testing.assert_array_equal(load_mask(folder / "student_mask.npz"), round1["student"])
    # Round 2 trained a new student and replaced the teacher; round 1's models are byte for byte as they were.
    assert session.round == 1
    assert _sha(folder / "student.pt") == student_sha and _sha(folder / "teacher.pt") == teacher_sha
    assert _sha(session.checkpoint("teacher")) == student_sha  # the student became the teacher
    assert _sha(session.checkpoint("student")) != student_sha
    round2 = {stage: session.mask(stage).copy() for stage in ("teacher", "student")}

    # A correction made in round 2: the pathologist's work, never rolled back.
    edited = session.mask("student").copy()
    edited[10:14, 150:154] = 1 - edited[10:14, 150:154]
    session.record_edit("student", edited)
    hard = session.hard.copy()
    assert session.corrected_pixels == corrected_before + 16

    # Go back to round 1: the current state (round 2) is kept first, as round 2.
    restored = session.restore_round(1)
    assert restored.kept_as is not None and restored.kept_as.number == 2
    assert [r.number for r in session.rounds()] == [1, 2]
    assert session.rounds()[1].reason == "before going back to round 1"
    np.testing.assert_array_equal(session.hard, hard)  # corrections kept as they are
    for stage in ("teacher", "student"):
        np.testing.assert_array_equal(session.mask(stage), apply_corrections(round1[stage], hard))
    assert (session.mask("student")[10:14, 150:154] == edited[10:14, 150:154]).all()
    changed = session.mask("student") != round1["student"]
    assert changed.sum() <= 16 and (hard[changed] != NO_OPINION).all()
    np.testing.assert_allclose(session.probabilities["student"], round1_prob, atol=1e-3)  # float16 kept
    assert (
        _sha(session.checkpoint("student")) == student_sha
        and _sha(session.checkpoint("teacher")) == teacher_sha
    )
    assert session.round == 0
    assert json.loads((tmp_path / "project" / "project.json").read_text())["round"] == 0

    # Going back can itself be undone: round 2 comes back; nothing new is kept (round 1 already was).
    again = session.restore_round(2)
    assert again.kept_as is None and len(session.rounds()) == 2
    np.testing.assert_array_equal(session.mask("student"), apply_corrections(round2["student"], hard))
    assert session.round == 1

    # Training a stage again keeps the round first, once.
    session.train("teacher", CONFIG)
    assert len(session.rounds()) == 2  # this teacher (round 2's) was already kept: not kept twice
    session.train("teacher", CONFIG)
    assert [r.reason for r in session.rounds()][-1] == "before training the teacher again"
    assert len(session.rounds()) == 3

    # A reopened project lists the same rounds.
    session.close()
    reopened = SlideSession(session.slide_path, project=session.project)
    reopened.prepare(0.5, 64)
    assert [r.number for r in reopened.rounds()] == [1, 2, 3]
    with pytest.raises(InputError, match="round 9 was not kept"):
        reopened.restore_round(9)
    reopened.close()


def test_a_killed_archive_leaves_no_half_round(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "project"
    (root / "checkpoints").mkdir(parents=True)
    model = root / "checkpoints" / "teacher.pt"
    model.write_bytes(b"weights")
    mask = np.eye(8, dtype=np.uint8)

    def killed(path: Path, data: np.ndarray) -> None:
        raise KeyboardInterrupt  # as good as a kill halfway through

    monkeypatch.setattr(rounds_module, "save_mask", killed)
    with pytest.raises(KeyboardInterrupt):
        archive_round(root, files={"teacher.pt": model}, masks={"teacher": mask}, record={"reason": "x"})
    assert list_rounds(root) == [] and list((root / "rounds").iterdir()) == []
    # A real kill leaves the hidden folder behind: never listed, removed by the next archive.
    leftover = root / "rounds" / ".1.deadbeef.part"
    leftover.mkdir()
    (leftover / "teacher.pt").write_bytes(b"half")
    damaged = root / "rounds" / "7"  # a round whose record was damaged later: not listed either
    damaged.mkdir()
    (damaged / "round.json").write_text('{"session_round": "not a number"}')
    assert list_rounds(root) == []
    damaged.rename(root / "rounds" / "damaged")
    monkeypatch.undo()
    kept = archive_round(root, files={"teacher.pt": model}, masks={"teacher": mask}, record={"reason": "x"})
    assert kept.number == 1 and [r.number for r in list_rounds(root)] == [1]
    assert not leftover.exists()
    np.testing.assert_array_equal(load_mask(kept.mask_path("teacher")), mask)
    assert kept.checkpoint("teacher").read_bytes() == b"weights"
    model.unlink()  # the project's file is replaced: the round keeps its own
    model.write_bytes(b"new weights")
    assert kept.checkpoint("teacher").read_bytes() == b"weights"
