"""``milkd annotations FILE [--slide] [--class-map] [--json] [--to]``: what a file means, and conversion."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import shapely

from napari_milkd.cli import main
from napari_milkd.core.annotations import polygons_to_mask, read_asap_xml, read_geojson
from qupath_files import QUPATH_EXPORT_CLASSES, qupath_export


def test_json_is_exactly_one_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = qupath_export(tmp_path / "export.geojson")
    assert main(["annotations", str(path), "--json"]) == 0
    out, err = capsys.readouterr()
    assert len(out.strip().splitlines()) == 1
    payload = json.loads(out)
    assert payload == {
        "classes": QUPATH_EXPORT_CLASSES,
        "skipped": {"detection": 3, "cell": 4, "tile": 1},
    }
    assert "unknown classes ignored" in err and "'Necrosis' ×1" in err


def test_text_table_and_class_map(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = qupath_export(tmp_path / "export.geojson")
    (tmp_path / "map.json").write_text(json.dumps({"Necrosis": "negative", "Other": "exclusion"}))
    assert main(["annotations", str(path), "--class-map", str(tmp_path / "map.json")]) == 0
    out, _ = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split() == ["class", "label", "count"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:-1]}
    assert rows["Necrosis"] == ["negative", "1"] and rows["Other"] == ["exclusion", "1"]
    assert rows["Tumor"] == ["positive", "3"]
    assert lines[-1] == "skipped: 3 detection, 4 cell, 1 tile"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.geojson"], "no such file"),
        (["export.geojson", "--class-map", "bad.csv"], "label 'sometimes' is not one of"),
        (["export.geojson", "--to", "out.txt"], "unknown annotation format"),
    ],
)
def test_bad_input_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    qupath_export(tmp_path / "export.geojson")
    (tmp_path / "bad.csv").write_text("Tumor,sometimes\n")
    argv = ["annotations", *(str(tmp_path / a) if not a.startswith("--") else a for a in args)]
    assert main(argv) == 2
    _, err = capsys.readouterr()
    assert err.startswith("milkd: error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.txt").exists()


def test_convert_qupath_to_asap_and_back_keeps_classes_and_holes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ring = [[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]]
    hole = [[20, 20], [20, 80], [80, 80], [80, 20], [20, 20]]
    island = [[40, 40], [60, 40], [60, 60], [40, 60], [40, 40]]
    features = [
        {"type": "Feature", "id": "5b3e1a52-6a40-4c39-9d5f-1f2a3b4c5d6e",
         "geometry": {"type": "Polygon", "coordinates": [ring, hole]},
         "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [200, 0, 0]},
                        "isLocked": True}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [island]},
         "properties": {"objectType": "annotation",
                        "classification": {"name": "Stroma", "color": [150, 200, 150]}}},
        {"type": "Feature",
         "geometry": {"type": "Polygon", "coordinates": [[[200, 0], [300, 0], [300, 50], [200, 0]]]},
         "properties": {"objectType": "annotation"}},
        {"type": "Feature",
         "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [5, 0], [5, 5], [0, 0]]]},
         "properties": {"objectType": "detection", "classification": {"name": "Tumor"}}},
    ]  # fmt: skip
    src = tmp_path / "qupath.geojson"
    src.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    xml = tmp_path / "asap.xml"
    assert main(["annotations", str(src), "--to", str(xml)]) == 0
    assert f"wrote 3 polygons to {xml}" in capsys.readouterr().out or xml.exists()
    asap = read_asap_xml(xml)
    classes = [a.class_name for a in asap]
    assert set(classes) == {"Tumor", "Stroma", None}  # unclassified stays unclassified (not Tumor)
    tumour = shapely.union_all([a.geometry for a in asap if a.class_name == "Tumor"])
    assert tumour.equals(shapely.Polygon(ring, [hole]))
    back = tmp_path / "back.geojson"
    assert main(["annotations", str(xml), "--to", str(back)]) == 0
    again = read_geojson(back)
    shape = (100, 300)
    for name in ("Tumor", "Stroma"):
        want = polygons_to_mask([a for a in read_geojson(src) if a.class_name == name], shape)
        got = polygons_to_mask([a for a in again if a.class_name == name], shape)
        np.testing.assert_array_equal(got, want)
    unclassified = [
        f for f in json.loads(back.read_text())["features"] if "classification" not in f["properties"]
    ]
    assert len(unclassified) == 1


def test_slide_bounds_offset_applies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], exact_pyramid: Path
) -> None:
    """``--slide`` clips to the slide (here a generic TIFF: no bounds, so no offset)."""
    path = qupath_export(tmp_path / "export.geojson")
    assert main(["annotations", str(path), "--slide", str(exact_pyramid), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert sum(c["count"] for c in payload["classes"]) == 9
