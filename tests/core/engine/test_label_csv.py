"""Issue 18 case 5: label CSVs are read strictly; every problem is one line naming file and line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_milkd.cli import main
from napari_milkd.core.engine.datasets import load_image_folder
from napari_milkd.core.errors import InputError


def _images(root: Path, n: int = 6) -> Path:
    folder = root / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    return folder


def _load(root: Path, text: str | bytes, patient: str | None = None):
    csv_path = root / "labels.csv"
    if isinstance(text, str):
        csv_path.write_text(text, encoding="utf-8")
    else:
        csv_path.write_bytes(text)
    return load_image_folder(root / "images", csv_path, "name", "label", "tumour", 16, patient_column=patient)


def test_empty_label_cell_is_skipped_and_said_not_a_negative_bag(tmp_path: Path) -> None:
    _images(tmp_path)
    bags = _load(tmp_path, "name,label\nim0,normal\nim1,tumour\nim2,\nim3,tumour\nim4,normal\n")
    assert "im2" not in bags.names and "im2" in bags.skipped
    assert bags.n_neg == 2 and bags.n_pos == 2
    assert any("empty label cell" in note and "line 4: im2" in note for note in bags.notes), bags.notes


def test_exact_duplicates_are_merged_conflicts_refused(tmp_path: Path) -> None:
    _images(tmp_path)
    bags = _load(
        tmp_path, "name,label\nim0,normal\nim1,tumour\nim1,tumour\nim2,normal\nim3.png,tumour\nim3,tumour\n"
    )
    assert bags.names.count("im1") == 1 and bags.names.count("im3") == 1 and len(bags) == 4
    assert any("2 exact duplicate rows merged" in note for note in bags.notes), bags.notes
    with pytest.raises(InputError) as info:
        _load(tmp_path, "name,label\nim0,normal\nim1,tumour\nim1,normal\n")
    message = str(info.value)
    assert "\n" not in message and "labels.csv" in message and "im1" in message and "line 3" in message
    # the same image under two spellings, with different labels
    with pytest.raises(InputError, match=r"im3\.png"):
        _load(tmp_path, "name,label\nim0,normal\nim1,tumour\nim3,tumour\nim3.png,normal\n")


def test_conflicting_patients_would_leak_across_the_split(tmp_path: Path) -> None:
    _images(tmp_path)
    text = "name,patient,label\nim0,a,normal\nim1,b,tumour\nim2,c,normal\nim1,d,tumour\n"
    with pytest.raises(InputError, match="different patients"):
        _load(tmp_path, text, patient="patient")


def test_latin1_file_is_one_line_naming_file_line_and_encoding(tmp_path: Path) -> None:
    _images(tmp_path)
    text = "name,label\nim0,normal\nim1,tumour\nim2,bénin\n"
    with pytest.raises(InputError) as info:
        _load(tmp_path, text.encode("latin-1"))
    message = str(info.value)
    assert "\n" not in message
    assert "labels.csv" in message and "line 4" in message and "UTF-8" in message and "Latin-1" in message
    # the same text in UTF-8 loads (and 'bénin' is a negative bag)
    assert len(_load(tmp_path, text)) == 3


def test_field_over_the_csv_limit_is_one_line(tmp_path: Path) -> None:
    _images(tmp_path)
    text = "name,label\nim0,normal\nim1,tumour\nim2," + "x" * 131_073 + "\n"
    with pytest.raises(InputError) as info:
        _load(tmp_path, text)
    message = str(info.value)
    assert "\n" not in message and "labels.csv, line 4" in message and "field limit" in message


def test_label_table_reports_lines(tmp_path: Path) -> None:
    from napari_milkd.core.engine.datasets import read_label_table

    path = tmp_path / "l.csv"
    path.write_text("name,label\n,tumour\nim0,\nim1,Tumour\nim1,tumour\n", encoding="utf-8")
    table = read_label_table(path, "name", "label", "tumour")
    assert table.rows == [("im1", 1, None)] and table.lines == [4]
    assert table.skipped == [(2, "", "without an image name"), (3, "im0", "with an empty label cell")]
    assert table.merged == [(5, "im1")]
    path.write_text("name,label\nim0,\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"no usable rows.*empty label cell"):
        read_label_table(path, "name", "label", "tumour")


def test_cli_says_what_was_skipped_and_refuses_latin1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _images(tmp_path)
    (tmp_path / "labels.csv").write_bytes("name,label\nim0,normal\nim1,tumour\nim2,bénin\n".encode("latin-1"))
    args = ["train", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels.csv"),
            "--name-column", "name", "--label-column", "label", "--positive", "tumour",
            "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("milkd: error: labels.csv, line 4: not UTF-8"), err
    assert not (tmp_path / "run").exists()
