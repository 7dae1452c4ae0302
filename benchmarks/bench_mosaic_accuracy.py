"""GlaS mosaics: whole-slide training and evaluation on held-out patients (issue 11, docs/benchmarks.md).

End to end through the CLI, from a fresh clone with ``../shared`` present:

1. ``data``: GlaS dev patients split into two training mosaics (patients 2, 9 and 7, 8, 10, 14, 15, 16),
   a validation mosaic (1, 13) and a held-out test mosaic (3, 4, 5, 6, 11), each built with
   ``../shared/tools/glas_mosaic.py --cols 6 --seed 0``; manifests ``train.csv`` (split column) and
   ``test.csv`` (truth = the mosaic's ``truth.png``);
2. ``trivial``: the held-out mosaic's weak "Tumor" rectangles themselves as the prediction, rasterised and
   scored on the working map exactly as ``milkd evaluate --slides`` does (``truth_on_map``, ``score_masks``);
3. ``weak``: ``milkd train --slides train.csv`` per seed, then ``milkd evaluate --slides test.csv`` of its
   teacher and of its student;
4. ``full``: full supervision on tiles with masks — ``milkd train --slides`` refuses ``--supervision
   full``, so every tissue tile of the training and validation mosaics is read through the same tile grid
   at the same µm/px and tile size, with its crop of the true mask, into an image folder, and trained with
   ``milkd train --images … --supervision full --image-mpp WORK_MPP`` (validation split by GlaS patient),
   then scored on the held-out mosaic with ``milkd evaluate --slides``;
5. ``rss`` (not in the default steps): a sparse 40 000² px slide of the held-out images (written tile by
   tile), then ``milkd predict`` of the first seed's student on it under ``/usr/bin/time -v`` (peak RSS).

    python benchmarks/bench_mosaic_accuracy.py --out runs/mosaic --work-mpp 2 --tile 64 --seeds 0 1
    python benchmarks/bench_mosaic_accuracy.py --out runs/mosaic --work-mpp 2 --tile 64 --steps rss

Writes every run under ``OUT`` and ``OUT/summary-w<mpp>t<tile>[_<name>].json``; prints one JSON line per
result.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / ".." / "shared"
GLAS = SHARED / "data" / "glas_dev"
TOOL = SHARED / "tools" / "glas_mosaic.py"
MILKD = [sys.executable, "-m", "napari_milkd"]
GROUPS = {
    "train_a": {"2", "9"},
    "train_b": {"7", "8", "10", "14", "15", "16"},
    "val": {"1", "13"},
    "test": {"3", "4", "5", "6", "11"},
}


def emit(record: dict[str, Any], results: list[dict[str, Any]]) -> None:
    results.append(record)
    print(json.dumps(record), flush=True)


def run(cmd: list[str], log: Path | None = None) -> str:
    """Run ``cmd``; stderr to ``log`` (progress bars); stdout returned. Raises on failure."""
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    if log is None:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    else:
        with log.open("w") as err:
            done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}; see {log}")
    return done.stdout


def build_data(out: Path) -> None:
    rows = list(csv.DictReader((GLAS / "grade_train.csv").open(newline="")))
    for name, patients in GROUPS.items():
        with (out / f"{name}_labels.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(r for r in rows if r["patient_id"] in patients)
        if not (out / name / "mosaic.tif").is_file():
            run([sys.executable, str(TOOL), "--images", str(GLAS / "images"), "--masks", str(GLAS / "masks"),
                 "--labels", str(out / f"{name}_labels.csv"), "--out", str(out / name), "--cols", "6",
                 "--seed", "0"])  # fmt: skip
    (out / "train.csv").write_text(
        "slide,annotations,split\n"
        "train_a/mosaic.tif,train_a/weak_labels.geojson,train\n"
        "train_b/mosaic.tif,train_b/weak_labels.geojson,train\n"
        "val/mosaic.tif,val/weak_labels.geojson,val\n"
    )
    (out / "test.csv").write_text("slide,truth\ntest/mosaic.tif,test/truth.png\n")


def trivial(out: Path, mpp: float, tile: int) -> dict[str, Any]:
    from napari_milkd.core.session.cohort_evaluation import score_masks, truth_on_map
    from napari_milkd.core.session.cohort_manifest import read_truth_manifest
    from napari_milkd.core.slides.geometry import plan_work
    from napari_milkd.core.slides.slide import open_slide

    (row,) = read_truth_manifest(out / "test.csv")
    source = open_slide(row.slide)
    try:
        work = plan_work(source, work_mpp=mpp, tile=tile, overlap=tile // 8)
        truth = truth_on_map(row, source, work)
        rects = dataclasses.replace(
            row, truth=None, truth_annotations=row.slide.parent / "weak_labels.geojson"
        )
        predicted = truth_on_map(rects, source, work)
        assert source.info.mpp is not None
        score = score_masks(predicted, truth, float(work.downsample * source.info.mpp), row.name)
    finally:
        source.close()
    return {"what": "trivial: Tumor rectangles", **score.to_dict()}


def evaluate(out: Path, run_dir: Path, model: str) -> dict[str, Any]:
    started = time.perf_counter()
    cmd = [*MILKD, "evaluate", "--slides", str(out / "test.csv"), "--run", str(run_dir), "--model", model,
           "--device", "cpu", "--json"]  # fmt: skip
    text = run(cmd, out / f"{run_dir.name}.evaluate-{model}.log")
    result = json.loads(text)
    return {**result["overall"], "checkpoint": result["checkpoint"], "seconds": time.perf_counter() - started}


def timed(cmd: list[str], log: Path) -> dict[str, Any]:
    """``cmd`` under GNU ``/usr/bin/time -v``: peak RSS (MB) and wall seconds."""
    started = time.perf_counter()
    run(["/usr/bin/time", "-v", *cmd], log)
    text = log.read_text()
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    return {
        "wall_s": round(time.perf_counter() - started, 1),
        "peak_rss_mb": int(rss[1]) / 1024 if rss else None,
    }


def full_tiles(out: Path, mpp: float, tile: int) -> Path:
    """Every tissue tile of the training and validation mosaics with its true-mask crop, as an image folder
    (``labels.csv``: name, label = the grade of the image under the tile's centre, patient)."""
    from PIL import Image

    from napari_milkd.core.session.cohort_evaluation import truth_on_map
    from napari_milkd.core.session.cohort_manifest import TruthSlide
    from napari_milkd.core.slides.geometry import plan_work, read_tiles, tile_crops
    from napari_milkd.core.slides.slide import open_slide

    folder = out / f"full_tiles_w{mpp:g}t{tile}"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    patients = {r["name"]: r["patient_id"] for r in csv.DictReader((GLAS / "grade_train.csv").open())}
    rows = []
    for name in ("train_a", "train_b", "val"):
        slide = out / name / "mosaic.tif"
        layout = list(csv.DictReader((out / name / "layout.csv").open()))
        source = open_slide(slide)
        try:
            work = plan_work(source, work_mpp=mpp, tile=tile)
            truth = truth_on_map(
                TruthSlide(slide, None, out / name / "truth.png", 1.0, None, 0), source, work
            )
            index = np.arange(len(work.grid))
            images = read_tiles(source, work.grid, index)
        finally:
            source.close()
        masks = tile_crops(truth.astype(np.uint8), work, index, fill=0)
        centres = work.grid.origins_l0 + work.grid.tile_l0 / 2
        for i in index:
            y, x = centres[i]
            hit = [
                r
                for r in layout
                if int(r["x"]) <= x < int(r["x"]) + int(r["width"])
                and int(r["y"]) <= y < int(r["y"]) + int(r["height"])
            ]
            stem = f"{name}_{i:04d}"
            Image.fromarray(images[i]).save(folder / "images" / f"{stem}.png")
            Image.fromarray(masks[i] * 255).save(folder / "masks" / f"{stem}.png")
            grade = hit[0]["grade"] if hit else "benign"
            patient = patients[hit[0]["name"]] if hit else f"bg_{name}"
            rows.append({"name": stem, "label": grade, "patient": patient})
    with (folder / "labels.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["name", "label", "patient"])
        writer.writeheader()
        writer.writerows(rows)
    return folder


def big_slide(out: Path, size: int = 40000, step: int = 4992, tile: int = 256) -> Path:
    """A sparse ``size``² px slide at 0.62 µm/px of the held-out images, repeated on a grid ``step`` px
    apart, written tile by tile (pyramid 1/4/16/64, JPEG): never the whole canvas in memory."""
    import tifffile
    from PIL import Image

    path = out / "big40k" / "slide40k.tif"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [r["name"] for r in csv.DictReader((out / "test_labels.csv").open())]
    images = [np.asarray(Image.open(GLAS / "images" / f"{n}.png").convert("RGB")) for n in names]
    spots = [(y, x) for y in range(512, size - 1024, step) for x in range(512, size - 1024, step)]
    places = [(y, x, k % len(images)) for k, (y, x) in enumerate(spots)]
    background = np.random.default_rng(1).normal(242, 2.0, (tile, tile, 3)).clip(0, 255).astype(np.uint8)

    def tiles(ds: int):
        small = []
        for img in images:
            h, w = img.shape[0] // ds * ds, img.shape[1] // ds * ds
            small.append(img[:h, :w].reshape(h // ds, ds, w // ds, ds, 3).mean(axis=(1, 3)).round())
        n = -(-size // ds)
        for ty in range(0, n, tile):
            for tx in range(0, n, tile):
                block = background.copy()
                for y, x, i in places:
                    y, x, im = y // ds, x // ds, small[i]
                    y0, x0 = max(y, ty), max(x, tx)
                    y1, x1 = min(y + im.shape[0], ty + tile), min(x + im.shape[1], tx + tile)
                    if y0 < y1 and x0 < x1:
                        block[y0 - ty : y1 - ty, x0 - tx : x1 - tx] = im[y0 - y : y1 - y, x0 - x : x1 - x]
                yield block

    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for j, ds in enumerate((1, 4, 16, 64)):
            n, res = -(-size // ds), 1e4 / (0.62 * ds)
            tif.write(tiles(ds), shape=(n, n, 3), dtype=np.uint8, tile=(tile, tile), compression="jpeg",
                      compressionargs={"level": 90}, photometric="rgb", subfiletype=0 if j == 0 else 1,
                      resolution=(res, res), resolutionunit="CENTIMETER", metadata=None)  # fmt: skip
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/mosaic"))
    ap.add_argument("--work-mpp", type=float, default=2.0)
    ap.add_argument("--tile", type=int, default=64)
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument(
        "--steps", default="data,trivial,weak,full", help="comma list of data,trivial,weak,full,rss"
    )
    ap.add_argument(
        "--train-args",
        default="",
        help="more `milkd train` flags for the weak runs (an ablation, e.g. '--teacher-loss gm_bce'); "
        "a single flag needs the = form (--train-args=--no-augment), else argparse takes it for an option",
    )
    ap.add_argument("--name", default="", help="suffix of the weak runs' folders (the ablation's name)")
    a = ap.parse_args()
    if not (TOOL.is_file() and GLAS.is_dir()):
        raise SystemExit(f"needs ../shared (GlaS and glas_mosaic.py): {SHARED}")
    out, steps, results = a.out.resolve(), set(a.steps.split(",")), []
    out.mkdir(parents=True, exist_ok=True)
    tag = f"w{a.work_mpp:g}t{a.tile}" + (f"_{a.name}" if a.name else "")
    setting = {"work_mpp": a.work_mpp, "tile": a.tile, "preset": a.preset, "train_args": a.train_args}
    if "data" in steps or not (out / "test.csv").is_file():
        build_data(out)
    if "trivial" in steps:
        emit({**setting, **trivial(out, a.work_mpp, a.tile)}, results)
    common = ["--preset", a.preset, "--device", "cpu"]
    if "weak" in steps:
        for seed in a.seeds:
            run_dir = out / f"{tag}_s{seed}"
            cmd = [*MILKD, "train", "--slides", str(out / "train.csv"), "--out", str(run_dir),
                   "--work-mpp", f"{a.work_mpp:g}", "--tile", str(a.tile), *common,
                   "--seed", str(seed), *shlex.split(a.train_args)]  # fmt: skip
            trained = timed(cmd, out / f"{run_dir.name}.log")
            emit({**setting, "what": "train weak", "seed": seed, **trained}, results)
            for model in ("teacher", "student"):
                emit({**setting, "what": model, "seed": seed, **evaluate(out, run_dir, model)}, results)
    if "full" in steps:
        folder = full_tiles(out, a.work_mpp, a.tile)
        for seed in a.seeds:
            run_dir = out / f"{tag}_full_s{seed}"
            cmd = [*MILKD, "train", "--images", str(folder / "images"),
                   "--labels", str(folder / "labels.csv"), "--name-column", "name",
                   "--label-column", "label", "--positive", "malignant",
                   "--masks", str(folder / "masks"), "--patient-column", "patient", "--supervision", "full",
                   "--size", str(a.tile), "--image-mpp", f"{a.work_mpp:g}", "--out", str(run_dir), *common,
                   "--seed", str(seed)]  # fmt: skip
            trained = timed(cmd, out / f"{run_dir.name}.log")
            emit({**setting, "what": "train full", "seed": seed, **trained}, results)
            scored = evaluate(out, run_dir, "auto")
            emit({**setting, "what": "full supervision", "seed": seed, **scored}, results)
    if "rss" in steps:
        slide = big_slide(out)
        cmd = [*MILKD, "predict", "--run", str(out / f"{tag}_s{a.seeds[0]}"), str(slide), "--out",
               str(out / "big40k" / f"pred_{tag}"), "--device", "cpu"]  # fmt: skip
        emit({**setting, "what": "predict 40000² slide", **timed(cmd, out / f"big40k_{tag}.log")}, results)
    (out / f"summary-{tag}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
