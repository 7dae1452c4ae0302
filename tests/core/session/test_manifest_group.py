"""A `milkd train --slides` manifest opened as a slide group, headless: each row becomes a prepared
session whose weak labels and bags are exactly what the headless trainer makes of the row (class map,
`label=negative`, the manifest's µm/px only where the file has none); the manifest's labels replace the
project's as one import; slides the caller already holds only get their labels read; a bad manifest is
one line; a group's own manifest opens back as the same group; and the opened group trains."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_milkd.core.engine.presets import schedule
from napari_milkd.core.errors import InputError, SlideError
from napari_milkd.core.progress import drain
from napari_milkd.core.session.cohort_manifest import read_training_manifest
from napari_milkd.core.session.cohort_training import cohort_bags
from napari_milkd.core.session.project import Project
from napari_milkd.core.session.slide_group import (
    accept_group,
    group_train_job,
    member_of,
    open_manifest_group,
    open_manifest_slides,
    read_manifest_group,
    write_group_manifest,
)
from napari_milkd.core.session.slide_session import SlideSession
from napari_milkd.core.session.weak_labels import REGION_FREE, REGION_TUMOUR, SCRIBBLE_RULE
from slide_images import TWO_TONE_SHAPE, TWO_TONE_SPLIT, two_tone_slide

WORK_MPP, TILE = 1.0, 32
NO_MPP_GIVEN = 0.5  # µm/px the manifest gives the slide whose file records none


def _regions(path: Path, tumour: str = "Tumor", free: str = "Stroma") -> Path:
    """QuPath rectangles: ``tumour`` over the purple half, ``free`` over the pink half, and an
    ``Ignore*`` square over the tumour (ignored: never painted)."""
    (h, w), split = TWO_TONE_SHAPE, TWO_TONE_SPLIT

    def feature(x0: int, x1: int, y0: int, y1: int, name: str) -> dict:
        ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
        return {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"objectType": "annotation", "classification": {"name": name}},
        }

    features = [
        feature(40, split - 8, 40, h - 40, tumour),
        feature(split + 8, w - 40, 40, h - 40, free),
        feature(60, 100, 60, 100, "Ignore*"),
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = [",".join(columns)] + [",".join(row.get(c, "") for c in columns) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def cohort(tmp_path: Path) -> Path:
    """A manifest of two slides: one with QuPath regions (records its µm/px; the manifest's contradicting
    ``mpp`` must not be used), one recording no µm/px, labelled tumour-free as a whole (no annotations;
    its µm/px from the manifest). Paths relative to the manifest's folder."""
    data = tmp_path / "data"
    two_tone_slide(data / "halves.tiff", 0)
    two_tone_slide(data / "plain.tif", 1, mpp=None)
    _regions(data / "halves.geojson")
    rows = [
        {"slide": "halves.tiff", "annotations": "halves.geojson", "mpp": "0.7", "split": "train"},
        {"slide": "plain.tif", "label": "negative", "mpp": f"{NO_MPP_GIVEN}", "split": "val"},
    ]
    return _write(data / "train.csv", rows)


