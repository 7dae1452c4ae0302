"""The annotation reader contribution, without a viewer: QuPath GeoJSON / ASAP XML → one Shapes layer.

(The placement on a slide in a real viewer is in ``tests/gui/test_annotation_reader.py``.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from npe2 import PluginManifest
from shapely.geometry import Polygon, box

import napari_milkd
from napari_milkd import _annotation_reader as annotation_reader
from napari_milkd._annotation_reader import (
    ANNOTATIONS_META,
    FACE_ALPHA,
    IGNORE_COLOR,
    annotation_color,
    napari_get_reader,
    read_annotation_layer,
)
from napari_milkd._layers import l0_xy_to_napari, napari_to_l0_xy
from napari_milkd._writer import write_shapes_asap, write_shapes_geojson
from napari_milkd.core.annotations import Annotation, read_geojson, write_asap_xml
from napari_milkd.core.annotations.common import DEFAULT_CLASS_COLORS
from napari_milkd.core.errors import InputError
from napari_milkd.core.inference.masks import mask_polygons
from qupath_files import qupath_export, qupath_feature

MANIFEST = Path(napari_milkd.__file__).parent / "napari.yaml"
COMMAND = "napari-milkd.get_annotation_reader"


@pytest.fixture
def notes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The notifications the reader shows (napari warnings in napari, Python warnings without it)."""
    shown: list[str] = []
    monkeypatch.setattr(annotation_reader, "_notify", shown.append)
    return shown


def _read(path: Path, notes: list[str]) -> tuple[list[np.ndarray], dict, str]:
    reader = napari_get_reader(str(path))
    assert reader is not None, path
    [(data, kwargs, kind)] = reader(str(path))
    assert any("level-0 pixels" in n and "no slide" in n for n in notes), notes  # no viewer here
    return data, kwargs, kind


def _rgb(values: np.ndarray) -> tuple[int, int, int]:
    return tuple(round(v * 255) for v in values[:3])  # type: ignore[return-value]


def test_manifest_declares_the_annotation_readers() -> None:
    manifest = PluginManifest.from_file(MANIFEST)
    commands = {c.id: c.python_name for c in manifest.contributions.commands or []}
    assert commands[COMMAND] == "napari_milkd._annotation_reader:napari_get_reader"
    [reader] = [r for r in manifest.contributions.readers or [] if r.command == COMMAND]
    assert set(reader.filename_patterns) == {"*.geojson", "*.xml"}
    assert not reader.accepts_directories


def test_npe2_finds_the_reader_for_annotation_files(tmp_path: Path) -> None:
    import npe2

    manager = npe2.PluginManager.instance()
    manager.discover()
    geojson = qupath_export(tmp_path / "slide.geojson")
    xml = tmp_path / "slide.xml"
    write_asap_xml(xml, [box(0, 0, 10, 10)])
    for path in (geojson, xml):
        found = [r.command for r in manager.iter_compatible_readers([str(path)])]
        assert COMMAND in found, (path, found)


def test_foreign_files_are_left_to_other_readers(tmp_path: Path) -> None:
    foreign_xml = tmp_path / "pom.xml"
    foreign_xml.write_text('<?xml version="1.0"?>\n<project><ASAP_Annotations/></project>\n')
    not_xml = tmp_path / "broken.xml"
    not_xml.write_bytes(b"\x00\x01 not xml")
    geometry_only = tmp_path / "bare.geojson"
    geometry_only.write_text(
        json.dumps({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]})
    )
    other_json = tmp_path / "settings.geojson"
    other_json.write_text('{"name": "not geojson at all"}')
    unsafe = tmp_path / "bomb.xml"
    unsafe.write_text('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><ASAP_Annotations/>')
    qupath_json = qupath_export(tmp_path / "qupath.json")  # only *.geojson is claimed for GeoJSON
    for path in (foreign_xml, not_xml, geometry_only, other_json, unsafe, qupath_json, tmp_path):
        assert napari_get_reader(str(path)) is None, path
    assert napari_get_reader([str(foreign_xml), str(other_json)]) is None
    assert napari_get_reader(str(tmp_path / "missing.geojson")) is None


