"""Coarse-to-fine cascade against the full prediction, in one run, on one slide (issue 14).

Runs what ``milkd predict`` runs (``core.inference.cohort.slide_job``: tissue, grid at the checkpoint's
µm/px, streamed prediction, the mask policy, GeoJSON) once without the cascade and once per ``--low``
with it, into ``--work``, and reports per run: wall seconds (the whole job, from the same process),
coarse seconds, the tiles the model ran, the fraction of working tiles refined, and the Dice of the
final mask (``labels/tumour/0``) against the full prediction's mask, read band by band (nothing
map-sized in float). With ``--truth`` (a ``slide,truth`` manifest as ``milkd evaluate --slides`` reads
it) also Dice, IoU and HD95 of each mask against the truth, scored as ``milkd evaluate`` scores
(``truth_on_map``, ``score_masks``). Prints one JSON object per run and a Markdown table.

    .venv/bin/python benchmarks/bench_cascade.py --slide runs/mosaic/test/mosaic.tif \\
        --run runs/mosaic/w2t64_s0 --truth runs/mosaic/test.csv --low 0.05 0.1 0.2 --work out/cascade
    .venv/bin/python benchmarks/bench_cascade.py --slide SMALL.tif --run RUN --dense-slide 40000 --low 0.4

``--dense-slide N`` first writes an ``N``² px slide (0.62 µm/px unless the source says otherwise) by
repeating ``--slide`` periodically (every pixel of the result is a pixel of ``--slide``: real tissue, as
dense as the source), tile by tile, pyramid 1/4/16/64, JPEG, and runs on that instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from napari_milkd.core.inference.cascade import DEFAULT_FACTOR, DEFAULT_LOW


def _dice_bands(a: Any, b: Any, rows: int = 2048) -> tuple[float, int, int]:
    """Dice of two uint8 0/1 zarr masks of one shape, band by band; (dice, |a|, |b|)."""
    inter = sa = sb = 0
    for r0 in range(0, a.shape[0], rows):
        x = np.asarray(a[r0 : r0 + rows]) > 0
        y = np.asarray(b[r0 : r0 + rows]) > 0
        inter += int((x & y).sum())
        sa += int(x.sum())
        sb += int(y.sum())
    return (2 * inter / (sa + sb) if sa + sb else 1.0), sa, sb


def dense_slide(source_path: Path, out: Path, size: int, tile: int = 256) -> Path:
    """An ``size``² slide repeating the level 0 of ``source_path`` periodically (cropped to a multiple of
    64 px so that every pyramid level repeats the same picture), written tile by tile."""
    import tifffile

    from napari_milkd.core.slides.slide import open_slide

    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    src = open_slide(source_path)
    try:
        h, w = src.info.shape
        h, w = h // 64 * 64, w // 64 * 64
        base = np.asarray(src.read(0, 0, 0, h, w))[:, :, :3]
        mpp = float(src.info.mpp or 0.62)
    finally:
        src.close()

    def tiles(ds: int):  # type: ignore[no-untyped-def]
        small = base.reshape(h // ds, ds, w // ds, ds, 3).mean(axis=(1, 3)).round().astype(np.uint8)
        sh, sw = small.shape[:2]
        n = -(-size // ds)
        for ty in range(0, n, tile):
            rows = np.arange(ty, ty + tile) % sh
            band = small[rows]
            for tx in range(0, n, tile):
                yield band[:, np.arange(tx, tx + tile) % sw]

    tmp = out.with_suffix(".part.tif")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        for j, ds in enumerate((1, 4, 16, 64)):
            n, res = -(-size // ds), 1e4 / (mpp * ds)
            tif.write(tiles(ds), shape=(n, n, 3), dtype=np.uint8, tile=(tile, tile), compression="jpeg",
                      compressionargs={"level": 90}, photometric="rgb", subfiletype=0 if j == 0 else 1,
                      resolution=(res, res), resolutionunit="CENTIMETER", metadata=None)  # fmt: skip
    os.replace(tmp, out)
    return out


def run_job(slide: Path, run: Path, out: Path, device: str, batch: int, threads: int, **cascade: Any) -> dict:
    from napari_milkd.core.inference.cohort import PredictJob, resolve_checkpoint, slide_job
    from napari_milkd.core.progress import drain

    if out.exists():
        shutil.rmtree(out)
    job = PredictJob(
        slide=str(slide),
        checkpoint=str(resolve_checkpoint(run)),
        out_dir=str(out),
        name=slide.stem,
        batch_size=batch,
        device=device,
        read_threads=threads,
        resume=False,
        **cascade,
    )
    t0 = time.perf_counter()
    summary = drain(slide_job(job))
    return {**summary.to_dict(), "wall_s": round(time.perf_counter() - t0, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slide", type=Path, required=True)
    ap.add_argument("--run", type=Path, required=True, help="run folder or .pt (as milkd predict --run)")
    ap.add_argument("--truth", type=Path, default=None, help="slide,truth manifest (milkd evaluate --slides)")
    ap.add_argument("--work", type=Path, default=Path("out/bench_cascade"))
    ap.add_argument("--factor", type=float, default=DEFAULT_FACTOR)
    ap.add_argument("--low", type=float, nargs="+", default=[DEFAULT_LOW])
    ap.add_argument("--high", type=float, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--read-threads", type=int, default=4)
    ap.add_argument("--dense-slide", type=int, default=None, metavar="N", help="repeat --slide onto N² px")
    ap.add_argument("--skip-full", action="store_true", help="cascade only (no Dice against the full)")
    a = ap.parse_args()

    import torch

    from napari_milkd.core.inference.stream import open_prediction

    slide = a.slide
    if a.dense_slide:
        t0 = time.perf_counter()
        slide = dense_slide(a.slide, a.work / f"dense{a.dense_slide}.tif", a.dense_slide)
        print(f"dense slide {slide} ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    card = {
        "machine": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_before": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "argv": sys.argv,
    }
    print(json.dumps({"card": card}), flush=True)
    opts = dict(device=a.device, batch=a.batch_size, threads=a.read_threads)
    runs: list[tuple[str, dict]] = []
    if not a.skip_full:
        runs.append(("full", run_job(slide, a.run, a.work / "full", **opts)))
        print(json.dumps({"run": "full", **runs[-1][1]}), flush=True)
    for low in a.low:
        name = f"cascade f{a.factor:g} low{low:g}" + ("" if a.high is None else f" high{a.high:g}")
        out = a.work / f"cascade_f{a.factor:g}_low{low:g}"
        cascade = dict(cascade=True, cascade_factor=a.factor, cascade_low=low, cascade_high=a.high)
        runs.append((name, run_job(slide, a.run, out, **opts, **cascade)))
        print(json.dumps({"run": name, **runs[-1][1]}), flush=True)

    truth = score = None
    if a.truth is not None:
        from napari_milkd.core.session.cohort_evaluation import score_masks, truth_on_map
        from napari_milkd.core.session.cohort_manifest import read_truth_manifest
        from napari_milkd.core.slides.geometry import plan_work
        from napari_milkd.core.slides.slide import open_slide

        (row,) = read_truth_manifest(a.truth)
        facts = open_prediction(runs[0][1]["zarr"])[2]
        source = open_slide(row.slide)
        try:
            work = plan_work(
                source, work_mpp=facts["mpp"], tile=facts["tile"], overlap=facts["tile"] - facts["stride"]
            )
            truth = truth_on_map(row, source, work)
            map_um = float(work.downsample * source.info.mpp)
        finally:
            source.close()
        score = lambda mask: score_masks(np.asarray(mask[...]) > 0, truth, map_um, row.name).to_dict()  # noqa: E731

    full_s = runs[0][1]["wall_s"] if not a.skip_full else None
    lines = [
        "| run | wall s | coarse s | tiles run (coarse + fine) | refined / working tiles | speed-up vs full "
        "| Dice vs full mask | tumour map px |" + (" Dice vs truth | IoU | HD95 µm |" if score else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|---|---|" if score else ""),
    ]
    full_mask = open_prediction(runs[0][1]["zarr"])[1] if not a.skip_full else None
    report = []
    for name, r in runs:
        mask = open_prediction(r["zarr"])[1]
        dice, px, _ = _dice_bands(mask, full_mask) if full_mask is not None else (None, None, None)
        if px is None:
            px = _dice_bands(mask, mask)[1]
        refined = r.get("refined")
        frac = refined / r["n_tiles"] if refined is not None and r["n_tiles"] else 1.0
        entry = {
            "run": name,
            "wall_s": r["wall_s"],
            "coarse_s": r["timings"].get("coarse_s"),
            "n_computed": r["n_computed"],
            "n_tiles": r["n_tiles"],
            "refined": refined,
            "refined_fraction": round(frac, 4),
            "speedup": round(full_s / r["wall_s"], 3) if full_s else None,
            "dice_vs_full": None if dice is None else round(dice, 4),
            "tumour_px": px,
        }
        if score:
            entry["truth"] = score(mask)
        report.append(entry)
        row_md = (
            f"| {name} | {r['wall_s']:.1f} | {entry['coarse_s'] or '—'} | {r['n_computed']} | "
            f"{refined if refined is not None else r['n_tiles']} / {r['n_tiles']} ({frac:.1%}) | "
            f"{entry['speedup'] if entry['speedup'] else '—'} | "
            f"{'—' if dice is None else f'{dice:.4f}'} | {px} |"
        )
        if score:
            t = entry["truth"]
            hd = "—" if t["hd95_um"] is None else f"{t['hd95_um']:.0f}"
            row_md += f" {t['dice']:.3f} | {t['iou']:.3f} | {hd} |"
        lines.append(row_md)
    print(json.dumps({"report": report, "load_after": os.getloadavg()}), flush=True)
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
