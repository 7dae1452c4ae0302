"""A slide group, headless: two prepared sessions (one with tumour and tumour-free regions, one all
tumour-free) train one teacher and one student (tiny backbone, CPU); both slides get maps; the group's
manifest.csv reads back through `milkd train --slides` to the same bags, and trains headless."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from napari_milkd.cli import main
from napari_milkd.core.engine.datasets import BagSet
from napari_milkd.core.engine.presets import schedule
from napari_milkd.core.errors import InputError
from napari_milkd.core.inference.stream import open_prediction
from napari_milkd.core.progress import drain
from napari_milkd.core.session.cohort_manifest import TrainingSlide, read_training_manifest
from napari_milkd.core.session.cohort_training import SlideBags, cohort_bags
from napari_milkd.core.session.labels import ReadingTiles
from napari_milkd.core.session.project import Project
from napari_milkd.core.session.slide_group import (
    MANIFEST_NAME,
    GroupOutput,
    _split,
    accept_group,
    group_folder,
    group_train_job,
)
from napari_milkd.core.session.slide_session import SlideSession
from napari_milkd.core.session.weak_labels import (
    BAG_IGNORE,
    REGION_FREE,
    REGION_TUMOUR,
    bag_labels_from_regions,
)
from napari_milkd.core.slides.sample import write_pyramidal_tiff
from slide_images import two_tone_slide

SLIDE_MPP, WORK_MPP, TILE = 0.5, 1.0, 32
H, W, SPLIT = 512, 768, 384


def _two_tone(path: Path, seed: int) -> Path:
    """Purple ("tumour") left half, pink right half of tissue on white glass."""
    return two_tone_slide(path, seed, SLIDE_MPP)


def _pink(path: Path, seed: int) -> Path:
    """All tissue pink (a tumour-free slide)."""
    rng = np.random.default_rng(seed)
    image = np.full((H, W, 3), 245, np.uint8)
    tissue = np.array([230, 140, 190], float) + rng.normal(0, 6, (H - 64, W - 64, 3))
    image[32 : H - 32, 32 : W - 32] = np.clip(tissue, 0, 255).astype(np.uint8)
    write_pyramidal_tiff(path, [image, image[::4, ::4].copy()], mpp=SLIDE_MPP, tile=128)
    return path


def _config(**extra: object):
    return schedule(
        "quick", backbone="tiny", teacher_epochs=3, student_epochs=2, batch_size=8, device="cpu", **extra
    )


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[SlideSession], GroupOutput]:
    """Two labelled sessions (halves on one, all tumour-free on the other) and a third prepared without
    labels (predicted only), a group teacher taken."""
    root = tmp_path_factory.mktemp("group")
    slides = [
        _two_tone(root / "halves.tiff", 0),
        _pink(root / "free.tiff", 1),
        _two_tone(root / "blank.tiff", 2),
    ]
    sessions = [SlideSession(s, project=Project(root / f"{s.stem}.milkd")) for s in slides]
    for session in sessions:
        session.prepare(WORK_MPP, TILE)
    a, b, _ = sessions
    weak = np.zeros(a.work.shape, np.uint8)
    weak[:, : a.work.shape[1] // 2] = REGION_TUMOUR
    weak[:, a.work.shape[1] // 2 :] = REGION_FREE
    weak[~a.tissue] = 0
    a.set_weak_labels(weak)
    b.mark_all_free()
    assert b.bag_counts()[0] == 0 and b.bag_counts()[1] > 0  # one kind only: fine in a group
    events: list[object] = []
    output = drain(group_train_job(sessions, "teacher", _config(), root=root), events.append)
    reading = {e.activity for e in events if isinstance(e, ReadingTiles)}
    assert reading == {"reading halves.tiff", "reading free.tiff"}  # bags of both slides
    accept_group(sessions, output)
    return root, sessions, output


def test_both_slides_get_the_group_teacher(group) -> None:
    root, sessions, output = group
    labelled = sessions[:2]  # the group is the labelled slides; the third is predicted only
    assert output.folder == group_folder([s.slide_path for s in labelled], root)
    assert output.folder == group_folder([s.slide_path for s in reversed(labelled)], root)  # any order
    assert output.folder.parent == root / "groups"
    assert (output.folder / "checkpoints" / "teacher.pt").is_file()
    assert output.slides == tuple(s.slide_path for s in sessions)
    assert output.train_slides == output.val_slides == ("halves.tiff", "free.tiff")  # both train
    for session in sessions:
        assert session.mask("teacher") is not None and session.mask("teacher").shape == session.work.shape
        assert session.has_model("teacher")  # each project holds a copy of the group's model
        assert session.stage_metrics["teacher"]["epochs"] == output.result.epochs
    assert output.of(sessions[1].slide_path).n_positive == 0
    blank = output.of(sessions[2].slide_path)
    assert (blank.n_positive, blank.n_negative) == (0, 0)  # no bags, a map all the same


def test_group_student_distils_from_the_group_teacher(group) -> None:
    root, sessions, _ = group
    # A correction on the tumour-free slide goes into the student's bags.
    sessions[1].record_edit("teacher", np.zeros_like(sessions[1].mask("teacher")))
    output = drain(group_train_job(sessions, "student", _config(), root=root))
    accept_group(sessions, output)
    assert (output.folder / "checkpoints" / "student.pt").is_file()
    assert all(s.mask("student") is not None for s in sessions)


def test_group_refusals(group, tmp_path: Path) -> None:
    root, sessions, _ = group
    with pytest.raises(InputError, match="at least two"):
        group_train_job(sessions[:1], "teacher", _config(), root=root)
    other = SlideSession(sessions[0].slide_path, project=Project(tmp_path / "other.milkd"))
    other.prepare(WORK_MPP, 64)
    with pytest.raises(InputError, match="same settings"):
        group_train_job([sessions[1], other], "teacher", _config(), root=root)
    other.close()
    fresh = [
        SlideSession(s.slide_path, project=Project(tmp_path / f"{k}.milkd")) for k, s in enumerate(sessions)
    ]
    for session in fresh:
        session.prepare(WORK_MPP, TILE)
    with pytest.raises(InputError, match="no positive"):
        group_train_job(fresh, "teacher", _config(), root=tmp_path)
    fresh[0].set_weak_labels(sessions[0].weak)
    with pytest.raises(InputError, match="teacher on these slides first"):
        group_train_job(fresh, "student", _config(), root=tmp_path)
    for session in fresh:
        session.close()


def test_manifest_reads_back_to_the_same_bags(group) -> None:
    _, sessions, output = group
    manifest = output.folder / MANIFEST_NAME
    with manifest.open() as fh:
        rows = list(csv.DictReader(fh))
    assert [Path(r["slide"]).name for r in rows] == ["halves.tiff", "free.tiff"]
    slides = read_training_manifest(manifest)
    per_slide = drain(cohort_bags(slides, work_mpp=WORK_MPP, tile=TILE))
    for session, given in zip(sessions[:2], per_slide, strict=True):
        labels = bag_labels_from_regions(session.work.grid, session.weak, session.work.downsample).labels
        assert (given.n_positive, given.n_negative) == session.bag_counts()
        index = np.flatnonzero(labels != BAG_IGNORE)
        assert given.bags is not None
        assert list(given.bags.names) == [f"{session.info.path.split('/')[-1]}:tile_{i}" for i in index]
        assert np.array_equal(given.bags.labels, labels[index])


def test_manifest_trains_headless(group) -> None:
    _, _, output = group
    run = output.folder.parent / "headless-run"
    args = ["train", "--slides", str(output.folder / MANIFEST_NAME), "--out", str(run), "--preset", "quick"]
    args += ["--backbone", "tiny", "--tile", str(TILE), "--work-mpp", str(WORK_MPP), "--batch-size", "8"]
    args += ["--teacher-epochs", "1", "--student-epochs", "1", "--device", "cpu"]
    assert main(args) == 0
    assert (run / "teacher.pt").is_file() and (run / "student.pt").is_file()


def test_group_model_predicts_headless(group, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The group's checkpoints folder is a run folder for `milkd predict` (at the working µm/px)."""
    _, sessions, output = group
    out = tmp_path / "pred"
    run = str(output.folder / "checkpoints")
    assert main(["predict", "--run", run, sessions[0].slide_path, "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["mpp"] == pytest.approx(WORK_MPP)
    _, mask, _ = open_prediction(summary["zarr"])
    assert mask.shape == sessions[0].work.shape


def _slide_bags(name: str, n: int = 10) -> SlideBags:
    """``n`` tiny bags of slide ``name``, half positive."""
    bags = BagSet.from_arrays(
        np.zeros((n, 8, 8, 3), np.uint8),
        [k % 2 for k in range(n)],
        groups=[f"/slides/{name}"] * n,
        names=[f"{name}:tile_{k}" for k in range(n)],
    )
    row = TrainingSlide(Path(f"/slides/{name}"), None, False, None, None, 2)
    return SlideBags(row, bags, n // 2, n - n // 2)


def test_split_holds_out_whole_slides_from_three_on() -> None:
    config = _config()
    train, val, train_slides, val_slides, how = _split([_slide_bags(f"s{k}.tiff") for k in range(3)], config)
    assert how == "whole slides held out" and val is not None
    assert val_slides and not set(val_slides) & set(train_slides)
    assert {g for g in val.groups} == {f"/slides/{s}" for s in val_slides}
    assert len(train) + len(val) == 30
    # Two slides: holding one out would train on the other alone; the bags of each are split instead.
    train, val, train_slides, val_slides, how = _split([_slide_bags("a.tiff"), _slide_bags("b.tiff")], config)
    assert how == "bags of every slide on both sides" and val is not None
    assert train_slides == val_slides == ["a.tiff", "b.tiff"] and len(train) + len(val) == 20