def test_qupath_geojson_becomes_one_shapes_layer(tmp_path: Path, notes: list[str]) -> None:
    path = qupath_export(tmp_path / "case 12.geojson")
    data, kwargs, kind = _read(path, notes)
    assert kind == "shapes"
    assert kwargs["name"] == "case 12 (GeoJSON)"
    assert tuple(kwargs["scale"]) == (1.0, 1.0)  # no viewer: level-0 pixels
    features = kwargs["features"]
    # Annotations only (detections, cells, the tile are skipped), in file order, base classes.
    assert features["class"] == [
        "Tumor", "Tumor", "Tumor", "Stroma", "Ignore*", "Necrosis", "(unclassified)", "Non-Tumor", "Other",
    ]  # fmt: skip
    assert features["meaning"] == [
        "positive", "positive", "positive", "negative", "ignored", "unknown", "unknown", "negative",
        "unknown",
    ]  # fmt: skip
    assert set(features["ring"]) == {"region"} and kwargs["shape_type"] == ["polygon"] * 9
    # The 10×10 square at x0 = 20: level-0 corners (20, 0)..(30, 10) → napari (row, col) = (y, x) − ½.
    square = data[1]
    np.testing.assert_allclose(square, [[-0.5, 19.5], [-0.5, 29.5], [9.5, 29.5], [9.5, 19.5]])
    assert Polygon(napari_to_l0_xy(square)).equals(box(20, 0, 30, 10))
    faces, edges = np.asarray(kwargs["face_color"]), np.asarray(kwargs["edge_color"])
    assert _rgb(edges[0]) == (200, 0, 0)  # the file's classification.color
    assert _rgb(edges[1]) == (200, 50, 50)  # derived class "Tumor: Positive" keeps its own colour
    assert _rgb(edges[2]) == DEFAULT_CLASS_COLORS["Tumor"]  # legacy string class: QuPath's default
    assert _rgb(edges[7]) == (0, 0, 200)
    assert _rgb(edges[8]) == DEFAULT_CLASS_COLORS["Other"]  # no colour in the file
    assert np.allclose(faces[:, 3], FACE_ALPHA) and np.allclose(edges[:, 3], 1.0)
    info = kwargs["metadata"][ANNOTATIONS_META]
    assert info["placed_on"] is None and info["format"] == "geojson"
    assert info["skipped"] == {"detection": 3, "cell": 4, "tile": 1}
    assert {"name": "Stroma", "label": "negative", "count": 1, "meaning": "negative"} in info["classes"]
    assert "holes" in info and "level-0" in info["coordinates"]
    assert "milkd_mpp" not in kwargs["metadata"] and "units" not in kwargs
    # One notification says what is not shown: unknown classes and the skipped objects.
    [what] = [n for n in notes if "unknown class" in n]
    assert "'Necrosis'" in what and "skipped 3 detection, 4 cell, 1 tile" in what


def test_colours_without_a_file_colour() -> None:
    square = box(0, 0, 5, 5)
    assert annotation_color(Annotation(square, "Ignore*")) == IGNORE_COLOR
    assert annotation_color(Annotation(square, "Stroma")) == DEFAULT_CLASS_COLORS["Stroma"]
    hashed = annotation_color(Annotation(square, "Lymphocytes"))
    assert hashed == annotation_color(Annotation(square, "Lymphocytes")) and all(
        64 <= c < 224 for c in hashed
    )
    packed = Annotation(square, "Tumor", {"classification": {"name": "Tumor", "colorRGB": -3670016}})
    assert annotation_color(packed) == (200, 0, 0)  # QuPath ≤ 0.3: a packed signed int


def test_asap_xml_with_groups_holes_and_colours(tmp_path: Path, notes: list[str]) -> None:
    ring = box(100, 200, 300, 400)
    holed = Polygon(ring.exterior.coords, [box(150, 250, 200, 300).exterior.coords])
    other = Annotation(box(500, 50, 540, 90), "Stroma")
    path = tmp_path / "camelyon.xml"
    write_asap_xml(path, [Annotation(holed, "_0"), other], colors={"_0": "#F4FA58", "Stroma": "#00FF00"})
    data, kwargs, _ = _read(path, notes)
    assert kwargs["name"] == "camelyon (ASAP XML)"
    features = kwargs["features"]
    # The _2 hole ASAP stores separately comes back as the region's hole: a closed, unfilled path.
    assert features["class"] == ["Tumor", "Tumor", "Stroma"]
    assert features["ring"] == ["region", "hole", "region"]
    assert features["annotation"] == [0, 0, 1]
    assert kwargs["shape_type"] == ["polygon", "path", "polygon"]
    region, hole, stroma = data
    assert Polygon(napari_to_l0_xy(region)).equals(ring)
    np.testing.assert_array_equal(hole[0], hole[-1])  # closed outline
    assert Polygon(napari_to_l0_xy(hole)).equals(box(150, 250, 200, 300))
    assert Polygon(napari_to_l0_xy(stroma)).equals(other.geometry)
    edges, faces = np.asarray(kwargs["edge_color"]), np.asarray(kwargs["face_color"])
    assert _rgb(edges[0]) == (0xF4, 0xFA, 0x58)  # the file's Color (Camelyon16 yellow)
    assert _rgb(edges[2]) == (0, 255, 0)
    assert faces[1, 3] == 0.0  # holes are outlines only