def test_rows_open_as_the_headless_trainer_reads_them(cohort: Path, tmp_path: Path) -> None:
    opened = open_manifest_group(cohort, work_mpp=WORK_MPP, tile=TILE, root=tmp_path / "projects")
    try:
        halves, plain = (o.session for o in opened)
        assert [Path(s.slide_path).name for s in (halves, plain)] == ["halves.tiff", "plain.tif"]
        assert all(o.new and o.taken is not None for o in opened)
        assert all(s.project.root.parent == tmp_path / "projects" for s in (halves, plain))
        # µm/px: the file's own wins (the manifest's 0.7 is not used, and the warning says so); the
        # manifest's fills the slide that records none.
        assert halves.info.mpp == pytest.approx(0.5) and halves.slide_mpp is None
        assert any("records 0.5 µm/px" in w for w in opened[0].warnings)
        assert plain.info.mpp == pytest.approx(NO_MPP_GIVEN) and plain.slide_mpp == NO_MPP_GIVEN
        # Regions: "Tumor" left, "Stroma" (tumour-free by the default class map) right; label=negative:
        # all tissue tumour-free.
        w = halves.work.shape[1]
        left, right = halves.weak[:, : w // 2 - 8], halves.weak[:, w // 2 + 8 :]
        assert (left == REGION_TUMOUR).any() and not (left == REGION_FREE).any()
        assert (right == REGION_FREE).any() and not (right == REGION_TUMOUR).any()
        assert (plain.weak[plain.tissue] == REGION_FREE).all() and not (plain.weak[~plain.tissue]).any()
        # The headless trainer's bags, per slide, from its own code path.
        per_slide = drain(cohort_bags(read_training_manifest(cohort), work_mpp=WORK_MPP, tile=TILE))
        for o, given in zip(opened, per_slide, strict=True):
            assert o.session.bag_rule.name == "regions"
            assert o.session.bags == (given.n_positive, given.n_negative)
            assert o.taken.positive == given.n_positive and o.taken.negative == given.n_negative
        assert halves.bags[0] > 0 and halves.bags[1] > 0 and plain.bags == (0, per_slide[1].n_negative)
        # Saved: the projects hold the labels and the rule.
        assert halves.project.load_settings()["bag_rule"] == "regions"
    finally:
        for o in opened:
            o.session.close()


def test_manifest_labels_replace_the_projects_as_one_import(cohort: Path, tmp_path: Path) -> None:
    root = tmp_path / "projects"
    [entry, _] = read_manifest_group(cohort)
    before = SlideSession(
        entry.path, project=Project.for_slide(entry.path, root), bag_rule=SCRIBBLE_RULE.name
    )
    before.prepare(WORK_MPP, TILE)
    painted = np.zeros(before.work.shape, np.uint8)
    painted[:10, :10] = REGION_FREE  # a stroke the manifest does not have
    before.set_weak_labels(painted)
    before.save()
    before.close()
    opened = open_manifest_group(cohort, work_mpp=WORK_MPP, tile=TILE, root=root)
    try:
        session = opened[0].session
        assert "weak labels" in opened[0].restored  # the project's were read first ...
        assert np.array_equal(session.weak, opened[0].regions)  # ... and replaced by the manifest's
        assert opened[0].taken.changed == int(np.count_nonzero(painted != opened[0].regions)) > 0
        assert session.bag_rule.name == "regions"
        assert session.undo_import() == "weak"
        assert np.array_equal(session.weak, painted)  # taken back as one import
    finally:
        for o in opened:
            o.session.close()


def test_held_sessions_only_get_their_labels_read(cohort: Path, tmp_path: Path) -> None:
    root = tmp_path / "projects"
    entries = read_manifest_group(cohort)
    held = SlideSession(entries[0].path, project=Project.for_slide(entries[0].path, root))
    held.prepare(WORK_MPP, TILE)
    weak_before = held.weak.copy()
    opened = open_manifest_slides(
        entries, work_mpp=WORK_MPP, tile=TILE, root=root, held={held.slide_path: held}
    )
    try:
        assert opened[0].session is held and not opened[0].new and opened[0].taken is None
        assert np.array_equal(held.weak, weak_before)  # the owner takes the labels, not the reader
        assert opened[1].new and opened[1].taken is not None
    finally:
        opened[1].session.close()
    held.prepare(WORK_MPP, 2 * TILE)  # now at another tile size: refused, nothing left open
    with pytest.raises(InputError, match="prepared at 1 µm/px with 64 px tiles"):
        open_manifest_slides(
            entries[::-1], work_mpp=WORK_MPP, tile=TILE, root=root, held={held.slide_path: held}
        )
    plain = Project.for_slide(entries[1].path, root)
    assert plain.lock_holder() is None  # the session made before the refusal gave its lock back
    held.close()


def test_a_bad_manifest_is_one_line(cohort: Path, tmp_path: Path) -> None:
    data = cohort.parent
    missing = _write(
        tmp_path / "missing.csv", [{"slide": str(data / "halves.tiff"), "annotations": "x.json"}]
    )
    with pytest.raises(InputError, match=r"line 2: annotations not found"):
        read_manifest_group(missing)
    no_mpp = _write(tmp_path / "no_mpp.csv", [{"slide": str(data / "plain.tif"), "label": "negative"}])
    with pytest.raises(SlideError, match="mpp column"):
        read_manifest_group(no_mpp)
    tumour_on_negative = _write(
        tmp_path / "contradiction.csv",
        [
            {
                "slide": str(data / "halves.tiff"),
                "annotations": str(data / "halves.geojson"),
                "label": "negative",
            }
        ],
    )
    with pytest.raises(InputError, match="labelled tumour-free but"):
        open_manifest_group(tumour_on_negative, work_mpp=WORK_MPP, tile=TILE, root=tmp_path / "p")
    assert Project.for_slide(data / "halves.tiff", tmp_path / "p").lock_holder() is None


def test_a_groups_manifest_opens_back_as_the_same_group(cohort: Path, tmp_path: Path) -> None:
    """Round trip: the group folder's manifest (weak labels as GeoJSON) opened into fresh projects
    gives the same slides, µm/px and weak labels (hence bags)."""
    opened = open_manifest_group(cohort, work_mpp=WORK_MPP, tile=TILE, root=tmp_path / "first")
    sessions = [o.session for o in opened]
    try:
        halves = sessions[0]
        edited = halves.weak.copy()
        edited[: edited.shape[0] // 3, : edited.shape[1] // 4] = 0  # an irregular edge, as painted
        halves.set_weak_labels(edited)
        manifest = write_group_manifest(
            tmp_path / "group", [member_of(s, with_corrections=False) for s in sessions]
        )
        again = open_manifest_group(manifest, work_mpp=WORK_MPP, tile=TILE, root=tmp_path / "second")
        try:
            assert [o.session.slide_path for o in again] == [s.slide_path for s in sessions]
            for o, session in zip(again, sessions, strict=True):
                assert o.session.project.root.parent == tmp_path / "second"  # fresh projects
                assert o.session.info.mpp == pytest.approx(session.info.mpp)
                assert np.array_equal(o.session.weak, session.weak)
                assert o.session.bags == session.bags
        finally:
            for o in again:
                o.session.close()
    finally:
        for session in sessions:
            session.close()


def test_the_opened_group_trains_on_both_slides(cohort: Path, tmp_path: Path) -> None:
    opened = open_manifest_group(cohort, work_mpp=WORK_MPP, tile=TILE, root=tmp_path / "projects")
    sessions = [o.session for o in opened]
    try:
        config = schedule(
            "quick", backbone="tiny", teacher_epochs=1, student_epochs=1, batch_size=8, device="cpu"
        )
        output = drain(group_train_job(sessions, "teacher", config, root=tmp_path / "projects"))
        accept_group(sessions, output)
        assert set(output.train_slides) == {"halves.tiff", "plain.tif"}
        assert [output.of(s.slide_path).n_positive for s in sessions] == [sessions[0].bags[0], 0]
        assert all(s.mask("teacher") is not None for s in sessions)
    finally:
        for session in sessions:
            session.close()
