"""Annotation files opened in a real napari viewer: a Shapes layer that lies on the slide opened by milkd.

Data fixtures come before ``make_napari_viewer`` in each signature (napari's fixture fails its teardown
when a test is skipped after it was set up)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from napari.layers import Image, Shapes
from napari.utils.notifications import notification_manager
from shapely.geometry import Polygon, box

from napari_milkd._annotation_reader import ANNOTATIONS_META
from napari_milkd._writer import write_shapes_geojson
from napari_milkd.core.annotations import Annotation, read_geojson, write_asap_xml, write_geojson
from qupath_files import qupath_feature

MPP = 0.25  # the exact_pyramid fixture: 1530 × 1200 px level 0 at 0.25 µm/px


def _geojson(path: Path) -> Path:
    """A tumour rectangle x ∈ [100, 300), y ∈ [200, 500) and the whole 1530 × 1200 slide as Stroma."""
    features = [
        qupath_feature(0, "annotation", {"name": "Tumor", "color": [200, 0, 0]}),
        qupath_feature(0, "annotation", {"name": "Stroma", "color": [150, 200, 150]}),
    ]
    features[0]["geometry"]["coordinates"] = [[[100, 200], [300, 200], [300, 500], [100, 500], [100, 200]]]
    features[1]["geometry"]["coordinates"] = [[[0, 0], [1530, 0], [1530, 1200], [0, 1200], [0, 0]]]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def _messages(before: int) -> list[str]:
    return [str(n.message) for n in notification_manager.records[before:]]


def test_geojson_lies_on_the_slide_in_micrometres(
    exact_pyramid: Path, tmp_path: Path, make_napari_viewer
) -> None:
    path = _geojson(tmp_path / "regions.geojson")
    viewer = make_napari_viewer()
    [slide] = viewer.open(str(exact_pyramid), plugin="napari-milkd")
    assert isinstance(slide, Image) and tuple(slide.scale) == pytest.approx((MPP, MPP))
    before = len(notification_manager.records)
    [layer] = viewer.open(str(path), plugin="napari-milkd")
    assert isinstance(layer, Shapes)
    assert layer.name == "regions (GeoJSON)"
    assert layer.source.reader_plugin == "napari-milkd"
    assert tuple(layer.scale) == tuple(slide.scale)
    assert tuple(layer.translate) == tuple(slide.translate)
    assert [str(u) for u in layer.units] == [str(u) for u in slide.units] == ["micrometer", "micrometer"]
    assert not any("level-0 pixels" in m for m in _messages(before))
    info = layer.metadata[ANNOTATIONS_META]
    assert info["placed_on"] == slide.name and "scale and translate" in info["scale_source"]
    # Tumour rectangle: level-0 corners x 100..300, y 200..500 → µm, napari (row, col) = (y, x).
    tumour = layer.data[0] * layer.scale + layer.translate
    lo, hi = tumour.min(axis=0), tumour.max(axis=0)
    np.testing.assert_allclose(lo, np.array([200 - 0.5, 100 - 0.5]) * MPP)
    np.testing.assert_allclose(hi, np.array([500 - 0.5, 300 - 0.5]) * MPP)
    # The whole-slide region covers exactly the slide's pixels in the world: from the outer corner of
    # level-0 pixel (0, 0) to that of the last pixel (napari puts pixel centres at integer data).
    whole = layer.data[1] * layer.scale + layer.translate
    height, width = slide.data[0].shape[:2]
    assert (height, width) == (1200, 1530)
    np.testing.assert_allclose(whole.min(axis=0), slide.data_to_world(np.array([-0.5, -0.5])))
    np.testing.assert_allclose(whole.max(axis=0), slide.data_to_world(np.array([height - 0.5, width - 0.5])))
    # Class colours, faint faces, class and milkd meaning per shape.
    np.testing.assert_allclose(layer.edge_color[0], [200 / 255, 0, 0, 1])
    np.testing.assert_allclose(layer.edge_color[1][:3], np.array([150, 200, 150]) / 255)
    assert (layer.face_color[:, 3] < 0.2).all()
    assert list(layer.features["class"]) == ["Tumor", "Stroma"]
    assert list(layer.features["meaning"]) == ["positive", "negative"]
    # Saved back through milkd's writer: the same level-0 polygons.
    out = tmp_path / "saved.geojson"
    data, state, _ = layer.as_layer_data_tuple()
    assert write_shapes_geojson(str(out), data, state) == [str(out)]
    saved = read_geojson(out).annotations
    assert [a.class_name for a in saved] == ["Tumor", "Stroma"]
    assert saved[0].geometry.equals(box(100, 200, 300, 500))
    assert saved[1].geometry.equals(box(0, 0, 1530, 1200))


def test_asap_xml_with_a_hole_on_the_slide(exact_pyramid: Path, tmp_path: Path, make_napari_viewer) -> None:
    holed = Polygon(box(400, 100, 800, 600).exterior.coords, [box(500, 200, 600, 300).exterior.coords])
    path = tmp_path / "camelyon.xml"
    write_asap_xml(path, [Annotation(holed, "Tumor")])
    viewer = make_napari_viewer()
    [slide] = viewer.open(str(exact_pyramid), plugin="napari-milkd")
    [layer] = viewer.open(str(path), plugin="napari-milkd")
    assert layer.name == "camelyon (ASAP XML)"
    assert tuple(layer.scale) == tuple(slide.scale)
    assert list(layer.shape_type) == ["polygon", "path"]
    assert list(layer.features["ring"]) == ["region", "hole"]
    hole = layer.data[1] * layer.scale
    np.testing.assert_allclose(hole.min(axis=0), np.array([200 - 0.5, 500 - 0.5]) * MPP)
    assert "hole" in layer.metadata[ANNOTATIONS_META]["holes"]


def test_without_one_slide_shapes_stay_in_pixels_and_say_so(
    exact_pyramid: Path, inexact_pyramid: Path, tmp_path: Path, make_napari_viewer
) -> None:
    path = tmp_path / "alone.geojson"
    write_geojson(path, [box(10, 20, 30, 40)])
    viewer = make_napari_viewer()
    before = len(notification_manager.records)
    [layer] = viewer.open(str(path), plugin=None)  # a drop: no plugin named, no "No plugin found"
    assert layer.source.reader_plugin == "napari-milkd"
    assert isinstance(layer, Shapes) and tuple(layer.scale) == (1.0, 1.0)
    [message] = [m for m in _messages(before) if "level-0 pixels" in m]
    assert "no slide opened by napari-milkd" in message
    viewer.open(str(exact_pyramid), plugin="napari-milkd")
    viewer.open(str(inexact_pyramid), plugin="napari-milkd")
    before = len(notification_manager.records)
    [again] = viewer.open(str(path), plugin="napari-milkd")
    assert tuple(again.scale) == (1.0, 1.0) and again.metadata[ANNOTATIONS_META]["placed_on"] is None
    [message] = [m for m in _messages(before) if "level-0 pixels" in m]
    assert "several slides" in message and "'exact'" in message and "'inexact'" in message
