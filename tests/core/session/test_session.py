"""SlideSession, headless: prepare → weak labels → teacher → student → edit → review → export → restore,
and the boundary to `milkd predict` (a model trained in a session is predicted at its own µm/px)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from napari_milkd.cli import main
from napari_milkd.core.engine.checkpoint import load_checkpoint
from napari_milkd.core.engine.metrics import f1_score
from napari_milkd.core.engine.presets import schedule
from napari_milkd.core.errors import InputError
from napari_milkd.core.inference.stream import decode_probability, open_prediction
from napari_milkd.core.session.labels import NO_OPINION
from napari_milkd.core.session.project import Project
from napari_milkd.core.session.slide_session import SlideSession
from napari_milkd.core.session.weak_labels import REGION_FREE, REGION_TUMOUR
from napari_milkd.core.slides.sample import write_pyramidal_tiff

#: Level-0 µm/px of the generated slide; the session works at twice that.
SLIDE_MPP = 0.25
WORK_MPP = 0.5
TILE = 64


def _two_tone_slide(path: Path) -> Path:
    """1024×1536 at 0.25 µm/px: left half purple ("tumour"), right half pink, on white glass."""
    rng = np.random.default_rng(0)
    image = np.full((1024, 1536, 3), 245, np.uint8)
    image[64:960, 64:768] = (120, 60, 160)
    image[64:960, 768:1472] = (230, 140, 190)
    image[64:960, 64:1472] = np.clip(image[64:960, 64:1472] + rng.normal(0, 6, (896, 1408, 3)), 0, 255)
    write_pyramidal_tiff(path, [image, image[::4, ::4].copy()], mpp=SLIDE_MPP, tile=128)
    return path


def _paint_halves(session: SlideSession) -> np.ndarray:
    weak = np.zeros(session.work.shape, np.uint8)
    half = session.work.shape[1] // 2
    weak[:, :half] = REGION_TUMOUR
    weak[:, half:] = REGION_FREE
    weak[~session.tissue] = 0
    return weak


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> SlideSession:
    """A session on the two-tone slide with a teacher and a student (tiny backbone, CPU)."""
    folder = tmp_path_factory.mktemp("session")
    slide = _two_tone_slide(folder / "two_tone.tiff")
    session = SlideSession(slide, project=Project(folder / "project"))
    assert session.prepare(WORK_MPP, TILE) == []  # a new project restores nothing
    session.set_weak_labels(_paint_halves(session))
    config = schedule("quick", backbone="tiny", teacher_epochs=4, batch_size=8, device="cpu")
    events: list[object] = []
    session.train("teacher", config, on_event=events.append)
    session.train("student", config)
    assert events, "the training job reports progress"
    return session


def test_prepare_geometry_and_bags(trained: SlideSession) -> None:
    work = trained.work
    assert work.grid.mpp == pytest.approx(WORK_MPP) and work.grid.tile == TILE
    assert work.downsample == pytest.approx(WORK_MPP / SLIDE_MPP)
    assert work.shape == (512, 768)
    pos, neg = trained.bag_counts()
    assert pos > 10 and neg > 10


def test_masks_follow_the_tissue_classes(trained: SlideSession) -> None:
    teacher, student = trained.mask("teacher"), trained.mask("student")
    assert teacher.shape == student.shape == trained.work.shape
    half = trained.work.shape[1] // 2
    inside = (slice(60, 450), slice(60, half - 30))  # deep inside the purple half
    outside = (slice(60, 450), slice(half + 30, 700))
    for mask in (teacher, student):
        assert mask[inside].mean() > 0.8 and mask[outside].mean() < 0.2


def test_every_checkpoint_records_the_working_resolution(trained: SlideSession) -> None:
    for stage in ("teacher", "student"):
        spec = load_checkpoint(trained.checkpoint(stage))["spec"]
        assert spec["mpp"] == pytest.approx(WORK_MPP) and spec["tile"] == TILE


def test_edits_become_corrections_and_survive_new_maps(trained: SlideSession) -> None:
    before = trained.corrected_pixels
    edited = trained.mask("student").copy()
    edited[100:110, 600:610] = 1  # tumour painted on the pink half
    assert trained.record_edit("student", edited) == before + 100
    assert (trained.hard[100:110, 600:610] == 1).all() and trained.hard[0, 0] == NO_OPINION
    # A new map of the same stage keeps the painted pixels.
    trained._set_probability("student", trained.probabilities["student"])
    assert (trained.mask("student")[100:110, 600:610] == 1).all()


def test_next_region_visits_each_tile_once(trained: SlideSession) -> None:
    trained.reviewed.clear()
    first, second = trained.next_region(), trained.next_region()
    assert first is not None and second is not None and first != second
    y0, _, y1, _ = trained.region_bounds_l0(first)
    assert y1 - y0 == pytest.approx(TILE * WORK_MPP / SLIDE_MPP)
    trained.reviewed.update(range(len(trained.work.grid)))
    assert trained.next_region() is None


def test_exports_use_one_policy(trained: SlideSession, tmp_path: Path) -> None:
    geojson = trained.export("teacher", "geojson", tmp_path / "t.geojson")
    features = json.loads(geojson.read_text())["features"]
    assert features
    coords = np.concatenate(
        [np.asarray(f["geometry"]["coordinates"][0]) for f in features if f["geometry"]["type"] == "Polygon"]
    )
    assert np.allclose(coords, np.round(coords, 2))  # vertices rounded to 0.01 level-0 px
    assert coords[:, 0].max() <= 1536 and coords[:, 1].max() <= 1024  # level-0 (x, y)
    assert (tmp_path / "t.xml").exists() is False
    trained.export("teacher", "asap", tmp_path / "t.xml")
    assert "ASAP_Annotations" in (tmp_path / "t.xml").read_text()
    with pytest.raises(InputError, match="unknown export format"):
        trained.export("teacher", "png", tmp_path / "t.png")


def test_ome_zarr_export_is_valid_ngff(trained: SlideSession, tmp_path: Path) -> None:
    """The widget's OME-Zarr export (issue 12): an NGFF 0.5 image at the root with the stage's mask under
    ``labels/``, validated by ome-zarr-models, and read back as it was."""
    pytest.importorskip("ome_zarr_models")
    import zarr
    from ome_zarr_models.v05.image import Image

    from napari_milkd.core.annotations import read_ome_zarr_labels

    target = trained.export("teacher", "ome-zarr", tmp_path / "t.zarr")
    image = Image.from_zarr(zarr.open_group(str(target), mode="r"))
    assert image.labels is not None and image.labels.label_paths == ["teacher"]
    assert len(image.datasets[0]) >= 2  # a pyramid
    labels, downsample = read_ome_zarr_labels(target, "teacher")
    np.testing.assert_array_equal(labels, trained.mask("teacher") > 0)
    assert downsample == pytest.approx(trained.work.downsample)


def test_geojson_export_is_relative_to_the_slide_bounds(trained: SlideSession, tmp_path: Path) -> None:
    """QuPath shows a slide with ``openslide.bounds-x/y`` cropped to its bounds: exported coordinates
    are shifted by the offset, so the export lands where the import of the same file would."""
    plain = json.loads(trained.export("teacher", "geojson", tmp_path / "a.geojson").read_text())
    info = trained.info
    try:
        trained.info = dataclasses.replace(info, bounds_l0=(100, 40, 1000, 1000))
        shifted = json.loads(trained.export("teacher", "geojson", tmp_path / "b.geojson").read_text())
    finally:
        trained.info = info
    a = np.asarray(plain["features"][0]["geometry"]["coordinates"][0])
    b = np.asarray(shifted["features"][0]["geometry"]["coordinates"][0])
    assert np.allclose(a - b, [100, 40])  # (x, y) minus the bounds offset


def test_model_card_says_what_the_session_trained_on(trained: SlideSession) -> None:
    card = load_checkpoint(trained.checkpoint("student"))["card"]
    assert card["trained_on"]["slides"] == ["two_tone.tiff"]
    assert card["trained_on"]["sample_only"] is False
    line = trained.describe_model("student")
    assert line is not None and "trained on 1 slide (two_tone.tiff)" in line and "warning" not in line


def test_saved_work_is_restored_and_resampled(trained: SlideSession) -> None:
    trained.save()
    again = SlideSession(trained.slide_path, project=trained.project)
    restored = again.prepare(WORK_MPP, TILE)
    assert {"weak labels", "teacher mask", "student mask"} <= set(restored)
    assert np.array_equal(again.weak, trained.weak)
    assert again.corrected_pixels == trained.corrected_pixels
    # Reopened at another working resolution: the saved work is resampled, never replaced by empty maps.
    coarse = SlideSession(trained.slide_path, project=trained.project)
    restored = coarse.prepare(1.0, TILE)
    assert coarse.work.shape == (256, 384)
    assert any(r == "weak labels (resampled from 0.5 µm/px)" for r in restored)
    assert (coarse.weak == REGION_TUMOUR).mean() == pytest.approx(
        (trained.weak == REGION_TUMOUR).mean(), abs=0.02
    )
    assert coarse.corrected_pixels > 0


def test_training_refuses_missing_bags(tmp_path: Path) -> None:
    slide = _two_tone_slide(tmp_path / "s.tiff")
    session = SlideSession(slide, project=Project(tmp_path / "p"))
    session.prepare(WORK_MPP, TILE)
    config = schedule("quick", backbone="tiny", teacher_epochs=1, device="cpu")
    with pytest.raises(InputError, match="positive"):
        session.train_job("teacher", config)
    session.mark_all_free()
    with pytest.raises(InputError, match="positive"):
        session.train_job("teacher", config)
    session.set_weak_labels(_paint_halves(session))
    with pytest.raises(InputError, match="train the teacher first"):
        session.train_job("student", config)
    with pytest.raises(InputError, match="prepare"):
        SlideSession(slide, project=Project(tmp_path / "q")).train_job("teacher", config)


def test_session_model_is_predicted_at_its_training_resolution(
    trained: SlideSession, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Regression: a model trained at 0.5 µm/px in the session (= the widget) was predicted by `milkd
    predict` at the 1.0 µm/px default. Now the checkpoint says how to feed it."""
    out = tmp_path / "pred"
    code = main(
        [
            "predict",
            "--run",
            str(trained.project.checkpoints),
            trained.slide_path,
            "--out",
            str(out),
            "--json",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["mpp"] == pytest.approx(WORK_MPP)
    probability, mask, _ = open_prediction(summary["zarr"])
    assert mask.shape == trained.work.shape  # the same map geometry as the session's
    predicted = np.asarray(mask[...]) > 0
    session_mask = trained.mask("student") > 0
    assert 0.2 < session_mask[trained.tissue].mean() < 0.8  # a real mask, not an empty or full one
    assert f1_score(predicted, session_mask) > 0.9
    prob = decode_probability(np.asarray(probability[...]))
    assert np.abs(prob - trained.probabilities["student"]).mean() < 0.1
