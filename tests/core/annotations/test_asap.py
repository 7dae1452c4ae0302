"""ASAP XML (``core.annotations.asap``): Camelyon16 groups, exclusions, defused parsing, fuzzing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_milkd.core.annotations import (
    mask_to_polygons,
    polygons_to_mask,
    read_asap_xml,
    write_asap_xml,
)
from napari_milkd.core.errors import InputError


def _asap_converter_mask(path: Path, shape: tuple[int, int], ds: float, order: list[str]) -> np.ndarray:
    """ASAP's ``AnnotationToMask`` with a conversion order (Camelyon16: ``_0, _1, _2``): groups in
    ``order``, each polygon overwrites the pixels it holds with its group's label (``_2`` → 0)."""
    import xml.etree.ElementTree as ET

    from shapely.geometry import Polygon

    root = ET.parse(path).getroot()
    out = np.zeros(shape, np.uint8)
    for group in order:
        for element in root.iter("Annotation"):
            if element.get("PartOfGroup") != group:
                continue
            xy = [(float(c.get("X")), float(c.get("Y"))) for c in element.iter("Coordinate")]
            out[polygons_to_mask([Polygon(xy)], shape, ds)] = 0 if group == "_2" else 1
    return out


def test_asap_round_trip_with_holes(tmp_path: Path, tricky: np.ndarray) -> None:
    polygons = mask_to_polygons(tricky, 2.0, simplify_px=0)
    path = tmp_path / "tumour.xml"
    count = write_asap_xml(path, polygons)
    text = path.read_text()
    assert count == text.count("<Annotation ")
    assert '<Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="Tumor" Color="#F4FA58">' in text
    assert '<Group Name="Tumor" PartOfGroup="None" Color="#F4FA58">' in text
    assert '<Group Name="_2" PartOfGroup="None"' in text and 'PartOfGroup="_2"' in text
    result = read_asap_xml(path)
    assert result.warnings == ()
    assert {a.class_name for a in result} == {"Tumor"}
    assert shapely.union_all([a.geometry for a in result]).equals(shapely.union_all(polygons))
    np.testing.assert_array_equal(polygons_to_mask(result.annotations, tricky.shape, 2.0), tricky)
    # ASAP's own conversion (exclusions painted last) gives the same mask: the polygon whose hole holds
    # an island was cut through that hole instead of being written with a `_2` hole over the island.
    asap = _asap_converter_mask(path, tricky.shape, 2.0, ["Tumor", "_2"])
    np.testing.assert_array_equal(asap, tricky)


def test_asap_islands_inside_exclusions_are_erased_as_asap_does(tmp_path: Path) -> None:
    """A hand-written Camelyon16 file: an `_0` island drawn inside a `_2` hole of a `_1` region.

    ASAP's AnnotationToMask with the Camelyon16 order `_0, _1, _2` paints exclusions last, so the
    island is erased (the reader used to keep it as tumour)."""
    square = [(0, 0), (100, 0), (100, 100), (0, 100)]
    hole = [(20, 20), (80, 20), (80, 80), (20, 80)]
    island = [(40, 40), (60, 40), (60, 60), (40, 60)]
    body = _asap("_1", square, name="t") + _asap("_2", hole, name="x") + _asap("_0", island, name="i")
    path = tmp_path / "camelyon16.xml"
    path.write_text(_ASAP_DOC.format(body))
    result = read_asap_xml(path)
    assert [a.properties["Name"] for a in result] == ["t"]
    assert result.annotations[0].geometry.area == 100 * 100 - 60 * 60
    assert "i: entirely covered by exclusions" in " ".join(result.warnings)
    expected = _asap_converter_mask(path, (100, 100), 1.0, ["_0", "_1", "_2"])
    np.testing.assert_array_equal(
        polygons_to_mask(result.annotations, (100, 100), 1.0), expected.astype(bool)
    )


def test_asap_nested_group_chains_resolve(tmp_path: Path) -> None:
    """``PartOfGroup`` chains: an annotation in a subgroup of ``metastases`` (Camelyon17) is tumour; a
    subgroup named ``_2`` stays an exclusion; an unknown chain resolves to its top group."""
    doc = """<?xml version="1.0"?>
<ASAP_Annotations><Annotations>
<Annotation Name="a" Type="Polygon" PartOfGroup="lesion 1" Color="#F4FA58"><Coordinates>
<Coordinate Order="0" X="0" Y="0"/><Coordinate Order="1" X="50" Y="0"/><Coordinate Order="2" X="50" Y="50"/>
<Coordinate Order="3" X="0" Y="50"/></Coordinates></Annotation>
<Annotation Name="b" Type="Polygon" PartOfGroup="_2" Color="#64FE2E"><Coordinates>
<Coordinate Order="0" X="10" Y="10"/><Coordinate Order="1" X="20" Y="10"/>
<Coordinate Order="2" X="20" Y="20"/><Coordinate Order="3" X="10" Y="20"/></Coordinates></Annotation>
<Annotation Name="c" Type="Polygon" PartOfGroup="sub" Color="#64FE2E"><Coordinates>
<Coordinate Order="0" X="100" Y="0"/><Coordinate Order="1" X="150" Y="0"/>
<Coordinate Order="2" X="150" Y="50"/>
</Coordinates></Annotation>
</Annotations><AnnotationGroups>
<Group Name="metastases" PartOfGroup="None" Color="#FF0000"><Attributes/></Group>
<Group Name="lesion 1" PartOfGroup="metastases" Color="#FF0000"><Attributes/></Group>
<Group Name="_2" PartOfGroup="metastases" Color="#00FF00"><Attributes/></Group>
<Group Name="sub" PartOfGroup="Annotator 7" Color="#00FF00"><Attributes/></Group>
<Group Name="Annotator 7" PartOfGroup="None" Color="#00FF00"><Attributes/></Group>
</AnnotationGroups></ASAP_Annotations>"""
    path = tmp_path / "nested.xml"
    path.write_text(doc)
    result = read_asap_xml(path)
    by_name = {a.properties["Name"]: a for a in result}
    assert set(by_name) == {"a", "c"}
    assert by_name["a"].class_name == "metastases" and by_name["a"].properties["groups"] == [
        "lesion 1",
        "metastases",
    ]
    assert by_name["a"].geometry.area == 50 * 50 - 10 * 10  # the nested `_2` is still a hole
    assert by_name["c"].class_name == "Annotator 7"
    # A class map naming the subgroup wins over the top group.
    mapped = read_asap_xml(path, class_map={"lesion 1": "negative"})
    assert {a.properties["Name"]: a.class_name for a in mapped}["a"] == "lesion 1"


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
