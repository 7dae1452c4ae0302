"""Masks ↔ polygons and the annotation formats (QuPath GeoJSON, ASAP XML, OME-Zarr labels), headless."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage
from shapely.geometry import MultiPolygon, Polygon, box

from napari_milkd.core.annotations import (
    Annotation,
    AnnotationWarning,
    labels_from_annotations,
    labels_to_polygons,
    mask_to_polygons,
    ome_zarr_transform,
    polygons_to_mask,
    read_asap_xml,
    read_geojson,
    read_ome_zarr_labels,
    write_asap_xml,
    write_geojson,
    write_ome_zarr_labels,
)
from napari_milkd.core.errors import InputError


def _mask(rows: list[str]) -> np.ndarray:
    return np.array([[ch == "#" for ch in row] for row in rows], dtype=bool)


#: Two components touching diagonally; a ring with a hole; a component inside that hole; a hole that
#: meets the outside at one corner; two holes that meet at one corner.
TRICKY = _mask(
    [
        "#.............",
        ".#..#####.....",
        "....#...#..##.",
        "....#.#.#.#.#.",
        "....#...#.##..",
        "....#####.....",
        "..............",
        ".#####..######",
        ".#.#.#..#....#",
        ".##.##..#.#..#",
        ".#####..#..#.#",
        "........######",
    ]
)


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels with both values in their 3×3 neighbourhood (the outside counts as background)."""
    padded = np.pad(mask, 1)
    fg_near = ndimage.maximum_filter(padded, size=3)[1:-1, 1:-1]
    bg_near = ~ndimage.minimum_filter(padded, size=3)[1:-1, 1:-1]
    return fg_near & bg_near


# ------------------------------------------------------------------------------------------------ geometry


def test_single_pixel_is_a_unit_square_in_corner_convention() -> None:
    mask = np.zeros((6, 6), bool)
    mask[2, 3] = True
    (polygon,) = mask_to_polygons(mask, 1.0, simplify_px=0)
    assert polygon.bounds == (3.0, 2.0, 4.0, 3.0)  # x ∈ [3, 4], y ∈ [2, 3]
    (scaled,) = mask_to_polygons(mask, 4.0, simplify_px=0)
    assert scaled.bounds == (12.0, 8.0, 16.0, 12.0)
    assert polygons_to_mask([polygon], mask.shape).sum() == 1


@pytest.mark.parametrize("downsample", [1.0, 4.0, 2.5])
def test_round_trip_is_exact_without_simplification(downsample: float) -> None:
    polygons = mask_to_polygons(TRICKY, downsample, simplify_px=0)
    assert all(p.is_valid and p.geom_type == "Polygon" for p in polygons)
    assert sum(p.area for p in polygons) == pytest.approx(TRICKY.sum() * downsample**2)
    np.testing.assert_array_equal(polygons_to_mask(polygons, TRICKY.shape, downsample), TRICKY)


def test_components_holes_and_diagonal_neighbours() -> None:
    polygons = mask_to_polygons(TRICKY, simplify_px=0)
    _, n = ndimage.label(TRICKY)  # 4-connectivity
    assert len(polygons) == n  # one polygon per 4-connected component: diagonal neighbours are separate
    corner = [p for p in polygons if p.bounds[:2] == (0.0, 0.0)]
    assert len(corner) == 1 and corner[0].area == 1
    ring = next(p for p in polygons if p.bounds == (4.0, 1.0, 9.0, 6.0))
    assert len(ring.interiors) == 1 and ring.area == 16  # the 3×3 hole minus nothing; island is separate
    island = next(p for p in polygons if p.bounds == (6.0, 3.0, 7.0, 4.0))
    assert island.area == 1 and ring.contains(island.representative_point()) is False
    three_holes = next(p for p in polygons if p.bounds == (1.0, 7.0, 6.0, 11.0))
    assert len(three_holes.interiors) == 3  # one-pixel holes touching at corners stay separate holes
    assert three_holes.area == 20 - 3


