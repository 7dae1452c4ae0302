"""``milkd info SLIDE [--json]``: print a slide's facts."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``info`` subcommand."""
    parser = subparsers.add_parser("info", help="print a slide's levels, resolution and vendor")
    parser.add_argument("slide", help="slide file (svs, ndpi, mrxs, tiff, ...) or DICOM-WSI folder")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Open the slide and print its facts."""
    from napari_milkd.core.slides.slide import open_slide

    source = open_slide(args.slide)
    try:
        info = source.info
    finally:
        source.close()
    if args.json:
        print(json.dumps(info.to_dict()))
        return 0
    mpp = f"{info.mpp_x:g} × {info.mpp_y:g} µm/px ({info.mpp_source})" if info.has_mpp else "unknown"
    print(f"path:        {info.path}")
    print(f"vendor:      {info.vendor}")
    print(f"resolution:  {mpp}")
    print(f"objective:   {info.objective_power:g}×" if info.objective_power else "objective:   not stated")
    print("level  width × height  downsample  µm/px")
    for i, level in enumerate(info.levels):
        level_mpp = info.level_mpp(i)
        mpp_text = f"{level_mpp:.3f}" if level_mpp is not None else "?"
        print(f"{i:>5}  {level.width:>6} × {level.height:<6}  {level.downsample:>10.4f}  {mpp_text}")
    return 0