def test_milkd_export_round_trips_through_the_layer(tmp_path: Path, notes: list[str]) -> None:
    """A mask exported as milkd exports it, opened as shapes, saved again with milkd's shapes writer:
    the regions come back where they were (holes are shown as outlines and not written back)."""
    mask = np.zeros((40, 60), bool)
    mask[5:30, 10:40] = True
    mask[12:18, 20:26] = False  # a hole
    mask[32:38, 45:55] = True
    polygons = mask_polygons(mask, 4.0, 0.5)
    exported = tmp_path / "teacher.geojson"
    from napari_milkd.core.annotations import write_geojson

    write_geojson(exported, polygons, mpp=0.5)
    data, kwargs, _ = _read(exported, notes)
    assert kwargs["features"]["ring"].count("hole") == 1
    assert set(kwargs["features"]["meaning"]) == {"positive"}
    again = tmp_path / "again.geojson"
    state = {k: v for k, v in kwargs.items() if k in ("name", "scale", "metadata", "shape_type")}
    state["features"] = kwargs["features"]
    write_shapes_geojson(str(again), data, state)
    back = read_geojson(again).annotations
    assert len(back) == len(polygons)  # the hole path is not a region
    for annotation, polygon in zip(back, polygons, strict=True):
        assert annotation.class_name == "Tumor"
        assert annotation.geometry.equals(Polygon(polygon.exterior))
    xml = tmp_path / "again.xml"
    write_shapes_asap(str(xml), data, state)


def test_empty_or_broken_file_says_why(tmp_path: Path) -> None:
    points = tmp_path / "points.geojson"
    points.write_text(
        json.dumps({"type": "FeatureCollection", "features": [
            {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}, "properties": {}}
        ]})
    )  # fmt: skip
    reader = napari_get_reader(str(points))
    assert reader is not None  # GeoJSON Features: ours to explain
    with pytest.raises(InputError, match="no polygon features"):
        reader(str(points))
    detections = tmp_path / "cells.geojson"
    detections.write_text(
        json.dumps({"type": "FeatureCollection", "features": [qupath_feature(0, "detection", None)]})
    )
    with pytest.raises(InputError, match="no annotations to read"):
        read_annotation_layer(str(detections))


def test_pixel_data_uses_the_layers_convention() -> None:
    """The reader puts level-0 (x, y) vertices where the writers take them back (one convention)."""
    xy = np.array([[10.0, 20.0], [30.0, 20.0], [30.0, 50.0]])
    np.testing.assert_array_equal(l0_xy_to_napari(xy), [[19.5, 9.5], [19.5, 29.5], [49.5, 29.5]])


def test_reader_stays_light_and_warns_without_napari(tmp_path: Path) -> None:
    """Importing and reading load neither napari, Qt nor torch; without napari the notice is a
    Python warning."""
    path = qupath_export(tmp_path / "light.geojson")
    code = (
        "import sys, warnings; from napari_milkd._annotation_reader import napari_get_reader; "
        "warnings.simplefilter('always'); "
        "caught = warnings.catch_warnings(record=True); seen = caught.__enter__(); "
        f"[(data, kwargs, kind)] = napari_get_reader({str(path)!r})({str(path)!r}); "
        "assert kind == 'shapes' and len(data) == 9, kind; "
        "assert any('level-0 pixels' in str(w.message) for w in seen), [str(w.message) for w in seen]; "
        "bad = [m for m in ('torch', 'qtpy', 'PyQt5', 'napari') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