def test_hole_meeting_the_outside_at_a_corner() -> None:
    mask = _mask([".####", "#...#", "#...#", "#####"])
    (polygon,) = mask_to_polygons(mask, simplify_px=0)
    assert polygon.is_valid and len(polygon.interiors) == 1 and polygon.area == 13
    np.testing.assert_array_equal(polygons_to_mask([polygon], mask.shape), mask)


def test_simplification_reduces_vertices_and_keeps_holes() -> None:
    yy, xx = np.mgrid[0:200, 0:200]
    disk = (yy - 100) ** 2 + (xx - 100) ** 2 < 80**2
    disk &= (yy - 100) ** 2 + (xx - 90) ** 2 >= 20**2  # a round hole
    exact = mask_to_polygons(disk, simplify_px=0)
    simple = mask_to_polygons(disk)
    assert len(simple) == 1 and len(simple[0].interiors) == 1
    assert len(simple[0].exterior.coords) < 0.9 * len(exact[0].exterior.coords)
    np.testing.assert_array_equal(polygons_to_mask(simple, disk.shape), disk)  # 0.5 px moves no centre
    coarse = mask_to_polygons(disk, simplify_px=1.0)
    assert len(coarse[0].exterior.coords) < len(exact[0].exterior.coords) / 4
    back = polygons_to_mask(coarse, disk.shape)
    assert not np.any((back != disk) & ~_boundary(disk))  # only pixels at the outline change


def test_min_area_and_label_images() -> None:
    mask = np.zeros((20, 20), np.uint8)
    mask[1:6, 1:6] = 1
    mask[10, 10] = 1
    mask[12:18, 12:18] = 2
    assert len(mask_to_polygons(mask, simplify_px=0)) == 3  # non-zero is foreground
    assert len(mask_to_polygons(mask > 0, min_area_px=2)) == 2
    by_label = labels_to_polygons(mask, 2.0, simplify_px=0)
    assert sorted(by_label) == [1, 2]
    assert sum(p.area for p in by_label[1]) == 26 * 4
    assert mask_to_polygons(np.zeros((5, 5), bool)) == []


def test_bad_mask_arguments() -> None:
    with pytest.raises(InputError, match="2-D"):
        mask_to_polygons(np.zeros((2, 2, 2)))
    with pytest.raises(InputError, match="downsample"):
        mask_to_polygons(np.zeros((2, 2)), 0)
    with pytest.raises(InputError, match="downsample"):
        polygons_to_mask([], (2, 2), -1)


def test_rasterise_handles_overlaps_multipolygons_and_edges() -> None:
    a, b = box(0, 0, 6, 6), box(4, 4, 10, 10)  # overlapping: united, not cancelled
    holed = Polygon([(20, 0), (30, 0), (30, 10), (20, 10)], [[(22, 2), (28, 2), (28, 8), (22, 8)]])
    mask = polygons_to_mask([a, MultiPolygon([b]), Annotation(holed, "Tumor")], (12, 40))
    assert mask[5, 5] and mask[9, 9] and mask[0, 0] and not mask[11, 11]
    assert mask[:, 20:30].sum() == 100 - 36
    clipped = polygons_to_mask([box(-5, -5, 100, 3)], (4, 4))
    assert clipped[:3].all() and not clipped[3].any()


def test_large_mask_round_trip_is_exact_and_fast() -> None:
    rng = np.random.default_rng(0)
    mask = np.zeros((2000, 2000), bool)
    yy, xx = np.ogrid[-50:51, -50:51]
    for cy, cx, r in zip(
        rng.integers(50, 1950, 300), rng.integers(50, 1950, 300), rng.integers(5, 50, 300), strict=True
    ):
        mask[cy - 50 : cy + 51, cx - 50 : cx + 51] |= yy**2 + xx**2 < r**2
    mask ^= rng.random(mask.shape) < 0.0005  # speckle: isolated pixels and pinholes
    polygons = mask_to_polygons(mask, simplify_px=0)
    np.testing.assert_array_equal(polygons_to_mask(polygons, mask.shape), mask)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrays(bool, st.tuples(st.integers(1, 14), st.integers(1, 14))), st.sampled_from([1.0, 3.0, 0.5]))
