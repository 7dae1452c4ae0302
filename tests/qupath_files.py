"""Test files in the exact form QuPath writes them, shared by the core, CLI and GUI tests.

(``tests/`` is on ``sys.path`` because its ``conftest.py`` is: import as ``from qupath_files import ...``.)
"""

from __future__ import annotations

import json
from pathlib import Path


def qupath_feature(x0: float, kind: str, classification: object, **extra: object) -> dict:
    """A 10×10 level-0 px square at ``x0`` of QuPath object type ``kind`` (``annotation``, ``detection``,
    ``cell``, ``tile``) with ``classification`` as QuPath writes it (dict, legacy string, or None)."""
    ring = [[x0, 0], [x0 + 10, 0], [x0 + 10, 10], [x0, 10], [x0, 0]]
    props: dict = {"objectType": kind}
    if classification is not None:
        props["classification"] = classification
    props.update(extra)
    return {
        "type": "Feature",
        "id": f"0b7c5b5e-0000-4000-8000-{int(x0):012d}",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": props,
    }


def qupath_export(path: Path) -> Path:
    """A QuPath 0.5 export of a slide with annotations, detections, cells and a tile."""
    features = [
        qupath_feature(0, "annotation", {"name": "Tumor", "color": [200, 0, 0]}, isLocked=True),
        qupath_feature(20, "annotation", {"names": ["Tumor", "Positive"], "color": [200, 50, 50]}),
        qupath_feature(40, "annotation", "Tumor: Positive"),
        qupath_feature(60, "annotation", {"names": ["Stroma", "Positive"], "color": [150, 200, 150]}),
        qupath_feature(80, "annotation", {"name": "Ignore*", "color": [180, 180, 180]}),
        qupath_feature(100, "annotation", {"name": "Necrosis", "color": [50, 50, 50]}),
        qupath_feature(120, "annotation", None),
        qupath_feature(140, "annotation", {"name": "Non-Tumor", "color": [0, 0, 200]}),
        qupath_feature(160, "annotation", {"name": "Other"}, measurements={"Num Detections": 3}),
        *[qupath_feature(200 + i, "detection", {"name": "Tumor"}) for i in range(3)],
        *[qupath_feature(300 + i, "cell", {"names": ["Tumor", "Positive"]}) for i in range(4)],
        qupath_feature(400, "tile", None),
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


#: The class table of :func:`qupath_export` under the default semantics, as ``milkd annotations --json``
#: prints it: base classes of derived ones, ``Ignore*`` and unknown classes ignored, never tumour-free.
QUPATH_EXPORT_CLASSES = [
    {"name": "Tumor", "label": "positive", "count": 3},
    {"name": "Stroma", "label": "negative", "count": 1},
    {"name": "Ignore*", "label": "ignored", "count": 1},
    {"name": "Necrosis", "label": "ignored", "count": 1},
    {"name": "(unclassified)", "label": "ignored", "count": 1},
    {"name": "Non-Tumor", "label": "negative", "count": 1},
    {"name": "Other", "label": "ignored", "count": 1},
]
