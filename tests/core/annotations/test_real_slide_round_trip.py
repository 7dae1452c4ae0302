"""GeoJSON and ASAP round trips at a real slide's level-0 coordinates (``core.annotations``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_milkd.core.annotations import (
    mask_to_polygons,
    polygons_to_mask,
    read_asap_xml,
    read_geojson,
    write_asap_xml,
    write_geojson,
)


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
