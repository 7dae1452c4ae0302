"""``milkd annotations FILE [--slide SLIDE] [--class-map FILE] [--json] [--to OUT]``: what a file means.

Reads a QuPath GeoJSON or ASAP XML file and prints every class found with its count and the label it
will get (``positive``, ``negative``, ``ignored``, ``exclusion``), and how many objects were skipped by
type; ``--to`` converts between the two formats, classes and holes kept. A thin face over
``core.annotations`` (the same reading and report as ``SlideSession.import_annotations``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from napari_milkd.core.errors import InputError


def register(subparsers: Any) -> None:
    """Add the ``annotations`` subcommand."""
    parser = subparsers.add_parser(
        "annotations", help="show what a QuPath GeoJSON / ASAP XML file means; convert between them"
    )
    parser.add_argument("file", help="QuPath GeoJSON (.geojson/.json) or ASAP XML (.xml)")
    parser.add_argument(
        "--slide", help="the slide: clips to it, and applies its bounds offset (MRXS) to QuPath files"
    )
    parser.add_argument("--class-map", help="class → label file: JSON object or CSV 'class,label'")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object")
    parser.add_argument("--to", metavar="OUT", help="write OUT.geojson (QuPath) or OUT.xml (ASAP)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Read the file, print its class table, convert when asked."""
    from napari_milkd.core.annotations.io import (
        annotation_format,
        annotation_report,
        class_map_from,
        read_annotations,
        write_annotations,
    )

    class_map = class_map_from(args.class_map)
    shape, offset = None, (0, 0)
    if args.slide:
        from napari_milkd.core.slides.slide import open_slide

        source = open_slide(args.slide)
        try:
            shape, offset = source.info.shape, source.info.offset_l0
        finally:
            source.close()
    if args.to:
        annotation_format(args.to, sniff=False)  # refuse an unknown target before reading anything
        _refuse_writing_over_the_input(args.file, args.to)
    result = read_annotations(args.file, slide_shape_l0=shape, offset_l0=offset, class_map=class_map)
    report = annotation_report(result, class_map)
    written = None
    if args.to:
        written = write_annotations(args.to, result.annotations, class_map=class_map, offset_l0=offset)
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        width = max([5, *(len(row.name) for row in report.classes)])
        print(f"{'class':<{width}}  {'label':<9}  count")
        for row in report.classes:
            print(f"{row.name:<{width}}  {row.label:<9}  {row.count}")
        skipped = ", ".join(f"{n} {kind}" for kind, n in report.skipped.items())
        print(f"skipped: {skipped or 'nothing'}")
        if written is not None:
            print(f"wrote {written} polygons to {args.to}")
    for line in ([report.message] if report.message else []) + list(report.warnings):
        sys.stderr.write(f"milkd: {line}\n")
    return 0


def _refuse_writing_over_the_input(source: str, target: str) -> None:
    """Refuse ``--to`` naming the file being read (or a link to it): the conversion keeps classes and
    geometry only, so the user's original (QuPath's measurements, ids, colours) would be replaced."""
    try:
        same = os.path.samefile(source, target)
    except OSError:  # the target does not exist yet (or the source does not: reading says so)
        return
    if same:
        raise InputError(
            f"--to {target} is the file being read; it is kept: write the conversion to another name"
        )