def test_property_exact_round_trip(mask: np.ndarray, downsample: float) -> None:
    polygons = mask_to_polygons(mask, downsample, simplify_px=0)
    assert all(p.is_valid for p in polygons)
    np.testing.assert_array_equal(polygons_to_mask(polygons, mask.shape, downsample), mask)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrays(bool, st.tuples(st.integers(1, 16), st.integers(1, 16))))
def test_property_simplified_round_trip(mask: np.ndarray) -> None:
    exact = mask_to_polygons(mask, simplify_px=0)
    simple = mask_to_polygons(mask)
    back = polygons_to_mask(simple, mask.shape)
    boundary = _boundary(mask)
    assert abs(int(back.sum()) - int(mask.sum())) <= int(boundary.sum())  # within a pixel per boundary pixel
    assert not np.any((back != mask) & ~boundary)  # and only boundary pixels ever change
    assert sum(len(p.interiors) for p in simple) == sum(len(p.interiors) for p in exact)  # holes kept


# ------------------------------------------------------------------------------------------------ GeoJSON


def _write_json(path: Path, payload: object) -> Path:
    path.write_text(json.dumps(payload))
    return path


def _feature(coords: object, kind: str = "Polygon", **props: object) -> dict:
    return {"type": "Feature", "geometry": {"type": kind, "coordinates": coords}, "properties": props}


def test_geojson_round_trip_qupath_shape(tmp_path: Path) -> None:
    polygons = mask_to_polygons(TRICKY, 4.0, simplify_px=0)
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
        assert props["measurements"]["Probability"] == 0.9
        assert props["measurements"]["Area µm^2"] == pytest.approx(polygon.area * 0.25)
        rings = feature["geometry"]["coordinates"]
        assert feature["geometry"]["type"] == "Polygon" and len(rings) == 1 + len(polygon.interiors)
        assert shapely.LinearRing(rings[0]).is_ccw and all(
            not shapely.LinearRing(r).is_ccw for r in rings[1:]
        )
    result = read_geojson(path, slide_shape_l0=(TRICKY.shape[0] * 4, TRICKY.shape[1] * 4))
    assert result.warnings == ()
    assert [a.id for a in result] == ids and {a.class_name for a in result} == {"Tumor"}
    for annotation, polygon in zip(result, polygons, strict=True):
        assert annotation.geometry.equals(polygon)
    back = polygons_to_mask(result.annotations, TRICKY.shape, 4.0)
    np.testing.assert_array_equal(back, TRICKY)
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
    ],
)
def test_geojson_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.geojson"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        read_geojson(path)


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


# ------------------------------------------------------------------------------------------------ ASAP XML


def test_asap_round_trip_with_holes(tmp_path: Path) -> None:
    polygons = mask_to_polygons(TRICKY, 2.0, simplify_px=0)
    path = tmp_path / "tumour.xml"
    count = write_asap_xml(path, polygons)
    assert count == len(polygons) + sum(len(p.interiors) for p in polygons)
    text = path.read_text()
    assert '<Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="Tumor" Color="#F4FA58">' in text
    assert '<Group Name="Tumor" PartOfGroup="None" Color="#F4FA58">' in text
    assert '<Group Name="_2" PartOfGroup="None"' in text and 'PartOfGroup="_2"' in text
    result = read_asap_xml(path)
    assert result.warnings == ()
    assert len(result) == len(polygons) and {a.class_name for a in result} == {"Tumor"}
    for annotation, polygon in zip(result, polygons, strict=True):
        assert annotation.geometry.equals(polygon)
    np.testing.assert_array_equal(polygons_to_mask(result.annotations, TRICKY.shape, 2.0), TRICKY)


_ASAP_DOC = """<?xml version="1.0"?>
<ASAP_Annotations><Annotations>{}</Annotations><AnnotationGroups/></ASAP_Annotations>"""


def _asap(group: str, points: list[tuple[object, object]], kind: str = "Polygon", name: str = "A") -> str:
    coords = "".join(f'<Coordinate Order="{i}" X="{x}" Y="{y}"/>' for i, (x, y) in enumerate(points))
    head = f'<Annotation Name="{name}" Type="{kind}" PartOfGroup="{group}">'
    return f"{head}<Coordinates>{coords}</Coordinates></Annotation>"


