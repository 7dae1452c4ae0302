"""A simulated pathologist in the loop: how much does each round of corrections buy?

Drives the headless :class:`~napari_milkd.core.session.slide_session.SlideSession` exactly as the widget
does, on a slide with a known truth: weak labels → teacher → student (round 0); then, each round, the
"pathologist" asks for the next ``--k`` regions to review ("next region": largest teacher/student
disagreement), repaints the student's mask there from the truth (every pixel that changes becomes a
correction), and presses "next round" (the student becomes the teacher; a new student is distilled with
the corrections as ground truth). Prints, per round, the corrected area and the Dice against the truth of

* ``dice_model``: the student's own mask (smoothed probability, no corrections pasted in): what the model
  learned;
* ``dice_mask``: the mask the user exports (the model's mask with every correction applied).

Slides: the built-in sample (default: coarse regions around its known tumour, truth from its generator),
or any slide with ``--annotations`` (QuPath GeoJSON / ASAP XML weak labels) and ``--truth`` (level-0 PNG,
non-zero = tumour), e.g. a GlaS mosaic from ``../shared/tools/glas_mosaic.py``.

    python benchmarks/bench_hitl.py --out out/hitl [--rounds 3 --k 5 --epochs 4 --backbone efficientnet_lite0]
    python benchmarks/bench_hitl.py --slide M/mosaic.tif --annotations M/weak_labels.geojson \\
        --truth M/truth.png --out out/hitl-glas

Writes ``OUT/hitl.json`` (settings, rounds, timings) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from napari_milkd.core.engine.metrics import f1_score
from napari_milkd.core.engine.presets import PRESET_NAMES, schedule
from napari_milkd.core.inference.masks import mask_from_probability
from napari_milkd.core.progress import drain
from napari_milkd.core.session.project import Project
from napari_milkd.core.session.slide_session import SlideSession
from napari_milkd.core.slides.geometry import tile_map_origins


def _truth_map(args: argparse.Namespace, session: SlideSession) -> np.ndarray:
    """The true tumour at the working resolution (bool)."""
    work = session.work
    if args.truth is None:
        from napari_milkd.core.slides.sample import truth_mask

        small = truth_mask(work.downsample)
    else:
        import imageio.v3 as iio
        from skimage.transform import resize

        level0 = iio.imread(args.truth)
        level0 = level0[..., 0] if level0.ndim == 3 else level0
        shape = (round(level0.shape[0] / work.downsample), round(level0.shape[1] / work.downsample))
        small = resize(level0 > 0, shape, order=0, anti_aliasing=False) > 0
    truth = np.zeros(work.shape, bool)
    h, w = min(small.shape[0], work.shape[0]), min(small.shape[1], work.shape[1])
    truth[:h, :w] = small[:h, :w]
    return truth


def _weak_labels(args: argparse.Namespace, session: SlideSession) -> None:
    if args.annotations is not None:
        session.import_annotations(args.annotations)
        return
    from napari_milkd.core.slides.sample import coarse_regions

    work = session.work
    session.set_weak_labels(coarse_regions(work.downsample, work.shape, session.tissue))


def _scores(session: SlideSession, truth: np.ndarray) -> dict[str, float]:
    model = mask_from_probability(session.probabilities["student"], session.tissue) > 0
    return {
        "dice_teacher": f1_score(session.mask("teacher") > 0, truth),
        "dice_model": f1_score(model, truth),
        "dice_mask": f1_score(session.mask("student") > 0, truth),
    }


def _correct(session: SlideSession, truth: np.ndarray, k: int) -> tuple[int, int]:
    """Review the next ``k`` regions, repainting the student mask from the truth; returns
    ``(tiles reviewed, pixels changed)``."""
    work = session.work
    origins = tile_map_origins(work.grid, work.downsample)
    t = work.grid.tile
    edited = session.mask("student").copy()
    tiles = 0
    for _ in range(k):
        index = session.next_region()
        if index is None:
            break
        r0, c0 = origins[index]
        edited[r0 : r0 + t, c0 : c0 + t] = truth[r0 : r0 + t, c0 : c0 + t]
        tiles += 1
    changed = int((edited != session.mask("student")).sum())
    session.record_edit("student", edited)
    return tiles, changed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slide", type=Path, default=None, help="a slide (default: the built-in sample)")
    ap.add_argument("--annotations", type=Path, default=None, help="weak labels: QuPath GeoJSON / ASAP XML")
    ap.add_argument("--truth", type=Path, default=None, help="level-0 truth PNG (non-zero = tumour)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--k", type=int, default=5, help="regions corrected per round")
    ap.add_argument("--work-mpp", type=float, default=1.0)
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--preset", default="quick", choices=PRESET_NAMES)
    ap.add_argument("--backbone", default=None)
    ap.add_argument("--epochs", type=int, default=None, help="teacher epochs (student: twice)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.slide is not None and (args.annotations is None or args.truth is None):
        ap.error("--slide needs --annotations and --truth")

    args.out.mkdir(parents=True, exist_ok=True)
    if args.slide is None:
        from napari_milkd.core.slides.sample import ensure_sample_slide

        args.slide = Path(ensure_sample_slide().path)
    config = schedule(
        args.preset, backbone=args.backbone, teacher_epochs=args.epochs, device=args.device, seed=args.seed
    )
    session = SlideSession(args.slide, project=Project(args.out / "project"))
    session.prepare(args.work_mpp, args.tile)
    _weak_labels(args, session)
    truth = _truth_map(args, session)
    px_mm2 = (session.work.downsample * session.info.mpp) ** 2 / 1e6

    t0 = time.perf_counter()
    session.train("teacher", config, resume=False)
    session.train("student", config, resume=False)
    rounds: list[dict[str, Any]] = [
        {"round": 0, "tiles": 0, "corrected_mm2": 0.0, "seconds": time.perf_counter() - t0}
        | _scores(session, truth)
    ]
    corrected_px = 0
    for r in range(1, args.rounds + 1):
        t0 = time.perf_counter()
        tiles, changed = _correct(session, truth, args.k)
        corrected_px += changed
        session.accept(drain(session.next_round_job(config)))
        rounds.append(
            {
                "round": r,
                "tiles": tiles,
                "corrected_mm2": corrected_px * px_mm2,
                "seconds": time.perf_counter() - t0,
            }
            | _scores(session, truth)
        )
        print(json.dumps(rounds[-1]), flush=True)

    record = {
        "slide": str(args.slide),
        "work_mpp": args.work_mpp,
        "tile": args.tile,
        "k": args.k,
        "config": config.to_dict(),
        "truth_mm2": float(truth.sum() * px_mm2),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "date": time.strftime("%Y-%m-%d"),
        "rounds": rounds,
    }
    (args.out / "hitl.json").write_text(json.dumps(record, indent=2) + "\n")
    print(
        "\n| round | tiles corrected | corrected mm² (total) | Dice teacher | Dice student model "
        "| Dice exported mask |"
    )
    print("|---|---|---|---|---|---|")
    for row in rounds:
        print(
            f"| {row['round']} | {row['tiles']} | {row['corrected_mm2']:.3f} | {row['dice_teacher']:.3f} | "
            f"{row['dice_model']:.3f} | {row['dice_mask']:.3f} |"
        )


if __name__ == "__main__":
    main()
