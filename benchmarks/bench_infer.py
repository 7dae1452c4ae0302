"""Whole-slide inference throughput: read / compute / write / end-to-end, and peak memory vs slide size.

Prints one JSON object. The slide is generated once (into ``--work``, default ``out/bench_infer``,
git-ignored): a JPEG-tiled pyramidal TIFF of ``--size``² pixels (default 40 000²) made by repeating the
pre-encoded tiles of a small H&E-like texture, so 1.6 Gpx takes seconds, not a render of 1.6 Gpx.
Parts, all on 256² tiles at the slide's level-0 resolution unless ``--mpp`` says otherwise:

* ``read``: tiles/s of the threaded tile loader (``--read-threads``) and of one plain thread;
* ``compute``: tiles/s of the model alone on a batch already on the device (bf16 + channels_last on CUDA,
  ``--compile`` optional);
* ``write``: tiles/s of blending + writing bands to the prediction zarr (map of ``--e2e-tiles`` tiles);
* ``e2e``: :func:`~napari_milkd.core.inference.stream.predict_slide` over the first ``--e2e-tiles``
  tiles of the grid, and a plain loop (read → model → blend, one thread, no overlap) on the same tiles;
* ``rss``: peak RSS of a fresh process running ``predict_slide`` at three slide sizes (``--rss-sizes``,
  model at ``--rss-mpp``), against the same process's RSS before predicting.

    .venv/bin/python benchmarks/bench_infer.py --device cpu --backbone efficientnet_lite0
    .venv/bin/python benchmarks/bench_infer.py --device cuda --compile --backbone vgg16 --batch-size 256
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TILE = 256
MPP = 0.5


def _texture(side: int = 1024, seed: int = 0) -> np.ndarray:
    """H&E-like pink/purple texture with nuclei-ish blobs, ``(side, side, 3)`` uint8."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random((side, side)), 6)
    field = (field - field.min()) / (np.ptp(field) + 1e-9)
    dots = ndimage.gaussian_filter((rng.random((side, side)) > 0.995).astype(np.float32), 2) * 30
    h = np.clip(0.3 + 0.6 * field + dots, 0, 1.5)[..., None]
    rgb = 255 - np.array([60, 140, 70]) * h - np.array([10, 50, 10])
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _encoded_tiles(texture: np.ndarray) -> list[bytes]:
    """JPEG tiles of ``texture`` exactly as tifffile writes them (row-major)."""
    import tifffile

    tmp = REPO / "out" / "bench_infer" / "_texture.tif"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(tmp, texture, tile=(TILE, TILE), compression="jpeg", photometric="rgb", metadata=None)
    with tifffile.TiffFile(tmp) as tif, open(tmp, "rb") as fh:
        page = tif.pages[0]
        out = []
        for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
            fh.seek(offset)
            out.append(fh.read(count))
    tmp.unlink()
    return out


