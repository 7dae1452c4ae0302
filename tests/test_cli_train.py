"""``milkd train`` / ``milkd evaluate`` end to end on a synthetic folder (and on GlaS when present)."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_milkd.cli import main

SHARED_GLAS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "glas_dev"
KEYS = {"f1_pos", "iou_pos", "hd_pos", "hd95_pos", "f1_neg", "n_pos", "n_neg"}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """12 images (red squares on noise in the positive ones), masks, and labels.csv grouped by patient."""
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rows = [("name", "patient", "label")]
    for i in range(12):
        img = rng.integers(60, 140, (40, 36, 3), dtype=np.uint8)
        mask = np.zeros((40, 36), np.uint8)
        if i % 2:
            mask[8:24, 10:26] = 255
            img[mask > 0] = (220, 40, 40)
        Image.fromarray(img).save(tmp_path / "images" / f"im{i}.png")
        Image.fromarray(mask).save(tmp_path / "masks" / f"im{i}.png")
        rows.append((f"im{i}", f"p{i // 2}", "tumour" if i % 2 else "normal"))
    with (tmp_path / "labels.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return tmp_path


def data_args(root: Path, labels: str = "labels.csv", positive: str = "tumour") -> list[str]:
    return [
        "--images", str(root / "images"), "--labels", str(root / labels), "--name-column", "name",
        "--label-column", "label", "--positive", positive,
    ]  # fmt: skip


TRAIN = ["--backbone", "tiny", "--size", "32", "--batch-size", "4", "--teacher-epochs", "2",
         "--student-epochs", "2", "--switch-every", "1", "--device", "cpu"]  # fmt: skip


def test_train_then_evaluate_json(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = folder / "run"
    assert main(["train", *data_args(folder), "--patient-column", "patient", "--out", str(run), *TRAIN]) == 0
    for name in ("teacher.pt", "student.pt", "config.json", "history.jsonl"):
        assert (run / name).is_file()
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [(h["stage"], h["epoch"]) for h in history] == [
        ("teacher", 1),
        ("teacher", 2),
        ("student", 1),
        ("student", 2),
    ]
    assert history[2]["switched_to_epoch"] == 1
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["backbone"] == "tiny"
    patients = {n: f"p{int(n[2:]) // 2}" for n in config["data"]["train"] + config["data"]["val"]}
    val_patients = {patients[n] for n in config["data"]["val"]}
    assert not val_patients & {patients[n] for n in config["data"]["train"]}
    capsys.readouterr()
    assert (
        main(["evaluate", "--run", str(run), *data_args(folder), "--masks", str(folder / "masks"), "--json"])
        == 0
    )
    out = capsys.readouterr().out
    result = json.loads(out)  # exactly one JSON object
    assert out.strip().count("\n") == 0
    assert set(result) == {"teacher", "student"}
    for model in result.values():
        assert set(model) == KEYS and model["n_pos"] == 6 and model["n_neg"] == 6
        assert 0 <= model["f1_pos"] <= 1 and 0 <= model["f1_neg"] <= 1


def _load(path: Path) -> dict:
    from napari_milkd.core.engine.checkpoint import load_checkpoint

    return load_checkpoint(path)


def _slide(path: Path, mpp: float) -> Path:
    """A 384×512 generated slide: textured 'tissue' on white glass."""
    from napari_milkd.core.slides.sample import write_pyramidal_tiff

    rng = np.random.default_rng(0)
    image = np.full((384, 512, 3), 240, np.uint8)
    image[60:320, 80:440] = rng.integers(60, 200, (260, 360, 3), dtype=np.uint8)
    write_pyramidal_tiff(path, [image, image[::4, ::4].copy()], mpp=mpp, tile=128)
    return path


def test_image_mpp_travels_to_predict(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--image-mpp` is recorded in both checkpoints; `milkd predict` runs the model there, unasked."""
    run = folder / "run"
    assert main(["train", *data_args(folder), "--out", str(run), *TRAIN, "--image-mpp", "0.5"]) == 0
    expected = {"mpp": 0.5, "tile": 32, "overlap": 4, "backbone": "tiny"}
    for name in ("teacher.pt", "student.pt"):
        spec = _load(run / name)["spec"]
        assert {k: spec[k] for k in expected} == expected
    assert json.loads((run / "config.json").read_text())["spec"]["mpp"] == 0.5
    slide = _slide(folder / "slide.tiff", mpp=0.25)
    capsys.readouterr()
    argv = ["predict", "--run", str(run), str(slide), "--out", str(folder / "pred"), "--device", "cpu"]
    assert main([*argv, "--json", "--batch-size", "64"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["mpp"] == 0.5
    assert main([*argv, "--mpp", "1.0"]) == 2  # contradicts the checkpoint
    assert "trained at 0.5 µm/px but --mpp 1 was given" in capsys.readouterr().err


def test_without_image_mpp_predict_asks(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = folder / "run"
    assert main(["train", *data_args(folder), "--out", str(run), *TRAIN]) == 0
    assert _load(run / "student.pt")["spec"]["mpp"] is None
    capsys.readouterr()
    slide = _slide(folder / "slide.tiff", mpp=0.25)
    assert (
        main(["predict", "--run", str(run), str(slide), "--out", str(folder / "pred"), "--device", "cpu"])
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("milkd: error: ") and err.count("\n") == 1
    assert "student.pt does not record the µm/px it was trained at; pass --mpp UM" in err
    assert main(["train", *data_args(folder), "--out", str(folder / "r2"), *TRAIN, "--image-mpp", "0"]) == 2
    assert "--image-mpp must be positive" in capsys.readouterr().err


def test_explicit_flags_override_the_preset(folder: Path) -> None:
    run = folder / "run"
    small = ["--backbone", "tiny", "--size", "32", "--batch-size", "4", "--device", "cpu"]
    assert main(["train", *data_args(folder), "--out", str(run), "--preset", "paper", *small,
                 "--teacher-epochs", "1", "--lr", "1e-3"]) == 0  # fmt: skip
    meta = json.loads((run / "config.json").read_text())
    config = meta["config"]
    assert meta["preset"] == "paper"
    assert (config["backbone"], config["size"], config["batch_size"], config["lr"]) == ("tiny", 32, 4, 1e-3)
    assert config["weight_decay"] == 5e-5  # not given: the paper's
    # only the teacher's epochs given: the student gets twice as many, reversal every third of them
    assert (config["teacher_epochs"], config["student_epochs"], config["switch_every"]) == (1, 2, 1)
    assert config["switch_from"] == 0  # the paper's epoch-60 start would never come in a 2-epoch run
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["stage"] for h in history] == ["teacher", "student", "student"]
    assert _load(run / "student.pt")["config"] == config


def test_ablation_flags_reach_the_config() -> None:
    from napari_milkd.cli import build_parser
    from napari_milkd.commands.train import _SCHEDULE_FLAGS
    from napari_milkd.core.engine.presets import schedule

    args = build_parser().parse_args(
        ["train", "--images", "i", "--labels", "l.csv", "--name-column", "n", "--label-column", "c",
         "--positive", "p", "--out", "o", "--teacher-loss", "gm_bce", "--ce-weight", "0",
         "--ce-target", "soft", "--student-init", "teacher", "--fusion-weights", "0.2", "0.3", "0.5",
         "--no-augment", "--stain-jitter", "0.05"]
    )  # fmt: skip
    c = schedule("quick", **{f: getattr(args, f) for f in _SCHEDULE_FLAGS})
    assert (c.teacher_loss, c.ce_weight, c.ce_target, c.student_init, c.augment) == (
        "gm_bce", 0.0, "soft", "teacher", False
    )  # fmt: skip
    assert c.fusion_weights == (0.2, 0.3, 0.5) and c.stain_jitter == 0.05


def test_default_preset_is_standard() -> None:
    from napari_milkd.cli import build_parser
    from napari_milkd.commands.train import _SCHEDULE_FLAGS
    from napari_milkd.core.engine.config import TrainConfig
    from napari_milkd.core.engine.presets import schedule

    args = build_parser().parse_args(
        ["train", "--images", "i", "--labels", "l.csv", "--name-column", "n", "--label-column", "c",
         "--positive", "p", "--out", "o"]
    )  # fmt: skip
    assert args.preset == "standard"
    assert all(getattr(args, flag) is None for flag in _SCHEDULE_FLAGS)  # nothing overrides the preset
    standard = schedule(args.preset, **{f: getattr(args, f) for f in _SCHEDULE_FLAGS})
    assert standard == replace(TrainConfig(), student_init="teacher")


def test_resume_and_refuse_overwrite(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = folder / "run"
    args = ["train", *data_args(folder), "--out", str(run), *TRAIN]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    before = (run / "history.jsonl").read_text()
    assert main([*args, "--resume"]) == 0  # complete run: nothing left to train, history unchanged
    assert (run / "history.jsonl").read_text() == before


def test_full_supervision_run_reports_student(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = folder / "full"
    masks = ["--masks", str(folder / "masks")]
    assert (
        main(["train", *data_args(folder), *masks, "--out", str(run), "--supervision", "full", *TRAIN]) == 0
    )
    assert (run / "student.pt").is_file() and not (run / "teacher.pt").exists()
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), *data_args(folder), *masks, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["teacher"] is None and set(result["student"]) == KEYS


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--backbone", "resnet"], "unknown backbone"),
        (["--net", "cam"], "unknown MIL net 'cam'"),
        (["--teacher-loss", "bce"], "teacher loss must be one of dice, gm_bce"),
        (["--ce-target", "fuzzy"], "ce target must be one of hard, soft"),
        (["--label-column", "grade"], "no column 'grade'"),
        (["--positive", "cancer"], "no positive bag"),
        (["--weights", "/nonexistent/vgg16.pth"], "weights file not found"),
        (["--supervision", "full"], "needs --masks"),
        (["--images", "/nonexistent/images"], "images folder not found"),
    ],
)
def test_errors_are_one_line_exit_2(
    folder: Path, capsys: pytest.CaptureFixture[str], change: list[str], message: str
) -> None:
    args = ["train", *data_args(folder), "--out", str(folder / "run"), *TRAIN]
    for i in range(0, len(change), 2):
        pos = args.index(change[i]) if change[i] in args else None
        if pos is None:
            args += change[i : i + 2]
        else:
            args[pos + 1] = change[i + 1]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("milkd: error: ") and message in err and err.count("\n") == 1


def test_mask_size_mismatch_and_unreadable_weights(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(folder / "masks" / "im3.png")
    args = ["train", *data_args(folder), "--out", str(folder / "run"), *TRAIN]
    assert main([*args, "--masks", str(folder / "masks")]) == 2
    assert "im3.png is 5x5 but its image is 36x40" in capsys.readouterr().err
    bad = folder / "bad.pth"
    bad.write_bytes(b"\x00garbage")
    vgg = [a if a != "tiny" else "vgg16" for a in args]
    assert main([*vgg, "--weights", str(bad)]) == 2
    assert "cannot read weights file" in capsys.readouterr().err


def test_glas_end_to_end_short(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not (SHARED_GLAS / "grade_train.csv").is_file():
        pytest.skip("../shared/data/glas_dev is not available")
    with (SHARED_GLAS / "grade_train.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    keep = [r for r in rows if r["patient_id"] in {"3", "4", "6", "10"}][:16]
    with (tmp_path / "sub.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(keep)
    data = [
        "--images", str(SHARED_GLAS / "images"), "--labels", str(tmp_path / "sub.csv"),
        "--name-column", "name",
        "--label-column", "grade_glas", "--positive", "malignant", "--masks", str(SHARED_GLAS / "masks"),
    ]  # fmt: skip
    run = tmp_path / "run"
    short = [
        "--backbone",
        "tiny",
        "--size",
        "64",
        "--teacher-epochs",
        "1",
        "--student-epochs",
        "1",
        "--device",
        "cpu",
    ]
    assert main(["train", *data, "--patient-column", "patient_id", "--out", str(run), *short]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), *data, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["student"]["n_pos"] + result["student"]["n_neg"] == len(keep)


def test_info_prints_the_model_card_of_a_run_and_a_checkpoint(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 15 case 7: ``milkd info RUN|MODEL.pt`` (``--json``) prints what the model was trained on."""
    run = folder / "run"
    args = [
        "train",
        *data_args(folder),
        "--patient-column",
        "patient",
        "--out",
        str(run),
        "--preset",
        "quick",
    ]
    assert main([*args, *TRAIN, "--image-mpp", "0.5"]) == 0
    capsys.readouterr()
    assert main(["info", str(run)]) == 0
    out = capsys.readouterr().out
    assert out.count("model:") == 2 and "stage:        teacher" in out and "stage:        student" in out
    assert "trained on:   image folder images with labels labels.csv" in out
    assert "positive = tumour; negative = normal" in out and "preset:       quick" in out
    assert "tiny, 32-px tiles at 0.5 µm/px" in out and "epochs:       2/2" in out
    assert main(["info", str(run / "student.pt"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    card = info["card"]
    assert info["sample_only"] is False and info["summary"].startswith("student model (tiny")
    assert card["trained_on"]["images"] == str((folder / "images").resolve())
    assert card["trained_on"]["patient_column"] == "patient" and card["classes"]["negative"] == ["normal"]
    assert card["validation"]["best_epoch"] >= 1 and card["created"] and card["teacher"]["stage"] == "teacher"
    assert main(["info", str(run), "--json"]) == 0
    both = json.loads(capsys.readouterr().out)
    assert both["run"] == str(run) and set(both["models"]) == {"teacher", "student"}


def test_info_warns_about_a_sample_only_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from napari_milkd.core.engine.card import slide_provenance
    from napari_milkd.core.engine.checkpoint import save_checkpoint
    from napari_milkd.core.engine.config import TrainConfig
    from napari_milkd.core.engine.models import build_model

    config = TrainConfig(backbone="tiny", size=32)
    model = build_model("tiny", "random")
    card = {**slide_provenance(["sample.tiff"], sample_only=True), "stage": "teacher"}
    save_checkpoint(tmp_path / "demo.pt", {"stage": "teacher", "backbone": "tiny", "config": config.to_dict(),
                                           "model": model.state_dict(), "card": card})  # fmt: skip
    assert main(["info", str(tmp_path / "demo.pt")]) == 0
    captured = capsys.readouterr()
    assert "trained only on the synthetic sample slide" in captured.out
    assert captured.err.startswith("milkd: warning: demo.pt: trained only on the synthetic sample slide")
    assert torch.load(tmp_path / "demo.pt", weights_only=True)["card"]["trained_on"]["sample_only"] is True
