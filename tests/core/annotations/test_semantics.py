"""What the pathologist meant: QuPath's object model, derived classes, class maps, exclusions, offsets.

Files are hand-written in the exact form QuPath 0.4–0.6 (and 0.2–0.3) export: a FeatureCollection,
``properties.objectType``, ``classification`` as ``{"name", "color"}`` or ``{"names": [...]}``, the older
``"Tumor: Positive"`` strings, ``isLocked``, ``measurements``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from shapely.geometry import box

from napari_milkd.core.annotations import (
    Annotation,
    base_class,
    class_label,
    class_table,
    load_class_map,
    polygons_to_index,
    polygons_to_mask,
    read_geojson,
    regions_from_annotations,
    write_geojson,
)
from napari_milkd.core.annotations.io import annotation_report
from napari_milkd.core.errors import InputError
from qupath_files import QUPATH_EXPORT_CLASSES, qupath_export, qupath_feature


def test_qupath_object_types_and_derived_classes(tmp_path: Path) -> None:
    result = read_geojson(qupath_export(tmp_path / "export.geojson"))
    # Only annotations are regions; detections, cells and tiles are counted, never read.
    assert dict(result.skipped) == {"detection": 3, "cell": 4, "tile": 1}
    assert len(result) == 9
    # Derived classes keep their base, never their last part.
    names = [a.class_name for a in result]
    assert names == ["Tumor", "Tumor", "Tumor", "Stroma", "Ignore*", "Necrosis", None, "Non-Tumor", "Other"]
    first = result.annotations[0]
    assert first.properties["isLocked"] is True and first.id == "0b7c5b5e-0000-4000-8000-000000000000"
    assert result.annotations[8].properties["measurements"] == {"Num Detections": 3}


def test_unknown_classes_are_ignored_never_tumour_free(tmp_path: Path) -> None:
    result = read_geojson(qupath_export(tmp_path / "export.geojson"))
    report = annotation_report(result)
    assert [r.to_dict() for r in report.classes] == QUPATH_EXPORT_CLASSES
    assert report.message == (
        "unknown classes ignored (not painted; map them with a class map): 'Necrosis' ×1, "
        "'(unclassified)' ×1, 'Other' ×1; skipped 3 detection, 4 cell, 1 tile"
    )
    labels, excluded = regions_from_annotations(result.annotations, (10, 170))
    assert not excluded.any()
    column = labels[5]
    assert set(column[0:10]) == set(column[20:30]) == set(column[40:50]) == {1}  # Tumor, derived Tumor
    assert set(column[60:70]) == set(column[140:150]) == {2}  # Stroma: Positive, Non-Tumor
    for x0 in (80, 100, 120, 160):  # Ignore*, Necrosis, unclassified, Other: not painted
        assert not column[x0 : x0 + 10].any()


def test_class_map_files_override(tmp_path: Path) -> None:
    (tmp_path / "map.json").write_text(json.dumps({"Necrosis": "negative", "tumor": "ignored"}))
    (tmp_path / "map.csv").write_text("class,label\nNecrosis,exclusion\n# comment\nOther , positive\n")
    from_json = load_class_map(tmp_path / "map.json")
    from_csv = load_class_map(tmp_path / "map.csv")
    assert from_json == {"necrosis": "negative", "tumor": "ignored"}
    assert from_csv == {"necrosis": "exclusion", "other": "positive"}
    assert class_label("Necrosis", from_json) == ("negative", True)
    assert class_label("Tumor: Positive", from_json) == ("ignored", True)  # the base class is mapped
    assert class_label("Other", from_csv) == ("positive", True)
    result = read_geojson(qupath_export(tmp_path / "export.geojson"))
    table = {r.name: r.label for r in class_table(result.annotations, from_csv)}
    assert table["Necrosis"] == "exclusion" and table["Other"] == "positive" and table["Tumor"] == "positive"
    (tmp_path / "bad.csv").write_text("Tumor,maybe\n")
    with pytest.raises(InputError, match=r"bad\.csv: line 1: label 'maybe' is not one of"):
        load_class_map(tmp_path / "bad.csv")
    with pytest.raises(InputError, match="no such class-map file"):
        load_class_map(tmp_path / "missing.json")


def test_default_class_map_variants() -> None:
    for name in ("Tumor", "tumour", "TUMOR", "Tumor region", "_0", "_1", "metastases", "Tumor: Positive"):
        assert class_label(name)[0] == "positive", name
    for name in ("Normal", "Stroma", "Non-tumor", "non tumour", "Tumour-free", "Benign", "Stroma: Negative"):
        assert class_label(name)[0] == "negative", name
    assert class_label("Ignore*") == ("ignored", True) and class_label("ignore") == ("ignored", True)
    assert class_label("_2") == ("exclusion", True)
    # QuPath's intensity classes are not tumour status, and an unknown class is never guessed.
    for name in ("Positive", "Negative", "Necrosis", None):
        assert class_label(name) == ("ignored", False), name
    assert base_class("Stroma: Positive") == "Stroma" and base_class("Tumor") == "Tumor"


def test_exclusions_erase_after_everything_else() -> None:
    anns = [
        Annotation(box(0, 0, 40, 40), "Tumor"),
        Annotation(box(10, 10, 30, 30), "_2"),  # a hole...
        Annotation(box(15, 15, 25, 25), "Tumor"),  # ...with an island drawn after it: still erased (ASAP)
        Annotation(box(0, 30, 10, 40), "Normal"),  # later over earlier
    ]
    labels, excluded = regions_from_annotations(anns, (40, 40))
    assert excluded[10:30, 10:30].all() and excluded.sum() == 400
    assert (labels[10:30, 10:30] == 0).all()
    assert (labels[30:40, 0:10] == 2).all()
    assert (labels == 1).sum() == 40 * 40 - 400 - 100


def test_painting_in_order_matches_one_polygon_at_a_time() -> None:
    rng = np.random.default_rng(3)
    polys = []
    for _ in range(300):
        x, y = rng.uniform(-20, 400, 2)
        w, h = rng.uniform(0.3, 60, 2)
        polys.append(box(x, y, x + w, y + h).buffer(rng.uniform(0, 5)))
    index = polygons_to_index(polys, (97, 101), 3.7)
    expected = np.zeros((97, 101), np.int32)
    for i, p in enumerate(polys):
        expected[polygons_to_mask([p], (97, 101), 3.7)] = i + 1
    np.testing.assert_array_equal(index, expected)


def test_geojson_offset_and_rounding(tmp_path: Path) -> None:
    """Slides with a bounds offset (MRXS): QuPath's coordinates are relative to the bounds."""
    path = tmp_path / "mrxs.geojson"
    polygon = box(1000.123456, 2000.987654, 1100.5, 2100.25)
    write_geojson(path, [polygon], offset_l0=(1000, 2000))
    ring = json.loads(path.read_text())["features"][0]["geometry"]["coordinates"][0]
    assert sorted({tuple(p) for p in ring}) == sorted(
        {(0.12, 0.99), (100.5, 0.99), (100.5, 100.25), (0.12, 100.25)}
    )
    (back,) = read_geojson(path, offset_l0=(1000, 2000)).annotations
    assert back.geometry.bounds == pytest.approx((1000.12, 2000.99, 1100.5, 2100.25))


