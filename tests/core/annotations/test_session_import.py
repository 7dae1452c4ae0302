"""``SlideSession.import_annotations``: weak labels painted by what each class means (not by guessing)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from napari_milkd.core.session.project import Project
from napari_milkd.core.session.slide_session import SlideSession
from napari_milkd.core.session.weak_labels import REGION_FREE, REGION_TUMOUR

WORK_MPP = 2.0  # the 0.25 µm/px pyramid at downsample 8


def _geojson(path: Path, features: list[tuple[str, object, tuple[float, float, float, float]]]) -> Path:
    out = []
    for kind, classification, (x0, y0, x1, y1) in features:
        props: dict = {"objectType": kind}
        if classification is not None:
            props["classification"] = classification
        ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
        out.append(
            {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": props}
        )
    path.write_text(json.dumps({"type": "FeatureCollection", "features": out}))
    return path


def _session(exact_pyramid: Path, tmp_path: Path) -> SlideSession:
    session = SlideSession(exact_pyramid, project=Project(tmp_path / "project"))
    session.prepare(WORK_MPP, 32)
    return session


def test_import_unknown_is_ignored_and_reported(exact_pyramid: Path, tmp_path: Path) -> None:
    session = _session(exact_pyramid, tmp_path)
    path = _geojson(
        tmp_path / "qupath.geojson",
        [
            ("annotation", {"names": ["Tumor", "Positive"], "color": [200, 0, 0]}, (0, 0, 400, 400)),
            ("annotation", {"name": "Necrosis"}, (400, 0, 800, 400)),  # unknown: was painted tumour-free
            ("annotation", None, (800, 0, 1200, 400)),  # unclassified: was painted tumour-free
            ("annotation", "Stroma: Positive", (0, 400, 400, 800)),
            ("detection", {"name": "Tumor"}, (400, 400, 800, 800)),  # not a region
            ("cell", {"name": "Tumor"}, (800, 400, 1200, 800)),
        ],
    )
    summary = session.import_annotations(path)
    weak = session.weak
    assert (weak[0:50, 0:50] == REGION_TUMOUR).all()
    assert not weak[0:50, 50:150].any()  # Necrosis and unclassified: nothing painted
    assert (weak[50:100, 0:50] == REGION_FREE).all()  # Stroma: Positive is stroma
    assert not weak[50:100, 50:150].any()  # the detection and the cell are skipped
    assert summary.n_regions == 4
    assert summary.skipped == {"detection": 1, "cell": 1}
    assert [(c.name, c.label, c.count) for c in summary.classes] == [
        ("Tumor", "positive", 1),
        ("Necrosis", "ignored", 1),
        ("(unclassified)", "ignored", 1),
        ("Stroma", "negative", 1),
    ]
    assert (
        summary.warnings[0].startswith("unknown classes ignored") and "'Necrosis' ×1" in summary.warnings[0]
    )
    assert "skipped 1 detection, 1 cell" in summary.warnings[0]


def test_import_class_map_and_exclusion(exact_pyramid: Path, tmp_path: Path) -> None:
    session = _session(exact_pyramid, tmp_path)
    session.weak[:] = REGION_FREE  # painted before: an exclusion erases it
    (tmp_path / "map.csv").write_text("class,label\nNecrosis,exclusion\nRegion A,positive\n")
    path = _geojson(
        tmp_path / "q.geojson",
        [
            ("annotation", {"name": "Region A"}, (0, 0, 800, 800)),
            ("annotation", {"name": "Necrosis"}, (0, 0, 400, 400)),
        ],
    )
    summary = session.import_annotations(path, class_map=tmp_path / "map.csv")
    assert not session.weak[0:50, 0:50].any()
    assert (session.weak[50:100, 50:100] == REGION_TUMOUR).all()
    assert (session.weak[120:, 120:] == REGION_FREE).all()
    assert [(c.name, c.label) for c in summary.classes] == [
        ("Region A", "positive"),
        ("Necrosis", "exclusion"),
    ]


def test_import_applies_the_slide_bounds_offset(exact_pyramid: Path, tmp_path: Path) -> None:
    """A slide with ``openslide.bounds-x/y`` (MRXS): QuPath's coordinates are relative to the bounds."""
    session = _session(exact_pyramid, tmp_path)
    session.info = dataclasses.replace(session.info, bounds_l0=(400, 160, 1000, 1000))
    path = _geojson(tmp_path / "mrxs.geojson", [("annotation", {"name": "Tumor"}, (0, 0, 80, 80))])
    session.import_annotations(path)
    rows, cols = np.nonzero(session.weak == REGION_TUMOUR)
    # level-0 (400..480, 160..240) at downsample 8: columns 50..59, rows 20..29
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (20, 29, 50, 59)
