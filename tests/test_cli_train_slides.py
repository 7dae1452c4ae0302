"""``milkd train --slides`` / ``milkd evaluate --slides``: training from annotated whole slides, scoring on
slides with ground truth (synthetic two-tone slides; a GlaS mosaic when ../shared is present)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_milkd.cli import main
from napari_milkd.commands import train as train_command
from napari_milkd.core.engine.checkpoint import load_checkpoint
from napari_milkd.core.engine.datasets import BagSet
from napari_milkd.core.session import cohort_training
from napari_milkd.core.session.cohort_evaluation import score_masks
from slide_images import two_tone_slide

#: Level-0 µm/px of the generated slides; training works at twice that, with 32-px tiles.
SLIDE_MPP = 0.5
WORK_MPP = 1.0
TILE = 32
#: Generated slide size (level 0) and the column where purple ("tumour") turns pink.
H, W, SPLIT = 512, 768, 384

#: Tiny and short (about 30 s on 2 CPU cores for three slides); 4 teacher epochs, as 2 do not always
#: leave the all-tumour start on these ~70 bags per slide.
TRAIN = ["--backbone", "tiny", "--tile", str(TILE), "--batch-size", "8", "--teacher-epochs", "4",
         "--student-epochs", "2", "--switch-every", "1", "--device", "cpu",
         "--work-mpp", str(WORK_MPP)]  # fmt: skip


def _two_tone(path: Path, seed: int, mpp: float | None = SLIDE_MPP) -> Path:
    """A slide with a purple ("tumour") left half and a pink right half of tissue on white glass."""
    return two_tone_slide(path, seed, mpp)


def _feature(x0: int, y0: int, x1: int, y1: int, name: str) -> dict:
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"objectType": "annotation", "classification": {"name": name, "color": [200, 0, 0]}},
    }


def _geojson(path: Path, negative: str = "Stroma", extra: tuple[dict, ...] = ()) -> Path:
    """QuPath-style rectangles: "Tumor" over the purple half, ``negative`` over the pink half."""
    features = [
        _feature(40, 40, SPLIT - 8, H - 40, "Tumor"),
        _feature(SPLIT + 8, 40, W - 40, H - 40, negative),
        *extra,
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def _manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three two-tone slides with annotations (one marked split=val, one with Normal instead of Stroma),
    a truth label image for one and tumour polygons for another, and both manifests."""
    root = tmp_path_factory.mktemp("cohort")
    for k in range(3):
        _two_tone(root / f"s{k}.tiff", seed=k)
    _geojson(root / "s0.geojson")
    _geojson(root / "s1.geojson", negative="Normal")
    _geojson(root / "s2.geojson")
    truth = np.zeros((H // 4, W // 4), np.uint8)
    truth[8 : (H - 32) // 4, 8 : SPLIT // 4] = 255
    Image.fromarray(truth).save(root / "s0_truth.png")
    (root / "s2_truth.geojson").write_text(
        json.dumps({"type": "FeatureCollection", "features": [_feature(32, 32, SPLIT, H - 32, "Tumor")]})
    )
    _manifest(
        root / "train.csv",
        [
            {"slide": "s0.tiff", "annotations": "s0.geojson", "split": ""},
            {"slide": "s1.tiff", "annotations": "s1.geojson", "split": "train"},
            {"slide": "s2.tiff", "annotations": "s2.geojson", "split": "val"},
        ],
    )
    _manifest(
        root / "truth.csv",
        [
            {"slide": "s0.tiff", "truth": "s0_truth.png", "truth_downsample": "4", "truth_annotations": ""},
            {
                "slide": "s2.tiff",
                "truth": "",
                "truth_downsample": "",
                "truth_annotations": "s2_truth.geojson",
            },
        ],
    )
    return root


@pytest.fixture(scope="module")
def trained(cohort: Path) -> Path:
    run = cohort / "run"
    code = main(
        ["train", "--slides", str(cohort / "train.csv"), "--out", str(run), "--preset", "quick", *TRAIN]
    )
    assert code == 0
    return run


def test_train_slides_writes_the_run(trained: Path) -> None:
    for name in ("teacher.pt", "student.pt", "config.json", "history.jsonl"):
        assert (trained / name).is_file()
    config = json.loads((trained / "config.json").read_text())
    assert config["preset"] == "quick" and config["config"]["backbone"] == "tiny"  # the flag overrides
    assert config["spec"]["mpp"] == WORK_MPP and config["spec"]["tile"] == TILE
    data = config["data"]
    assert data["val"] == ["s2.tiff"] and data["train"] == ["s0.tiff", "s1.tiff"]
    assert data["split"] == "the manifest's split column"
    assert all(s["positive_tiles"] > 5 and s["negative_tiles"] > 5 for s in data["per_slide"])
    for name in ("teacher.pt", "student.pt"):
        state = load_checkpoint(trained / name)
        assert state["spec"]["mpp"] == WORK_MPP and state["spec"]["tile"] == TILE
        card = state["card"]
        assert card["trained_on"]["kind"] == "slides"
        assert card["trained_on"]["slides"] == ["s0.tiff", "s1.tiff", "s2.tiff"]
        assert card["preset"] == "quick"


def test_predict_then_evaluate_slides(
    cohort: Path, trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The run predicts at its own µm/px; evaluate prints one JSON object with a Dice above chance."""
    capsys.readouterr()
    argv = ["predict", "--run", str(trained), str(cohort / "s0.tiff"), "--out", str(cohort / "pred")]
    assert main([*argv, "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mpp"] == WORK_MPP
    argv = ["evaluate", "--slides", str(cohort / "truth.csv"), "--run", str(trained), "--device", "cpu"]
    assert main([*argv, "--json"]) == 0
    out = capsys.readouterr().out
    assert out.strip().count("\n") == 0
    result = json.loads(out)
    assert set(result) == {"checkpoint", "work_mpp", "slides", "overall", "warnings"}
    assert result["checkpoint"].endswith("student.pt") and result["work_mpp"] == WORK_MPP
    assert [s["slide"] for s in result["slides"]] == ["s0.tiff", "s2.tiff"]
    keys = {"slide", "dice", "iou", "hd95_um", "truth_px", "predicted_px", "map_um", "shape"}
    for s in result["slides"]:
        assert set(s) == keys and s["shape"] == [H // 2, W // 2] and s["map_um"] == pytest.approx(WORK_MPP)
        assert s["truth_px"] > 0
    overall = result["overall"]
    assert set(overall) == {"dice", "iou", "hd95_um", "truth_px", "predicted_px", "n_slides"}
    assert overall["n_slides"] == 2
    # Chance: tumour is half the tissue, so calling all tissue tumour gives Dice ≈ 0.67 (what an untrained
    # model does here); trained, it is about 0.9.
    assert overall["dice"] > 0.75, overall
    assert 0 < overall["iou"] <= overall["dice"]
    assert overall["hd95_um"] is not None and overall["hd95_um"] >= 0
    assert main(argv) == 0  # the text table
    table = capsys.readouterr().out.splitlines()
    assert table[1].split()[:3] == ["slide", "dice", "iou"] and table[-1].startswith("overall")


def test_resume_keeps_the_run_and_refuses_other_data(
    cohort: Path, trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (trained / "config.json").read_text()
    argv = [
        "train",
        "--slides",
        str(cohort / "train.csv"),
        "--out",
        str(trained),
        "--preset",
        "quick",
        *TRAIN,
    ]
    assert main(argv) == 2  # not without --resume
    assert "already holds a run" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0  # complete: nothing to train, config kept
    assert (trained / "config.json").read_text() == before
    assert main([*argv, "--resume", "--max-bags-per-slide", "7"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("milkd: error: cannot resume") and "--max-bags-per-slide" in err[-1]
    assert (trained / "config.json").read_text() == before


def test_resume_continues_an_interrupted_run(cohort: Path, tmp_path: Path) -> None:
    """A run cut after the teacher (student.pt removed) is continued by --resume: the finished teacher is
    kept, the student is trained."""
    run = tmp_path / "run"
    argv = ["train", "--slides", str(cohort / "train.csv"), "--out", str(run), *TRAIN]
    argv[argv.index("--student-epochs") + 1] = "1"
    argv[argv.index("--teacher-epochs") + 1] = "1"
    assert main(argv) == 0
    teacher = (run / "teacher.pt").read_bytes()
    (run / "student.pt").unlink()
    (run / "history.jsonl").write_text((run / "history.jsonl").read_text().splitlines()[0] + "\n")
    assert main([*argv, "--resume"]) == 0
    assert (run / "teacher.pt").read_bytes() == teacher
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [(h["stage"], h["epoch"]) for h in history] == [("teacher", 1), ("student", 1)]
    assert load_checkpoint(run / "student.pt")["card"]["trained_on"]["kind"] == "slides"


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("milkd: error: "), err
    return err


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"path": "s0.tiff", "annotations": "s0.geojson"}], "no column 'slide'"),
        ([{"slide": "gone.tiff", "annotations": "s0.geojson"}], "slide not found"),
        ([{"slide": "s0.tiff", "annotations": "gone.geojson"}], "annotations not found"),
        ([{"slide": "s0.tiff", "annotations": "s0.geojson", "split": "test"}], "unknown split 'test'"),
        ([{"slide": "s0.tiff", "annotations": ""}], "has no annotations"),
        ([{"slide": "s0.tiff", "annotations": "s0.geojson", "label": "maybe"}], "unknown label 'maybe'"),
        ([{"slide": "s0.tiff", "annotations": "s0.geojson", "mpp": "-1"}], "mpp must be a positive number"),
        (
            [
                {"slide": "s0.tiff", "annotations": "s0.geojson"},
                {"slide": "./s0.tiff", "annotations": "s1.geojson"},
            ],
            "already listed on line 2",
        ),
        ([{"slide": "s0.tiff", "annotations": "s0.geojson", "label": "negative"}], "has tumour regions"),
    ],
)
def test_bad_manifests_are_one_line_errors(
    cohort: Path, tmp_path: Path, rows: list[dict[str, str]], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = _manifest(cohort / f"bad_{tmp_path.name}.csv", rows)
    err = _error(["train", "--slides", str(manifest), "--out", str(tmp_path / "run"), *TRAIN], capsys)
    assert message in err
    assert not (tmp_path / "run").exists()


def test_a_slide_without_mpp_needs_the_mpp_column(
    cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    slide = _two_tone(tmp_path / "bare.tiff", seed=5, mpp=None)
    _geojson(tmp_path / "bare.geojson")
    manifest = _manifest(tmp_path / "m.csv", [{"slide": slide.name, "annotations": "bare.geojson"}])
    err = _error(["train", "--slides", str(manifest), "--out", str(tmp_path / "run"), *TRAIN], capsys)
    assert "bare.tiff does not record its µm/px" in err and "mpp column" in err
    # Given there, the slide gives bags; a value contradicting a file's own is warned about, not used.
    from napari_milkd.core.progress import drain
    from napari_milkd.core.session.cohort_manifest import read_training_manifest

    _manifest(
        tmp_path / "m.csv",
        [
            {"slide": slide.name, "annotations": "bare.geojson", "mpp": str(SLIDE_MPP)},
            {"slide": str(cohort / "s0.tiff"), "annotations": str(cohort / "s0.geojson"), "mpp": "0.9"},
        ],
    )
    rows = read_training_manifest(tmp_path / "m.csv")
    per_slide = drain(cohort_training.cohort_bags(rows, work_mpp=WORK_MPP, tile=TILE, max_bags_per_slide=20))
    assert [s.n_used for s in per_slide] == [20, 20]
    assert per_slide[0].n_positive == per_slide[1].n_positive  # the same geometry: 0.5 µm/px used for both
    assert any("not used for this one" in w for w in per_slide[1].warnings)


def test_mode_flags_are_exclusive(cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    slides = ["--slides", str(cohort / "train.csv"), "--out", str(tmp_path / "r")]
    assert "not allowed with argument" in _error(["train", *slides, "--images", str(tmp_path)], capsys)
    assert "belong to --images" in _error(["train", *slides, "--labels", "x.csv"], capsys)
    assert "--images needs --labels" in _error(["train", "--images", str(tmp_path), "--out", "r"], capsys)
    folder = ["--images", str(tmp_path), "--labels", "l.csv", "--name-column", "n", "--label-column", "l"]
    err = _error(["train", *folder, "--positive", "t", "--out", "r", "--work-mpp", "1"], capsys)
    assert "belong to --slides" in err
    assert "one of the arguments --images --slides is required" in _error(["train", "--out", "r"], capsys)


def test_evaluate_manifest_errors(
    cohort: Path, trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["evaluate", "--run", str(trained), "--device", "cpu", "--slides"]
    both = {"slide": str(cohort / "s0.tiff"), "truth": str(cohort / "s0_truth.png")}
    both["truth_annotations"] = str(cohort / "s2_truth.geojson")
    err = _error([*argv, str(_manifest(tmp_path / "a.csv", [both]))], capsys)
    assert "exactly one of the columns truth" in err
    wrong = {"slide": str(cohort / "s0.tiff"), "truth": str(cohort / "s0_truth.png"), "truth_downsample": "2"}
    err = _error([*argv, str(_manifest(tmp_path / "b.csv", [wrong]))], capsys)
    assert "check truth_downsample" in err
    err = _error(["evaluate", "--run", str(trained), "--images", str(tmp_path), "--labels", "l.csv"], capsys)
    assert "--images needs" in err and "--masks" in err


def test_negative_slides_and_class_map(cohort: Path, tmp_path: Path) -> None:
    """A slide labelled negative gives only negative bags (no annotations needed); a class map turns an
    otherwise ignored class into tumour-free; unknown classes never become negative bags."""
    from napari_milkd.core.progress import drain
    from napari_milkd.core.session.cohort_manifest import read_training_manifest

    _geojson(tmp_path / "odd.geojson", negative="Mucosa")  # Mucosa: unknown class, ignored
    _manifest(
        tmp_path / "m.csv",
        [
            {"slide": str(cohort / "s0.tiff"), "annotations": str(tmp_path / "odd.geojson"), "label": ""},
            {"slide": str(cohort / "s1.tiff"), "annotations": "", "label": "tumour-free"},
        ],
    )
    rows = read_training_manifest(tmp_path / "m.csv")
    assert [r.negative for r in rows] == [False, True]
    per_slide = drain(cohort_training.cohort_bags(rows, work_mpp=WORK_MPP, tile=TILE))
    assert per_slide[0].n_positive > 0 and per_slide[0].n_negative == 0
    assert any("Mucosa" in w for w in per_slide[0].warnings)
    assert per_slide[1].n_positive == 0 and per_slide[1].n_negative > per_slide[0].n_positive
    (tmp_path / "map.json").write_text(json.dumps({"Mucosa": "negative"}))
    from napari_milkd.core.annotations.io import class_map_from

    mapped = drain(
        cohort_training.cohort_bags(
            rows[:1], work_mpp=WORK_MPP, tile=TILE, class_map=class_map_from(tmp_path / "map.json")
        )
    )
    assert mapped[0].n_negative > 0


def test_balancing_caps_each_slide_and_keeps_its_proportion() -> None:
    rng = np.random.default_rng(0)
    labels = np.array([1] * 30 + [0] * 90)
    chosen = cohort_training._capped(labels, 40, rng)
    assert len(chosen) == 40 and len(set(chosen.tolist())) == 40
    assert labels[chosen].sum() == 10  # a quarter positive, as in the slide
    assert len(cohort_training._capped(labels, 500, rng)) == 120
    assert train_command.DEFAULT_MAX_BAGS_PER_SLIDE == cohort_training.DEFAULT_MAX_BAGS_PER_SLIDE


def _bags(n: int, group: str, label: int) -> BagSet:
    return BagSet.from_arrays(
        np.zeros((n, 8, 8, 3), np.uint8),
        [label] * n,
        groups=[group] * n,
        names=[f"{group}{i}" for i in range(n)],
    )


def test_split_by_slide_rules() -> None:
    from napari_milkd.core.session.cohort_manifest import TrainingSlide

    def slide(name: str, split: str | None = None) -> TrainingSlide:
        return TrainingSlide(Path(name), None, False, None, split, 2)

    def per(name: str, split: str | None = None) -> cohort_training.SlideBags:
        mixed = BagSet.concat([_bags(6, name, 1), _bags(6, name, 0)])
        return cohort_training.SlideBags(slide(name, split), mixed, 6, 6)

    one = cohort_training.split_by_slide([per("a")], 0.25, 0)
    assert one.val is not None and len(one.train) + len(one.val) == 12 and "one slide only" in one.notes[0]
    four = cohort_training.split_by_slide([per("a"), per("b"), per("c"), per("d", "train")], 0.25, 0)
    assert "d" in four.train_slides and len(four.val_slides) == 1
    assert not set(four.val_slides) & set(four.train_slides)
    assert four.val is not None and {str(g) for g in four.val.groups} == set(four.val_slides)
    none = cohort_training.split_by_slide([per("a", "train"), per("b", "train")], 0.25, 0)
    assert none.val is None and none.val_slides == []
    explicit = cohort_training.split_by_slide([per("a", "val"), per("b")], 0.25, 0)
    assert explicit.val_slides == ["a"] and explicit.train_slides == ["b"]


def test_concat_keeps_groups_and_refuses_mixed_sizes() -> None:
    joined = BagSet.concat([_bags(2, "a", 1), _bags(3, "b", 0)])
    assert len(joined) == 5 and joined.n_pos == 2 and list(joined.groups) == ["a", "a", "b", "b", "b"]
    other = BagSet.from_arrays(np.zeros((1, 4, 4, 3), np.uint8), [0])
    with pytest.raises(Exception, match="different image sizes"):
        BagSet.concat([joined, other])


def test_score_masks_units() -> None:
    truth = np.zeros((40, 40), bool)
    truth[10:30, 10:30] = True
    shifted = np.roll(truth, 4, axis=1)
    score = score_masks(shifted, truth, map_um=2.0)
    assert score.dice == pytest.approx(2 * 16 * 20 / 800)
    assert score.hd95_um == pytest.approx(8.0)  # 4 px of 2 µm
    empty = score_masks(np.zeros_like(truth), truth, map_um=2.0)
    assert empty.dice == 0 and empty.hd95_um is None


GLAS = Path(__file__).resolve().parents[1] / ".." / "shared"


def test_glas_mosaic_train_and_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Real tissue: a 12-image GlaS mosaic (Tumor/Normal rectangles, true gland mask) trains and scores
    (about 10 s on 2 CPU cores; skipped without ../shared)."""
    tool, data = GLAS / "tools" / "glas_mosaic.py", GLAS / "data" / "glas_dev"
    if not (tool.is_file() and data.is_dir()):
        pytest.skip(f"../shared (GlaS and glas_mosaic.py) not available: {GLAS}")
    with (data / "grade_train.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    by_grade: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_grade.setdefault(row["grade_glas"].strip(), []).append(row)
    chosen = by_grade["malignant"][:6] + by_grade["benign"][:6]
    with (tmp_path / "labels.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, list(rows[0]))
        writer.writeheader()
        writer.writerows(chosen)
    subprocess.run(
        [sys.executable, str(tool), "--images", str(data / "images"), "--masks", str(data / "masks"),
         "--labels", str(tmp_path / "labels.csv"), "--out", str(tmp_path / "mosaic"), "--cols", "4"],
        check=True, capture_output=True,
    )  # fmt: skip
    mosaic = tmp_path / "mosaic"
    _manifest(
        tmp_path / "train.csv", [{"slide": "mosaic/mosaic.tif", "annotations": "mosaic/weak_labels.geojson"}]
    )
    _manifest(tmp_path / "truth.csv", [{"slide": "mosaic/mosaic.tif", "truth": "mosaic/truth.png"}])
    run = tmp_path / "run"
    argv = ["train", "--slides", str(tmp_path / "train.csv"), "--out", str(run), "--backbone", "tiny",
            "--tile", "64", "--work-mpp", "2.5", "--batch-size", "16", "--teacher-epochs", "2",
            "--student-epochs", "2", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    assert "one slide only" in capsys.readouterr().err
    argv = [
        "evaluate",
        "--slides",
        str(tmp_path / "truth.csv"),
        "--run",
        str(run),
        "--device",
        "cpu",
        "--json",
    ]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    (score,) = result["slides"]
    assert score["truth_px"] > 0 and 0 <= score["dice"] <= 1 and result["work_mpp"] == 2.5
    assert mosaic.is_dir()
