"""QuPath GeoJSON (``core.annotations.geojson``): writing, reading, repairs, errors, fuzzing."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shapely.geometry import box

from napari_milkd.core.annotations import (
    Annotation,
    mask_to_polygons,
    polygons_to_mask,
    read_geojson,
    write_geojson,
)
from napari_milkd.core.errors import InputError


def _write_json(path: Path, payload: object) -> Path:
    path.write_text(json.dumps(payload))
    return path


def _feature(coords: object, kind: str = "Polygon", **props: object) -> dict:
    return {"type": "Feature", "geometry": {"type": kind, "coordinates": coords}, "properties": props}


def test_geojson_round_trip_qupath_shape(tmp_path: Path, tricky: np.ndarray) -> None:
    polygons = mask_to_polygons(tricky, 4.0, simplify_px=0)
    path = tmp_path / "tumour.geojson"
    count = write_geojson(path, polygons, mpp=0.5, measurements={"Probability": 0.9})
    assert count == len(polygons)
    payload = json.loads(path.read_text())
    assert payload["type"] == "FeatureCollection" and len(payload["features"]) == count
    ids = [f["id"] for f in payload["features"]]
    assert len(set(ids)) == count and all(str(uuid.UUID(i)) == i for i in ids)
    for feature, polygon in zip(payload["features"], polygons, strict=True):
        props = feature["properties"]
        assert props["objectType"] == "annotation"
        assert props["classification"] == {"name": "Tumor", "color": [200, 0, 0]}
        # Our measurement names never clash with QuPath's own columns ("Area µm^2", ...).
        assert props["measurements"]["milkd: Probability"] == 0.9
        assert props["measurements"]["milkd: Area µm^2"] == pytest.approx(polygon.area * 0.25)
        assert set(props["measurements"]) == {"milkd: Probability", "milkd: Area µm^2"}
        rings = feature["geometry"]["coordinates"]
        assert feature["geometry"]["type"] == "Polygon" and len(rings) == 1 + len(polygon.interiors)
        assert shapely.LinearRing(rings[0]).is_ccw and all(
            not shapely.LinearRing(r).is_ccw for r in rings[1:]
        )
    result = read_geojson(path, slide_shape_l0=(tricky.shape[0] * 4, tricky.shape[1] * 4))
    assert result.warnings == ()
    assert [a.id for a in result] == ids and {a.class_name for a in result} == {"Tumor"}
    for annotation, polygon in zip(result, polygons, strict=True):
        assert annotation.geometry.equals(polygon)
    back = polygons_to_mask(result.annotations, tricky.shape, 4.0)
    np.testing.assert_array_equal(back, tricky)
    assert [p.name for p in tmp_path.iterdir()] == ["tumour.geojson"]  # no temporary files left


def test_geojson_write_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "a.geojson"
    write_geojson(path, [box(0, 0, 1, 1)])
    before = path.read_text()

    def failing():
        yield box(0, 0, 2, 2)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_geojson(path, failing())
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.geojson"]


def test_geojson_classes_and_colours(tmp_path: Path) -> None:
    items = [
        Annotation(box(0, 0, 5, 5), "Stroma"),
        Annotation(box(10, 0, 15, 5), "label 7"),
        box(20, 0, 25, 5),
    ]
    path = tmp_path / "c.geojson"
    write_geojson(path, items, colors={"label 7": (1, 2, 3)})
    classes = [f["properties"]["classification"] for f in json.loads(path.read_text())["features"]]
    assert classes == [
        {"name": "Stroma", "color": [150, 200, 150]},
        {"name": "label 7", "color": [1, 2, 3]},
        {"name": "Tumor", "color": [200, 0, 0]},
    ]


def test_geojson_accepts_every_qupath_layout(tmp_path: Path) -> None:
    square = [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]
    feature = _feature(square, classification={"name": "Tumor", "colorRGB": -3670016})
    single = read_geojson(_write_json(tmp_path / "one.geojson", feature))
    assert len(single) == 1 and single.annotations[0].class_name == "Tumor"
    bare_list = read_geojson(_write_json(tmp_path / "list.geojson", [feature, feature]))
    assert len(bare_list) == 2
    geometry = read_geojson(_write_json(tmp_path / "geom.json", {"type": "Polygon", "coordinates": square}))
    assert geometry.annotations[0].class_name is None and geometry.annotations[0].geometry.area == 100
    multi = _feature(
        [square, [[[20, 0], [30, 0], [30, 10], [20, 10]]]], "MultiPolygon", classification="Normal"
    )
    point = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}, "properties": {}}
    mixed = read_geojson(
        _write_json(tmp_path / "mixed.geojson", {"type": "FeatureCollection", "features": [multi, point]})
    )
    (annotation,) = mixed.annotations
    assert annotation.geometry.geom_type == "MultiPolygon" and annotation.geometry.area == 200
    assert annotation.class_name == "Normal"  # ring without closing point was closed
    assert mixed.warnings == ("mixed.geojson: feature 1: Point geometry ignored (only polygons are read)",)


def test_geojson_repairs_and_clips_with_warnings(tmp_path: Path) -> None:
    bowtie = [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]
    empty = [[[0, 0], [5, 0], [10, 0], [0, 0]]]
    straddling = [[[90, 90], [110, 90], [110, 110], [90, 110], [90, 90]]]
    outside = [[[200, 200], [210, 200], [210, 210], [200, 200]]]
    payload = {
        "type": "FeatureCollection",
        "features": [_feature(c) for c in (bowtie, empty, straddling, outside)],
    }
    result = read_geojson(_write_json(tmp_path / "bad.geojson", payload), slide_shape_l0=(100, 100))
    assert len(result) == 2
    assert result.annotations[0].geometry.is_valid and result.annotations[0].geometry.area == pytest.approx(
        50
    )
    assert result.annotations[1].geometry.bounds == (90.0, 90.0, 100.0, 100.0)
    assert result.warnings == (
        "bad.geojson: feature 0: invalid polygon (Self-intersection[5 5]) repaired",
        "bad.geojson: feature 1: empty polygon (no area) skipped",
        "bad.geojson: feature 2: coordinates outside the slide, clipped to it",
        "bad.geojson: feature 3: entirely outside the slide, dropped",
    )


_POLYGON = '[{{"type": "Feature", "geometry": {{"type": "Polygon", "coordinates": [{}]}}}}]'


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", r"bad\.geojson: not JSON \(Expecting property name"),
        ('{"type": "Topology"}', r"bad\.geojson: not GeoJSON"),
        ("42", r"not GeoJSON"),
        ('{"type": "FeatureCollection", "features": []}', r"bad\.geojson: GeoJSON has no features"),
        ('{"type": "FeatureCollection"}', r"FeatureCollection without a 'features' list"),
        (
            '[{"type": "Feature", "geometry": {"type": "LineString", "coordinates": [[0,0],[1,1]]}}]',
            r"no polygon features",
        ),
        (_POLYGON.format("[[0,0],[1,0],[0,0]]"), r"no usable polygons.*fewer than 3"),
        (_POLYGON.format("[[0,0],[NaN,0],[1,1],[0,0]]"), r"bad\.geojson: not JSON \(NaN is not valid JSON\)"),
        (
            _POLYGON.format("[[0,0],[1e300,0],[1,1],[0,0]]"),
            r"feature 0: malformed Polygon .*implausibly large",
        ),
        (_POLYGON.format('[[0,0],["1",0],[1,1],[0,0]]'), r"a coordinate is not a number"),
        # Issue 18 case 6: an integer with 400 digits (JSON allows it; float() overflows).
        (
            _POLYGON.format(f"[[0,0],[1{'0' * 400},0],[1,1],[0,0]]"),
            r"feature 0: malformed .*implausibly large",
        ),
    ],
)
def test_geojson_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.geojson"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        read_geojson(path)


def test_a_huge_integer_sinks_only_its_own_feature(tmp_path: Path) -> None:
    """Issue 18 case 6: an integer coordinate with hundreds of digits is one warning, the rest is read."""
    huge = 10**400
    path = _write_json(
        tmp_path / "huge.geojson",
        {
            "type": "FeatureCollection",
            "features": [
                _feature([[[0, 0], [huge, 0], [100, 100], [0, 0]]], classification={"name": "Tumor"}),
                _feature([[[0, 0], [50, 0], [50, 50], [0, 50], [0, 0]]], classification={"name": "Tumor"}),
            ],
        },
    )
    result = read_geojson(path, slide_shape_l0=(1000, 1000))
    assert len(result) == 1 and result.annotations[0].geometry.area == 2500
    assert result.warnings == (
        "huge.geojson: feature 0: malformed Polygon (a coordinate is implausibly large), skipped",
    )


def test_geojson_nothing_left_and_missing(tmp_path: Path) -> None:
    outside = _write_json(
        tmp_path / "far.geojson", [_feature([[[500, 500], [600, 500], [600, 600], [500, 500]]])]
    )
    with pytest.raises(InputError, match=r"far\.geojson: no usable polygons .*entirely outside the slide"):
        read_geojson(outside, slide_shape_l0=(100, 100))
    with pytest.raises(InputError, match="no such file"):
        read_geojson(tmp_path / "missing.geojson")
    (tmp_path / "binary.geojson").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InputError, match="not JSON"):
        read_geojson(tmp_path / "binary.geojson")


_KEYS = st.sampled_from(
    [
        "type",
        "features",
        "geometry",
        "coordinates",
        "properties",
        "classification",
        "name",
        "id",
        "geometries",
    ]
)
_VALUES = st.sampled_from(
    ["Feature", "FeatureCollection", "Polygon", "MultiPolygon", "Point", "GeometryCollection", "Tumor"]
)
_NUMBERS = st.one_of(
    st.integers(-(10**12), 10**12), st.floats(allow_nan=False, allow_infinity=False), st.booleans()
)
_JSONISH = st.recursive(
    st.one_of(st.none(), _NUMBERS, _VALUES, st.text(max_size=5)),
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.one_of(_KEYS, st.text(max_size=3)), children, max_size=5),
    ),
    max_leaves=40,
)
_RING = st.lists(st.lists(_NUMBERS, min_size=0, max_size=3), max_size=8)
_GEOMETRY = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["Polygon", "MultiPolygon", "LineString"]),
        "coordinates": st.one_of(
            st.lists(_RING, max_size=3), st.lists(st.lists(_RING, max_size=2), max_size=2), _JSONISH
        ),
    }
)
_FEATURE = st.fixed_dictionaries(
    {"type": st.just("Feature"), "geometry": st.one_of(_GEOMETRY, _JSONISH), "properties": _JSONISH}
)
_DOCUMENT = st.one_of(
    _JSONISH,
    st.fixed_dictionaries(
        {
            "type": st.just("FeatureCollection"),
            "features": st.lists(st.one_of(_FEATURE, _JSONISH), max_size=4),
        }
    ),
    st.lists(_FEATURE, max_size=4),
)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(_DOCUMENT, st.one_of(st.none(), st.tuples(st.integers(1, 50), st.integers(1, 50))))
def test_property_geojson_importer_only_raises_input_error(
    tmp_path: Path, document: object, slide: tuple[int, int] | None
) -> None:
    path = tmp_path / "fuzz.geojson"
    path.write_text(json.dumps(document))
    try:
        result = read_geojson(path, slide_shape_l0=slide)
    except InputError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
        return
    assert result.annotations
    for annotation in result:
        assert annotation.geometry.is_valid and annotation.geometry.area > 0
        if slide is not None:
            assert box(0, 0, slide[1], slide[0]).buffer(1e-9).covers(annotation.geometry)
