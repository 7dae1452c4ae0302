"""OME-Zarr labels (``core.annotations.omezarr``): NGFF metadata, placement, atomic overwrite."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_milkd.core.annotations import (
    ome_zarr_transform,
    read_ome_zarr_labels,
    write_ome_zarr_labels,
)
from napari_milkd.core.errors import InputError


def test_ome_zarr_labels_round_trip_and_metadata(tmp_path: Path, tricky: np.ndarray) -> None:
    labels = tricky.astype(np.uint8)
    labels[7:, 8:] *= 2
    target = tmp_path / "slide.zarr"
    write_ome_zarr_labels(
        target, labels, name="teacher", mpp=0.5, downsample=4.0, colors={1: (255, 0, 0, 128)}
    )
    back, downsample = read_ome_zarr_labels(target, "teacher")
    np.testing.assert_array_equal(back, labels)
    assert downsample == 4.0
    root = json.loads((target / "zarr.json").read_text())
    assert root["zarr_format"] == 3 and root["attributes"]["ome"]["version"] == "0.5"
    assert root["attributes"]["ome"]["multiscales"][0]["name"] == "image"  # an image at the root
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
    assert meta["image-label"]["properties"] == [{"label-value": 1, "class": "Tumor"}]
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