def test_qupath_02_legacy_object_types(tmp_path: Path) -> None:
    """QuPath 0.2–0.3 name the object type in the Feature id and write ``colorRGB``."""
    ring = [[0, 0], [10, 0], [10, 10], [0, 0]]
    features = [
        {"type": "Feature", "id": "PathAnnotationObject",
         "geometry": {"type": "Polygon", "coordinates": [ring]},
         "properties": {"classification": {"name": "Tumor", "colorRGB": -3670016}, "isLocked": False,
                        "measurements": []}},
        {"type": "Feature", "id": "PathCellObject", "geometry": {"type": "Polygon", "coordinates": [ring]},
         "properties": {"classification": {"name": "Tumor: Positive", "colorRGB": -1}}},
    ]  # fmt: skip
    path = tmp_path / "q02.json"
    path.write_text(json.dumps(features))
    result = read_geojson(path)
    assert dict(result.skipped) == {"cell": 1}
    (annotation,) = result.annotations
    assert annotation.class_name == "Tumor" and annotation.id is None


def test_only_detections_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "cells.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [qupath_feature(0, "cell", None)]}))
    with pytest.raises(InputError, match=r"no annotations to read \(skipped 1 cell; only annotation"):
        read_geojson(path)
    assert len(read_geojson(path, object_types=("annotation", "cell"))) == 1


@pytest.mark.parametrize("pixels_per_call", [1, 37, 1000])
def test_rasterising_in_small_numpy_calls_gives_the_same_maps(
    pixels_per_call: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rasterisers split their numpy calls (so a worker does not hold the GIL for long); any
    split gives the maps of one call over everything."""
    from napari_milkd.core.annotations import geometry

    rng = np.random.default_rng(3)
    polys = [
        box(x, y, x + w, y + h) for x, y, w, h in rng.uniform([-20, -20, 1, 1], [300, 300, 90, 90], (40, 4))
    ]
    monkeypatch.setattr(geometry, "PIXELS_PER_CALL", 1 << 30)
    index, mask = polygons_to_index(polys, (83, 97), 3.1), polygons_to_mask(polys, (83, 97), 3.1)
    assert mask.any() and (index > 1).any()
    monkeypatch.setattr(geometry, "PIXELS_PER_CALL", pixels_per_call)
    np.testing.assert_array_equal(polygons_to_index(polys, (83, 97), 3.1), index)
    np.testing.assert_array_equal(polygons_to_mask(polys, (83, 97), 3.1), mask)
