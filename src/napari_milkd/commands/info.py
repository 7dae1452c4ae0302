"""``milkd info PATH [--json]``: print a slide's facts, or a model's card.

``PATH`` is a slide file or DICOM-WSI folder (its levels, resolution and vendor), a checkpoint
(``MODEL.pt``: its model card, :mod:`napari_milkd.core.engine.card`), or a run folder holding
``teacher.pt`` / ``student.pt`` (both cards). torch is imported only for checkpoints.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

#: Suffixes taken for checkpoints rather than slides.
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
#: The checkpoints a run folder may hold, in the order they are shown.
RUN_CHECKPOINTS = ("teacher.pt", "student.pt")


def register(subparsers: Any) -> None:
    """Add the ``info`` subcommand."""
    parser = subparsers.add_parser(
        "info", help="print a slide's levels, resolution and vendor, or a model's card (MODEL.pt or RUN)"
    )
    parser.add_argument(
        "slide",
        metavar="PATH",
        help="slide file (svs, ndpi, mrxs, tiff, ...) or DICOM-WSI folder; a checkpoint MODEL.pt; or a run "
        "folder with teacher.pt / student.pt",
    )
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object")
    parser.set_defaults(func=run)


def _model_paths(path: Path) -> tuple[list[Path], bool] | None:
    """``(checkpoints, is_run)`` for a checkpoint or a run folder, ``None`` for anything else (a slide)."""
    if path.is_file() and path.suffix.lower() in CHECKPOINT_SUFFIXES:
        return [path], False
    if path.is_dir():
        found = [path / name for name in RUN_CHECKPOINTS if (path / name).is_file()]
        return (found, True) if found else None
    return None


def _models(path: Path, paths: list[Path], is_run: bool, as_json: bool) -> int:
    """Print the model card of each checkpoint (``--json``: one object)."""
    from napari_milkd.core.engine.card import (
        SAMPLE_WARNING,
        card_lines,
        describe_model,
        is_sample_only,
        model_card,
    )
    from napari_milkd.core.engine.checkpoint import load_checkpoint

    states = [(p, load_checkpoint(p)) for p in paths]
    if as_json:
        models = {
            p.stem: {
                "path": str(p),
                "summary": describe_model(state).splitlines()[0],
                "sample_only": is_sample_only(state),
                "card": model_card(state),
            }
            for p, state in states
        }
        print(json.dumps({"run": str(path), "models": models} if is_run else models[paths[0].stem]))
        return 0
    for i, (p, state) in enumerate(states):
        if i:
            print()
        print(f"model:        {p}")
        for line in card_lines(state):
            print(line)
        if is_sample_only(state):
            print(f"milkd: warning: {p.name}: {SAMPLE_WARNING}", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    """Print the slide's facts, or the model card of a checkpoint or run folder."""
    models = _model_paths(Path(args.slide))
    if models is not None:
        return _models(Path(args.slide), *models, args.json)
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
