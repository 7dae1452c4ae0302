"""Issue 18 case 9: ``milkd train --resume`` with changed arguments is refused and changes nothing on disk."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_milkd.cli import main
from napari_milkd.core.engine.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A finished teacher and an unfinished student (1 of 2 epochs), so a resume has work left."""
    root = tmp_path_factory.mktemp("resume")
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    rows = [("name", "patient", "label")]
    for i in range(16):
        img = rng.integers(60, 140, (24, 24, 3), dtype=np.uint8)
        if i % 2:
            img[4:14, 4:14] = (220, 40, 40)
        Image.fromarray(img).save(root / "images" / f"im{i}.png")
        rows.append((f"im{i}", f"p{i // 2}", "tumour" if i % 2 else "normal"))
    with (root / "labels.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    args = [
        "train", "--images", str(root / "images"), "--labels", str(root / "labels.csv"), "--name-column",
        "name", "--label-column", "label", "--positive", "tumour", "--patient-column", "patient",
        "--out", str(root / "run"), "--backbone", "tiny", "--size", "24", "--batch-size", "4",
        "--teacher-epochs", "1", "--student-epochs", "2", "--switch-every", "0", "--device", "cpu",
    ]  # fmt: skip
    # interrupt (as Ctrl-C) right after the student's first epoch, its checkpoint already on disk
    from napari_milkd.core.engine import train as engine_train

    real = engine_train._run_epochs

    def stop_after_first_student_epoch(**kwargs):
        gen = real(**kwargs)
        try:
            while True:
                event = next(gen)
                yield event
                if kwargs["stage"] == "student" and type(event).__name__ == "EpochEnd":
                    raise KeyboardInterrupt
        except StopIteration as stop:
            return stop.value

    engine_train._run_epochs = stop_after_first_student_epoch
    try:
        assert main(args) == 130
    finally:
        engine_train._run_epochs = real
    state = load_checkpoint(root / "run" / "student.pt")
    assert state["epoch"] == 1 and not state["complete"]
    return root, args


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def _with(args: list[str], flag: str, value: str) -> list[str]:
    args = list(args)
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    return args


@pytest.mark.parametrize(
    ("flag", "value", "words"),
    [
        ("--seed", "1", "--seed"),
        ("--val-fraction", "0.4", "--val-fraction"),
        ("--switch-every", "1", "--switch-every"),
        ("--weight-decay", "0.001", "--weight-decay"),
        ("--lr", "0.001", "--lr"),
        ("--batch-size", "2", "--batch-size"),
        ("--positive", "normal", "--positive"),
        ("--patient-column", "name", "--patient-column"),
    ],
)
def test_resume_with_a_changed_argument_is_refused_and_writes_nothing(
    run: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str], flag: str, value: str, words: str
) -> None:
    root, args = run
    before = _snapshot(root / "run")
    assert main([*_with(args, flag, value), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"milkd: error: cannot resume {root / 'run'}: {words}"), (
        err
    )
    assert "Traceback" not in err
    assert _snapshot(root / "run") == before  # not even config.json


def test_resume_with_other_labels_is_refused(
    run: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    root, args = run
    before = _snapshot(root / "run")
    other = root / "other.csv"
    shutil.copy(root / "labels.csv", other)
    assert main([*_with(args, "--labels", str(other)), "--resume"]) == 2
    assert "--labels" in capsys.readouterr().err
    # the same path, edited content: one label flipped (same bags, same split names)
    original = (root / "labels.csv").read_bytes()
    try:
        (root / "labels.csv").write_bytes(original.replace(b"im2,p1,normal", b"im2,p1,tumour"))
        assert main([*args, "--resume"]) == 2
        err = capsys.readouterr().err
        assert "the content of the labels CSV" in err or "split" in err, err
    finally:
        (root / "labels.csv").write_bytes(original)
    assert _snapshot(root / "run") == before


def test_resume_with_the_same_arguments_finishes(
    run: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    root, args = run
    config_before = (root / "run" / "config.json").read_bytes()
    # the epoch counts may change (a run is extended or cut short); nothing else did
    assert main([*_with(args, "--student-epochs", "3"), "--resume"]) == 0
    state = load_checkpoint(root / "run" / "student.pt")
    assert state["epoch"] == 3 and state["complete"]
    assert (root / "run" / "config.json").read_bytes() == config_before