def test_asap_camelyon_groups(tmp_path: Path) -> None:
    square = [(0, 0), (100, 0), (100, 100), (0, 100)]
    hole = [(40, 40), (60, 40), (60, 60), (40, 60)]
    body = "".join(
        [
            _asap("_0", square, name="t0"),
            _asap("_2", hole, name="x"),
            _asap("_1", [(200, 0), (300, 0), (300, 100)], name="t1"),
            _asap("Normal", [("400,5", 0), (500, 0), (500, 100)], name="n"),
            _asap("None", [(600, 0), (700, 0), (700, 100)], name="u"),
            _asap("Tumor", [(0, 0), (1, 1)], name="short"),
            _asap("Tumor", [(5, 5)], kind="Dot", name="dot"),
        ]
    )
    path = tmp_path / "camelyon.xml"
    path.write_text(_ASAP_DOC.format(body))
    result = read_asap_xml(path)
    by_name = {a.properties["Name"]: a for a in result}
    assert set(by_name) == {"t0", "t1", "n", "u"}
    assert by_name["t0"].class_name == "Tumor" and by_name["t0"].geometry.area == 100 * 100 - 20 * 20
    assert len(by_name["t0"].geometry.interiors) == 1
    assert by_name["t1"].class_name == "Tumor"
    assert by_name["n"].class_name == "Normal" and by_name["n"].geometry.bounds[0] == 400.5  # decimal comma
    assert by_name["u"].class_name is None
    assert result.warnings == (
        "camelyon.xml: annotation 5 (short): fewer than 3 points, skipped",
        "camelyon.xml: annotation 6 (dot): type Dot ignored (only polygons are read)",
    )


def test_asap_coordinate_order_is_respected(tmp_path: Path) -> None:
    body = (
        '<Annotation Name="A" Type="Polygon" PartOfGroup="Tumor"><Coordinates>'
        '<Coordinate Order="2" X="10" Y="10"/><Coordinate Order="0" X="0" Y="0"/>'
        '<Coordinate Order="3" X="0" Y="10"/><Coordinate Order="1" X="10" Y="0"/>'
        "</Coordinates></Annotation>"
    )
    path = tmp_path / "order.xml"
    path.write_text(_ASAP_DOC.format(body))
    (annotation,) = read_asap_xml(path).annotations
    assert annotation.geometry.is_valid and annotation.geometry.area == 100


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<ASAP_Annotations><Annotations><Annotation Name="&lol3;"/></Annotations></ASAP_Annotations>"""

EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE a [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<ASAP_Annotations><Annotations><Annotation Name="&secret;"/></Annotations></ASAP_Annotations>"""


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (BILLION_LAUGHS, r"evil\.xml: refused unsafe XML"),
        (EXTERNAL_ENTITY, r"evil\.xml: refused unsafe XML"),
        ("<ASAP_Annotations><Annotations>", r"evil\.xml: malformed XML"),
        ("not xml at all", r"malformed XML"),
        ("<svg/>", r"not an ASAP annotation file \(root element <svg>\)"),
        (_ASAP_DOC.format(""), r"evil\.xml: ASAP XML has no annotations"),
        (_ASAP_DOC.format(_asap("Tumor", [(0, 0), (1, 1)])), r"no usable polygons.*fewer than 3 points"),
        (_ASAP_DOC.format(_asap("Tumor", [("a", 0), (1, 1), (2, 0)])), r"\(or its Order\) is not a"),
    ],
)
def test_asap_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "evil.xml"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        read_asap_xml(path)


def test_asap_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        read_asap_xml(tmp_path / "nope.xml")


