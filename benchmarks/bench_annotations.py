"""Reading and rasterising a real-size QuPath export: 100 000 features onto a 2 000 × 2 000 working map.

Prints one JSON object. The file is generated in the exact form QuPath 0.5 exports (FeatureCollection,
UUID ids, ``objectType``, ``classification`` ``{"name", "color"}``, ``isLocked``, ``measurements``):
``--features`` annotation polygons (small irregular octagons, classes Tumor / Stroma / Necrosis /
``{"names": ["Tumor", "Positive"]}`` in random order) plus ``--detections`` cell objects, which are skipped
before any geometry is built. Timed: ``read_geojson`` and ``regions_from_annotations`` (the path
``SlideSession.import_annotations`` takes). Target: < 10 s for 100 000 features on 2 CPU cores.

    .venv/bin/python benchmarks/bench_annotations.py [--features 100000] [--detections 0] [--map 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from napari_milkd.core.annotations import read_geojson, regions_from_annotations

CLASSES = [
    {"name": "Tumor", "color": [200, 0, 0]},
    {"name": "Stroma", "color": [150, 200, 150]},
    {"name": "Necrosis", "color": [50, 50, 50]},
    {"names": ["Tumor", "Positive"], "color": [200, 50, 50]},
]


def write_export(path: Path, n: int, detections: int, side_l0: float, seed: int = 0) -> None:
    """A QuPath-shaped GeoJSON export with ``n`` annotations and ``detections`` cells."""
    rng = np.random.default_rng(seed)
    angles = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    with open(path, "w", encoding="utf-8") as f:
        f.write('{"type": "FeatureCollection", "features": [')
        for i in range(n + detections):
            cx, cy = rng.uniform(0, side_l0, 2)
            radius = rng.uniform(20, 400) * rng.uniform(0.7, 1.0, 8)
            ring = np.column_stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)])
            ring = np.round(np.vstack([ring, ring[:1]]), 2).tolist()
            kind = "annotation" if i < n else "cell"
            props = {
                "objectType": kind,
                "classification": CLASSES[int(rng.integers(len(CLASSES)))],
                "isLocked": False,
                "measurements": {"Area µm^2": 1.0},
            }
            feature = {
                "type": "Feature",
                "id": str(uuid.UUID(int=int(rng.integers(2**62)))),
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": props,
            }
            f.write(("\n" if i == 0 else ",\n") + json.dumps(feature))
        f.write("\n]}\n")


def main() -> None:
    """Generate the export, time reading and rasterising it, print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=100_000)
    parser.add_argument("--detections", type=int, default=0)
    parser.add_argument("--map", type=int, default=2000, help="working-map side in pixels")
    parser.add_argument("--downsample", type=float, default=16.0)
    args = parser.parse_args()
    side_l0 = args.map * args.downsample
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "export.geojson"
        write_export(path, args.features, args.detections, side_l0)
        size_mb = path.stat().st_size / 1e6
        t0 = time.perf_counter()
        result = read_geojson(path, slide_shape_l0=(int(side_l0), int(side_l0)))
        t1 = time.perf_counter()
        labels, _ = regions_from_annotations(result.annotations, (args.map, args.map), args.downsample)
        t2 = time.perf_counter()
    print(
        json.dumps(
            {
                "features": args.features,
                "detections": args.detections,
                "file_mb": round(size_mb, 1),
                "read_s": round(t1 - t0, 2),
                "rasterise_s": round(t2 - t1, 2),
                "total_s": round(t2 - t0, 2),
                "read": len(result),
                "skipped": dict(result.skipped),
                "painted_fraction": round(float((labels > 0).mean()), 3),
                "map": args.map,
                "cpus": os.cpu_count(),
                "machine": platform.machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
