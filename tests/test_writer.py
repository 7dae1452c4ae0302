"""napari writers: Labels/Shapes layer data → GeoJSON / ASAP XML in level-0 pixels (no viewer)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from npe2 import PluginManifest
from shapely.geometry import Polygon, box

import napari_milkd
from napari_milkd._layers import l0_xy_to_napari, mask_layer_kwargs
from napari_milkd._writer import (
    layer_mpp,
    write_labels_asap,
    write_labels_geojson,
    write_shapes_asap,
    write_shapes_geojson,
)
from napari_milkd.core.annotations import mask_to_polygons, polygons_to_mask, read_asap_xml, read_geojson
from napari_milkd.core.errors import InputError

MANIFEST = Path(napari_milkd.__file__).parent / "napari.yaml"
MPP = 0.499


def _labels() -> np.ndarray:
    labels = np.zeros((30, 40), np.uint8)
    labels[3:15, 5:20] = 1
    labels[6:9, 9:12] = 0  # a hole
    labels[20:27, 25:38] = 2
    labels[0, 39] = 1  # corner pixel
    return labels


def _labels_meta(downsample: float, mpp: float | None, **metadata: object) -> dict:
    level0_scale = (mpp, mpp) if mpp is not None else (1.0, 1.0)
    meta = mask_layer_kwargs(level0_scale, downsample, "teacher")
    meta["metadata"] = ({"milkd_mpp": mpp} if mpp is not None else {}) | metadata
    return meta


@pytest.mark.parametrize(("downsample", "mpp"), [(4.0, MPP), (1.0, MPP), (16.0, None), (2.5, 0.25)])
@pytest.mark.parametrize("fmt", ["geojson", "xml"])
def test_labels_writers_round_trip_in_level0_pixels(
    tmp_path: Path, downsample: float, mpp: float | None, fmt: str
) -> None:
    labels = _labels()
    path = tmp_path / f"teacher.{fmt}"
    writer = write_labels_geojson if fmt == "geojson" else write_labels_asap
    assert writer(str(path), labels, _labels_meta(downsample, mpp)) == [str(path)]
    result = read_geojson(path) if fmt == "geojson" else read_asap_xml(path)
    tumour = [a for a in result if a.class_name == "Tumor"]
    other = [a for a in result if a.class_name == "label 2"]
    assert len(tumour) == 2 and len(other) == 1
    expected = mask_to_polygons(labels == 1, downsample)
    assert sorted(round(a.geometry.area, 6) for a in tumour) == sorted(round(p.area, 6) for p in expected)
    for annotation in tumour:
        assert any(annotation.geometry.equals(p) for p in expected)
    np.testing.assert_array_equal(polygons_to_mask(tumour, labels.shape, downsample), labels == 1)
    np.testing.assert_array_equal(polygons_to_mask(other, labels.shape, downsample), labels == 2)
    # The lone pixel at (r=0, c=39) is the level-0 square [39·ds, 40·ds) × [0, ds).
    corner = min(tumour, key=lambda a: a.geometry.area)
    assert corner.geometry.bounds == pytest.approx((39 * downsample, 0, 40 * downsample, downsample))
    if fmt == "geojson":
        feature = json.loads(path.read_text())["features"][0]
        measured = feature["properties"].get("measurements", {})
        assert ("milkd: Area µm^2" in measured) == (mpp is not None)
        assert "Area µm^2" not in measured  # QuPath computes that column itself


def test_labels_writer_class_names_multiscale_and_extra_axes(tmp_path: Path) -> None:
    labels = _labels()
    meta = _labels_meta(4.0, MPP, milkd_classes={"2": "Normal"})
    path = tmp_path / "named.geojson"
    write_labels_geojson(
        str(path),
        [labels[None], labels[None, ::2, ::2]],
        meta | {"scale": (1.0, *meta["scale"]), "translate": (0.0, *meta["translate"])},
    )
    classes = [f["properties"]["classification"] for f in json.loads(path.read_text())["features"]]
    assert {c["name"] for c in classes} == {"Tumor", "Normal"}
    assert {"name": "Tumor", "color": [200, 0, 0]} in classes


def test_labels_writer_with_offset_layer(tmp_path: Path) -> None:
    """A mask placed anywhere (not at the origin) still lands on the right level-0 pixels."""
    labels = np.zeros((4, 4), np.uint8)
    labels[1, 2] = 1
    meta = _labels_meta(2.0, 0.5)
    meta["translate"] = (meta["translate"][0] + 0.5 * 100, meta["translate"][1] + 0.5 * 40)  # 100 / 40 px
    path = tmp_path / "offset.geojson"
    write_labels_geojson(str(path), labels, meta)
    (annotation,) = read_geojson(path).annotations
    assert annotation.geometry.bounds == (40 + 4.0, 100 + 2.0, 40 + 6.0, 100 + 4.0)


def test_labels_writer_refuses_what_it_cannot_place(tmp_path: Path) -> None:
    path = str(tmp_path / "x.geojson")
    with pytest.raises(InputError, match="no labelled pixels to save"):
        write_labels_geojson(path, np.zeros((5, 5), np.uint8), _labels_meta(1.0, MPP))
    rotated = _labels_meta(1.0, MPP) | {"rotate": [[0.0, -1.0], [1.0, 0.0]]}
    with pytest.raises(InputError, match="rotated"):
        write_labels_asap(path, _labels(), rotated)
    with pytest.raises(InputError, match="only 2-D label layers"):
        write_labels_geojson(path, np.ones((2, 3, 3), np.uint8), _labels_meta(1.0, MPP))
    assert not Path(path).exists()


def _shapes_meta(mpp: float | None, **extra: object) -> dict:
    scale = (mpp, mpp) if mpp is not None else (1.0, 1.0)
    return {
        "name": "regions",
        "scale": scale,
        "translate": (0.0, 0.0),
        "metadata": {"milkd_mpp": mpp} if mpp else {},
    } | extra


@pytest.mark.parametrize("mpp", [MPP, None])
@pytest.mark.parametrize("fmt", ["geojson", "xml"])
def test_shapes_writers_round_trip_in_level0_pixels(tmp_path: Path, mpp: float | None, fmt: str) -> None:
    # Shapes over a slide hold level-0 napari data (pixel-centre origin) with scale = µm/px.
    triangle_l0 = np.array([[100.0, 50.0], [300.0, 60.0], [180.0, 240.0]])
    rectangle_l0 = box(400, 100, 500, 180)
    ellipse_centre_rc, radii_rc = np.array([600.0, 700.0]), np.array([40.0, 80.0])
    corners = ellipse_centre_rc + np.array([[-1, -1], [-1, 1], [1, 1], [1, -1]]) * radii_rc
    data = [
        l0_xy_to_napari(triangle_l0),
        l0_xy_to_napari(np.asarray(rectangle_l0.exterior.coords)[:4]),
        corners,
        np.array([[0.0, 0.0], [10.0, 10.0]]),  # a path: not a region, skipped
    ]
    meta = _shapes_meta(mpp, shape_type=["polygon", "rectangle", "ellipse", "path"])
    meta["features"] = {"class": ["Tumor", "Normal", "Tumor", "Tumor"]}
    path = tmp_path / f"regions.{fmt}"
    writer = write_shapes_geojson if fmt == "geojson" else write_shapes_asap
    assert writer(str(path), data, meta) == [str(path)]
    result = read_geojson(path) if fmt == "geojson" else read_asap_xml(path)
    assert len(result) == 3
    triangle, rectangle, ellipse = result.annotations
    assert triangle.geometry.equals(Polygon(triangle_l0)) and triangle.class_name == "Tumor"
    assert rectangle.geometry.equals(rectangle_l0) and rectangle.class_name == "Normal"
    assert ellipse.geometry.area == pytest.approx(np.pi * 40 * 80, rel=0.01)
    cx, cy = ellipse.geometry.centroid.coords[0]
    assert (cx, cy) == pytest.approx((700.5, 600.5))  # napari data (r, c) → level-0 corner (c + ½, r + ½)


def test_shapes_writer_without_regions_refuses(tmp_path: Path) -> None:
    meta = _shapes_meta(MPP, shape_type=["line"])
    with pytest.raises(InputError, match="no closed shapes to save"):
        write_shapes_geojson(str(tmp_path / "l.geojson"), [np.array([[0.0, 0.0], [5.0, 5.0]])], meta)


def test_layer_mpp_sources() -> None:
    assert layer_mpp({"metadata": {"milkd_mpp": 0.5}}) == (0.5, 0.5)
    assert layer_mpp({"metadata": {"milkd_mpp": [0.25, 0.3]}}) == (0.25, 0.3)
    assert layer_mpp({"metadata": {"milkd_slide": {"mpp_x": 0.3, "mpp_y": 0.2}}}) == (0.2, 0.3)
    assert layer_mpp({"metadata": {"milkd_mpp": -1}}) is None
    assert layer_mpp({}) is None


def test_real_napari_layers_through_npe2(tmp_path: Path) -> None:
    """The contributions as napari calls them: real (viewer-less) layers, written through npe2."""
    npe2 = pytest.importorskip("npe2")
    layers = pytest.importorskip("napari.layers")
    labels = _labels()
    layer = layers.Labels(labels, **_labels_meta(4.0, MPP))
    manager = npe2.PluginManager.instance()
    manager.discover()
    path = tmp_path / "via_npe2.geojson"
    written = npe2.write(str(path), [layer.as_layer_data_tuple()], plugin_name="napari-milkd")
    assert written == [str(path)]
    result = read_geojson(path)
    np.testing.assert_array_equal(
        polygons_to_mask([a for a in result if a.class_name == "Tumor"], labels.shape, 4.0), labels == 1
    )
    shapes = layers.Shapes(
        [l0_xy_to_napari(np.array([[10.0, 10.0], [90.0, 10.0], [50.0, 70.0]]))],
        shape_type="polygon",
        scale=(MPP, MPP),
        metadata={"milkd_mpp": MPP},
    )
    xml = tmp_path / "via_npe2.xml"
    assert npe2.write(str(xml), [shapes.as_layer_data_tuple()], plugin_name="napari-milkd") == [str(xml)]
    (triangle,) = read_asap_xml(xml).annotations
    assert triangle.geometry.equals(Polygon([(10, 10), (90, 10), (50, 70)]))


def test_every_writer_contribution_imports() -> None:
    manifest = PluginManifest.from_file(MANIFEST)
    commands = {c.id: c.python_name for c in manifest.contributions.commands or []}
    writers = manifest.contributions.writers or []
    declared = {(w.command, tuple(w.layer_types), tuple(w.filename_extensions)) for w in writers}
    assert declared == {
        ("napari-milkd.write_labels_geojson", ("labels",), (".geojson",)),
        ("napari-milkd.write_labels_asap", ("labels",), (".xml",)),
        ("napari-milkd.write_shapes_geojson", ("shapes",), (".geojson",)),
        ("napari-milkd.write_shapes_asap", ("shapes",), (".xml",)),
    }
    for writer in writers:
        module_name, attr = commands[writer.command].split(":")
        function = getattr(importlib.import_module(module_name), attr)
        assert callable(function) and function.__name__ == writer.command.split(".")[-1]


def test_writer_module_loads_neither_qt_nor_torch_nor_napari() -> None:
    code = (
        "import sys, napari_milkd._writer; "
        "bad = [m for m in ('torch', 'qtpy', 'PyQt5', 'PyQt6', 'napari') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_labels_layer_at_half_micron_over_quarter_micron_slide(tmp_path: Path) -> None:
    """A Labels layer drawn at 0.5 µm/px over a slide whose level 0 is 0.25 µm/px: each label pixel is
    2×2 level-0 pixels, whatever the layer's units say as long as they are honoured."""
    layers = pytest.importorskip("napari.layers")
    labels = np.zeros((10, 10), np.uint8)
    labels[2, 3] = 1
    slide = {"milkd_slide": {"mpp_x": 0.25, "mpp_y": 0.25}}
    cases = [
        ((0.5, 0.5), ("micrometer", "micrometer"), slide),
        ((0.0005, 0.0005), ("millimeter", "millimeter"), slide),  # was read as µm: 1000× too small
        ((500.0, 500.0), ("nanometer", "nanometer"), {"milkd_mpp": 0.25}),
    ]
    for scale, units, metadata in cases:
        layer = layers.Labels(labels, scale=scale, units=units, metadata=metadata, name="drawn")
        data, meta, _ = layer.as_layer_data_tuple()
        path = tmp_path / f"{units[0]}.geojson"
        write_labels_geojson(str(path), data, meta)
        (annotation,) = read_geojson(path).annotations
        # napari centres data pixel (2, 3) at world (1.0, 1.5) µm = level-0 (4, 6) centre → corner box.
        assert annotation.geometry.bounds == pytest.approx((5.5, 3.5, 7.5, 5.5)), units