_XML_TEXT = st.text(alphabet="0123456789.,-eE aX", max_size=8)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["Tumor", "_0", "_1", "_2", "None", "Normal", ""]),
            st.sampled_from(["Polygon", "Spline", "Rectangle", "Dot", "PointSet"]),
            st.lists(
                st.tuples(
                    st.one_of(_XML_TEXT, st.integers(-5, 60)), st.one_of(_XML_TEXT, st.integers(-5, 60))
                ),
                max_size=6,
            ),
        ),
        max_size=5,
    ),
    st.one_of(st.none(), st.tuples(st.integers(1, 50), st.integers(1, 50))),
)
def test_property_asap_importer_only_raises_input_error(
    tmp_path: Path, annotations: list, slide: tuple[int, int] | None
) -> None:
    path = tmp_path / "fuzz.xml"
    path.write_text(_ASAP_DOC.format("".join(_asap(g, pts, kind) for g, kind, pts in annotations)))
    try:
        result = read_asap_xml(path, slide_shape_l0=slide)
    except InputError as exc:
        assert "\n" not in str(exc)
        return
    assert all(a.geometry.is_valid and a.geometry.area > 0 for a in result)


# ------------------------------------------------------------------------------------------------ labels


def test_labels_from_annotations_default_mapping() -> None:
    anns = [
        Annotation(box(0, 0, 40, 40), "Normal"),
        Annotation(box(20, 20, 40, 40), "TUMOUR"),
        Annotation(box(0, 32, 8, 40), "_1"),
        box(36, 0, 40, 4),  # a bare polygon counts as tumour
    ]
    labels = labels_from_annotations(anns, (10, 10), 4.0)
    assert labels.dtype == np.uint8
    assert labels[0, 0] == 2 and labels[9, 9] == 1 and labels[9, 0] == 1 and labels[0, 9] == 1
    assert np.count_nonzero(labels == 1) == 25 + 4 + 1  # 5×5 tumour square, 2×2 corner, 1 px
    with pytest.warns(AnnotationWarning, match="1 annotation\\(s\\) of class 'Necrosis' ignored"):
        ignored = labels_from_annotations([Annotation(box(0, 0, 40, 40), "Necrosis")], (10, 10), 4.0)
    assert not ignored.any()
    custom = labels_from_annotations(
        [Annotation(box(0, 0, 4, 4), "Necrosis"), Annotation(box(4, 0, 8, 4), None)],
        (1, 2),
        4.0,
        {"necrosis": 3},
        unknown_label=9,
    )
    assert custom.tolist() == [[3, 9]]
    with pytest.raises(InputError, match=r"0\.\.255"):
        labels_from_annotations([], (1, 1), 1.0, {"x": 300})


# ------------------------------------------------------------------------------------------------ OME-Zarr