def make_slide(path: Path, size: int) -> Path:
    """A ``size``² JPEG pyramid (downsamples 1, 4, 16, 64) repeating a 1024² texture; cached by name."""
    import tifffile

    if path.exists():
        return path
    base = _texture()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        for i, ds in enumerate((1, 4, 16, 64)):
            side = -(-size // ds)
            tex = base if ds == 1 else base[::ds, ::ds]
            tex = np.tile(tex, (max(1, TILE // tex.shape[0]),) * 2 + (1,))[: max(TILE, tex.shape[0])]
            tex = np.ascontiguousarray(tex[: (tex.shape[0] // TILE) * TILE, : (tex.shape[1] // TILE) * TILE])
            tiles = _encoded_tiles(tex)
            per = tex.shape[0] // TILE
            n = -(-side // TILE)

            def gen(n: int = n, per: int = per, tiles: list[bytes] = tiles):  # type: ignore[no-untyped-def]
                for r in range(n):
                    for c in range(n):
                        yield tiles[(r % per) * per + (c % per)]

            level_mpp = MPP * ds
            tif.write(
                gen(),
                shape=(side, side, 3),
                dtype=np.uint8,
                tile=(TILE, TILE),
                compression="jpeg",
                photometric="rgb",
                subfiletype=0 if i == 0 else 1,
                resolution=(1e4 / level_mpp, 1e4 / level_mpp),
                resolutionunit="CENTIMETER",
                metadata=None,
            )
    tmp.rename(path)
    return path


def _model(backbone: str):  # type: ignore[no-untyped-def]
    import torch

    from napari_milkd.core.engine.models import build_model

    torch.manual_seed(0)
    return build_model(backbone, "random")


def _grid(source, mpp: float, n_tiles: int | None):  # type: ignore[no-untyped-def]
    from dataclasses import replace

    from napari_milkd.core.slides.tiling import tile_grid

    grid = tile_grid(source.info, mpp=mpp, tile=TILE, overlap=TILE // 8)
    if n_tiles is not None and n_tiles < len(grid):
        grid = replace(
            grid, origins_l0=grid.origins_l0[:n_tiles], tissue_fraction=grid.tissue_fraction[:n_tiles]
        )
    return grid


def bench_read(source, grid, threads: int, batch: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    from napari_milkd.core.inference.stream import InferenceRuntime, _BatchLoader
    from napari_milkd.core.slides.tiling import read_tile

    n = len(grid)
    t = time.perf_counter()
    for i in range(n):
        read_tile(source, grid, i)
    plain = n / (time.perf_counter() - t)
    order = np.arange(n)
    batches = [order[i : i + batch] for i in range(0, n, batch)]
    loader = _BatchLoader(
        source, grid, batches, InferenceRuntime("cpu"), workers=threads, prefetch=2, batch_size=batch
    )
    t = time.perf_counter()
    for _ in loader:
        pass
    pooled = n / (time.perf_counter() - t)
    return {"read_1thread_tiles_s": round(plain, 1), f"read_{threads}threads_tiles_s": round(pooled, 1)}


def bench_compute(model, device: str, batch: int, compile: bool, seconds: float) -> dict[str, float]:  # type: ignore[no-untyped-def]
    import torch

    from napari_milkd.core.inference.stream import InferenceRuntime

    rt = InferenceRuntime(device, compile=compile)
    forward = rt.prepare(model)
    host = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (batch, TILE, TILE, 3), dtype=np.uint8))
    x = rt.to_input(host)

    def sync() -> None:
        if rt.cuda:
            torch.cuda.synchronize()

    with torch.no_grad():
        for _ in range(3 if compile else 1):  # warm-up (compilation, cudnn autotune)
            with rt.autocast():
                forward(x)
        sync()
        n, t = 0, time.perf_counter()
        while time.perf_counter() - t < seconds:
            with rt.autocast():
                forward(x)
            n += batch
        sync()
        rate = n / (time.perf_counter() - t)
    return {"compute_tiles_s": round(rate, 1)}


def bench_write(source, grid, work: Path) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Blending + band writes alone: a model that costs nothing, tiles already in memory."""
    import torch

    from napari_milkd.core.engine.models.dws_mil import SegOutput
    from napari_milkd.core.inference.stream import predict_slide
    from napari_milkd.core.progress import drain
    from napari_milkd.core.slides.slide import ArraySlideSource

    class Free(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor) -> SegOutput:
            p = x[:, :1] * 0.5 + 0.25
            return SegOutput(sides=(p, p, p), fused_logit=p, fused_prob=p)

    # same grid over a white in-memory slide of the same size: reading costs a memset
    info = source.info
    blank = ArraySlideSource(np.full((8, 8, 3), 255, np.uint8), mpp=info.mpp)
    blank._info = info  # same geometry, trivial reads (outside the 8×8 image is white)
    blank._levels = [blank._levels[0]] * len(info.levels)
    t = time.perf_counter()
    drain(predict_slide(Free(), blank, grid, work / "write.zarr", device="cpu", batch_size=64, resume=False))
    return {"blend_write_tiles_s": round(len(grid) / (time.perf_counter() - t), 1)}


def bench_e2e(source, grid, model, args, work: Path) -> dict[str, float]:  # type: ignore[no-untyped-def]
    import torch

    from napari_milkd.core.inference.stream import InferenceRuntime, blend_window, predict_slide
    from napari_milkd.core.progress import drain
    from napari_milkd.core.slides.geometry import map_geometry, tile_map_origins
    from napari_milkd.core.slides.tiling import read_tile

    warm = InferenceRuntime(args.device)  # one batch first, so neither path pays oneDNN/cudnn set-up
    with torch.no_grad(), warm.autocast():
        batch = torch.from_numpy(np.stack([read_tile(source, grid, i) for i in range(min(len(grid), 4))]))
        warm.prepare(model)(warm.to_input(batch))
    t = time.perf_counter()
    result = drain(
        predict_slide(
            model,
            source,
            grid,
            work / "e2e.zarr",
            device=args.device,
            batch_size=args.batch_size,
            compile=args.compile,
            workers=args.read_threads,
            resume=False,
        )
    )
    e2e = len(grid) / (time.perf_counter() - t)
    out: dict[str, float] = {
        "e2e_tiles_s": round(e2e, 1),
        **{k: round(v, 2) for k, v in result.timings.items()},
    }
    # plain loop: read one batch, run it, blend into an in-memory map; no threads, no overlap
    rt = InferenceRuntime(args.device)
    forward = rt.prepare(model)
    ds, shape = map_geometry(source, grid)
    acc = np.zeros(shape, np.float32)
    wsum = np.zeros(shape, np.float32)
    window = blend_window(TILE)
    origins = tile_map_origins(grid, ds)
    t = time.perf_counter()
    for s in range(0, len(grid), args.batch_size):
        idx = range(s, min(s + args.batch_size, len(grid)))
        batch = torch.from_numpy(np.stack([read_tile(source, grid, i) for i in idx]))
        with torch.no_grad(), rt.autocast():
            probs = forward(rt.to_input(batch)).cpu().numpy()
        for k, i in enumerate(idx):
            r0, c0 = origins[i]
            r1, c1 = min(r0 + TILE, shape[0]), min(c0 + TILE, shape[1])
            acc[r0:r1, c0:c1] += probs[k, : r1 - r0, : c1 - c0] * window[: r1 - r0, : c1 - c0]
            wsum[r0:r1, c0:c1] += window[: r1 - r0, : c1 - c0]
    out["plain_loop_tiles_s"] = round(len(grid) / (time.perf_counter() - t), 1)
    return out


def _hwm_mb() -> float:
    """Peak resident memory of this process (VmHWM; unlike ru_maxrss it is not inherited across fork+exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_rss(args: argparse.Namespace) -> None:
    """Fresh process: peak RSS of predict_slide over a whole generated slide of ``--size``."""
    from napari_milkd.core.inference.stream import predict_slide
    from napari_milkd.core.progress import drain
    from napari_milkd.core.slides.slide import open_slide

    path = make_slide(Path(args.work) / f"slide_{args.size}.tiff", args.size)
    model = _model(args.rss_backbone)
    with open_slide(path) as source:
        grid = _grid(source, args.rss_mpp, None)
        before = _hwm_mb()
        t = time.perf_counter()
        result = drain(
            predict_slide(
                model,
                source,
                grid,
                Path(args.work) / f"rss_{args.size}.zarr",
                device=args.device,
                resume=False,
            )
        )
        seconds = time.perf_counter() - t
    peak = _hwm_mb()
    print(
        json.dumps(
            {
                "size": args.size,
                "map": list(result.shape),
                "tiles": len(grid),
                "seconds": round(seconds, 1),
                "rss_before_mb": round(before),
                "peak_rss_mb": round(peak),
                "map_uint8_mb": round(2 * result.shape[0] * result.shape[1] / 2**20, 1),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--backbone", default="vgg16")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--read-threads", type=int, default=4)
    parser.add_argument("--size", type=int, default=40_000, help="side of the large slide (level-0 px)")
    parser.add_argument("--mpp", type=float, default=MPP, help="µm/px the model runs at (slide: 0.5)")
    parser.add_argument("--read-tiles", type=int, default=400, help="tiles read in the read benchmark")
    parser.add_argument("--e2e-tiles", type=int, default=96, help="tiles in the end-to-end run")
    parser.add_argument("--compute-seconds", type=float, default=8.0)
    parser.add_argument("--rss-sizes", default="10000,20000,40000")
    parser.add_argument("--rss-mpp", type=float, default=4.0, help="model µm/px for the RSS runs")
    parser.add_argument("--rss-backbone", default="tiny")
    parser.add_argument(
        "--skip", default="", help="comma-separated parts to skip: read,compute,write,e2e,rss"
    )
    parser.add_argument("--work", default=str(REPO / "out" / "bench_infer"))
    parser.add_argument("--child-rss", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_rss:
        child_rss(args)
        return
    import torch

    from napari_milkd.core.slides.slide import open_slide

    work = Path(args.work)
    skip = set(filter(None, args.skip.split(",")))
    t = time.perf_counter()
    path = make_slide(work / f"slide_{args.size}.tiff", args.size)
    report: dict[str, object] = {
        "slide": {
            "path": str(path),
            "side_px": args.size,
            "mpp": MPP,
            "generate_s": round(time.perf_counter() - t, 1),
        },
        "tile": TILE,
        "model_mpp": args.mpp,
        "backbone": args.backbone,
        "device": args.device,
        "compile": args.compile,
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": date.today().isoformat(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    model = _model(args.backbone)
    with open_slide(path) as source:
        if "read" not in skip:
            report["read"] = bench_read(
                source, _grid(source, args.mpp, args.read_tiles), args.read_threads, 64
            )
        if "compute" not in skip:
            report["compute"] = bench_compute(
                model, args.device, args.batch_size, args.compile, args.compute_seconds
            )
        grid = _grid(source, args.mpp, args.e2e_tiles)
        if "write" not in skip:
            report["write"] = bench_write(source, _grid(source, args.mpp, max(args.e2e_tiles, 2000)), work)
        if "e2e" not in skip:
            e2e = bench_e2e(source, grid, model, args, work)
            report["e2e"] = e2e
            if "compute" in report:
                compute = report["compute"]["compute_tiles_s"]  # type: ignore[index]
                e2e["e2e_over_compute"] = round(e2e["e2e_tiles_s"] / compute, 3)
                e2e["e2e_over_plain_loop"] = round(e2e["e2e_tiles_s"] / e2e["plain_loop_tiles_s"], 3)
    if "rss" not in skip:
        rows = []
        for size in (int(s) for s in args.rss_sizes.split(",")):
            cmd = [sys.executable, __file__, "--child-rss", "--size", str(size), "--work", str(work)]
            cmd += [
                "--rss-mpp",
                str(args.rss_mpp),
                "--rss-backbone",
                args.rss_backbone,
                "--device",
                args.device,
            ]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        report["rss"] = {"model_mpp": args.rss_mpp, "backbone": args.rss_backbone, "runs": rows}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