def test_layer_in_microns_without_slide_mpp_is_refused(tmp_path: Path) -> None:
    """napari's "new labels" copies the image's scale and units but not its metadata: such a layer in
    µm with no slide µm/px used to be written as if µm were level-0 pixels (4× too small at 0.25)."""
    layers = pytest.importorskip("napari.layers")
    labels = np.zeros((10, 10), np.uint8)
    labels[2:5, 3:6] = 1
    layer = layers.Labels(labels, scale=(0.25, 0.25), units=("micrometer", "micrometer"), name="new")
    data, meta, _ = layer.as_layer_data_tuple()
    path = tmp_path / "new.geojson"
    for writer in (write_labels_geojson, write_labels_asap):
        with pytest.raises(InputError, match=r"layer 'new' is in physical units .* no slide µm/px"):
            writer(str(path), data, meta)
    assert not path.exists()
    # Pixel units without a µm/px stay level-0 pixels (slides of unknown resolution).
    plain = layers.Labels(labels, scale=(2.0, 2.0), name="px")
    data, meta, _ = plain.as_layer_data_tuple()
    write_labels_geojson(str(path), data, meta)
    (annotation,) = read_geojson(path).annotations
    assert annotation.geometry.area == pytest.approx(9 * 4)
    with pytest.raises(InputError, match="'parsec' units"):
        write_labels_geojson(str(path), labels, {"name": "odd", "units": ["parsec", "parsec"]})


def test_writer_applies_the_slide_bounds_offset_for_qupath(tmp_path: Path) -> None:
    """On a slide with ``openslide.bounds-x/y`` QuPath's coordinates start at the bounds' corner."""
    labels = np.zeros((4, 4), np.uint8)
    labels[1, 2] = 1
    meta = _labels_meta(2.0, 0.5)
    meta["metadata"]["milkd_slide"] = {"mpp_x": 0.5, "mpp_y": 0.5, "bounds_l0": [100, 40, 500, 500]}
    path = tmp_path / "mrxs.geojson"
    write_labels_geojson(str(path), labels, meta)
    (annotation,) = read_geojson(path).annotations
    assert annotation.geometry.bounds == (4.0 - 100, 2.0 - 40, 6.0 - 100, 4.0 - 40)
    (again,) = read_geojson(path, offset_l0=(100, 40)).annotations
    assert again.geometry.bounds == (4.0, 2.0, 6.0, 4.0)