def test_ome_zarr_labels_round_trip_and_metadata(tmp_path: Path) -> None:
    labels = TRICKY.astype(np.uint8)
    labels[7:, 8:] *= 2
    target = tmp_path / "slide.zarr"
    write_ome_zarr_labels(
        target, labels, name="teacher", mpp=0.5, downsample=4.0, colors={1: (255, 0, 0, 128)}
    )
    back, downsample = read_ome_zarr_labels(target, "teacher")
    np.testing.assert_array_equal(back, labels)
    assert downsample == 4.0
    root = json.loads((target / "zarr.json").read_text())
    assert root["zarr_format"] == 3 and root["attributes"]["ome"] == {"version": "0.5"}
    assert json.loads((target / "labels" / "zarr.json").read_text())["attributes"]["ome"]["labels"] == [
        "teacher"
    ]
    meta = json.loads((target / "labels" / "teacher" / "zarr.json").read_text())["attributes"]["ome"]
    assert meta["version"] == "0.5"
    (multiscale,) = meta["multiscales"]
    assert multiscale["axes"] == [
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    scale, translation = multiscale["datasets"][0]["coordinateTransformations"]
    assert scale == {"type": "scale", "scale": [2.0, 2.0]}  # mpp·ds
    assert translation == {"type": "translation", "translation": [0.75, 0.75]}  # mpp·(ds−1)/2
    assert meta["image-label"]["colors"] == [{"label-value": 1, "rgba": [255, 0, 0, 128]}]
    array = json.loads((target / "labels" / "teacher" / "0" / "zarr.json").read_text())
    assert array["data_type"] == "uint8" and array["dimension_names"] == ["y", "x"]


def test_ome_zarr_transform_puts_pixel_centres_in_place() -> None:
    # Mask pixel r at ds covers level-0 [r·ds, (r+1)·ds); its centre, in NGFF's centre-origin µm, is
    # ((r + ½)·ds − ½)·mpp = r·scale + translation.
    mpp, ds = 0.25, 16.0
    (s, _), (t, _) = ome_zarr_transform(mpp, ds)
    for r in (0, 1, 7):
        assert r * s + t == pytest.approx(((r + 0.5) * ds - 0.5) * mpp)
    assert ome_zarr_transform(None, 1.0) == ([1.0, 1.0], [0.0, 0.0])


def test_ome_zarr_overwrite_is_atomic_and_unitless_without_mpp(tmp_path: Path) -> None:
    target = tmp_path / "m.zarr"
    write_ome_zarr_labels(target, np.ones((3, 4), np.uint8), name="mask", mpp=None, downsample=8.0)
    write_ome_zarr_labels(target, np.full((5, 5), 2, np.int64), name="mask", mpp=None, downsample=2.0)
    assert [p.name for p in tmp_path.iterdir()] == ["m.zarr"]  # no .tmp-/.old- folders left
    back, downsample = read_ome_zarr_labels(target, "mask")
    assert back.shape == (5, 5) and back.dtype == np.uint8 and (back == 2).all() and downsample == 2.0
    meta = json.loads((target / "labels" / "mask" / "zarr.json").read_text())["attributes"]["ome"]
    assert all("unit" not in axis for axis in meta["multiscales"][0]["axes"])
    with pytest.raises(InputError, match="not a plain folder name"):
        write_ome_zarr_labels(target, np.ones((2, 2)), name="../evil", mpp=None, downsample=1.0)
    with pytest.raises(InputError, match=r"0\.\.255"):
        write_ome_zarr_labels(target, np.full((2, 2), 300), name="m", mpp=None, downsample=1.0)
    with pytest.raises(InputError, match="no label image 'other'"):
        read_ome_zarr_labels(target, "other")
    with pytest.raises(InputError, match="no such OME-Zarr folder"):
        read_ome_zarr_labels(tmp_path / "absent.zarr", "mask")
    assert read_ome_zarr_labels(target, "mask")[0].shape == (5, 5)  # failed writes left it intact


# ------------------------------------------------------------------------------------------------ real slide


def test_round_trip_at_real_slide_coordinates(tmp_path: Path, cmu_svs: Path) -> None:
    """CMU-1-Small-Region's level 0 (skipped when ../shared/data/wsi is absent)."""
    from napari_milkd.core.slides.slide import open_slide

    source = open_slide(cmu_svs)
    try:
        height, width = source.info.shape  # level 0 (rows, cols)
        mpp = source.info.mpp
    finally:
        source.close()
    ds = 4.0
    shape = (int(np.ceil(height / ds)), int(np.ceil(width / ds)))
    yy, xx = np.ogrid[0 : shape[0], 0 : shape[1]]
    mask = (yy - shape[0] * 0.4) ** 2 + (xx - shape[1] * 0.5) ** 2 < (shape[1] * 0.3) ** 2
    mask &= (yy - shape[0] * 0.4) ** 2 + (xx - shape[1] * 0.5) ** 2 >= (shape[1] * 0.1) ** 2  # a hole
    mask[-20:, -30:] = True  # touching the bottom-right corner of the slide
    polygons = mask_to_polygons(mask, ds, simplify_px=0)
    geojson = tmp_path / "cmu.geojson"
    write_geojson(geojson, polygons, mpp=mpp)
    read = read_geojson(geojson, slide_shape_l0=(height, width))
    asap = tmp_path / "cmu.xml"
    write_asap_xml(asap, polygons)
    read_xml = read_asap_xml(asap, slide_shape_l0=(height, width))
    corner = max(polygons, key=lambda p: p.bounds[2])
    assert corner.bounds[2:] == (shape[1] * ds, shape[0] * ds)
    for result in (read, read_xml):
        assert sum(len(a.geometry.interiors) for a in result) == 1
        back = polygons_to_mask(result.annotations, shape, ds)
        # The slide is not a multiple of ds: the last mask row/column hangs over and is clipped on import.
        np.testing.assert_array_equal(back, mask)
