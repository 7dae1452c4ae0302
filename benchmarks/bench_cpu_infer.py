"""CPU inference fast paths, as ratios against today's eager fp32 forward on the same tiles in one run.

Reads the tissue tiles of the sample slide (or ``--slide``) at the checkpoint's µm/px, at ``--tile`` px
(the model is fully convolutional), then times each variant of the forward pass on exactly those tiles,
round-robin over ``--repeats`` rounds so that the machine's load falls on every variant alike:

* ``fp32`` (the reference: what ``predict_slide`` does on CPU today: ``no_grad``, NCHW, float32);
* ``inference_mode`` instead of ``no_grad``;
* ``channels_last`` (NHWC memory format, oneDNN's preferred layout for depthwise convolutions);
* ``bf16`` autocast on CPU (fast only where the CPU has AVX-512 BF16 or AMX; said in the output);
* ``threads=1`` (one intra-op thread instead of all cores: what each of several cohort workers gets);
* ``compile`` (``torch.compile``, inductor, with ``--compile``: the first call compiles, not timed).

For each: tiles/s, the ratio to ``fp32`` (> 1 is faster) and the Dice of its tumour mask (probability ≥
0.5) against ``fp32``'s, over all tiles' pixels. Prints one JSON object.

    .venv/bin/python benchmarks/bench_cpu_infer.py --checkpoint RUN/student.pt [--tile 256 --repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _tiles(slide: Path | None, mpp: float, tile: int, limit: int) -> np.ndarray:
    """Up to ``limit`` tissue tiles ``(N, tile, tile, 3)`` uint8 of ``slide`` (default: the sample)."""
    from napari_milkd.core.slides.geometry import plan_work, read_tiles
    from napari_milkd.core.slides.sample import ensure_sample_slide
    from napari_milkd.core.slides.slide import open_slide

    source = open_slide(slide if slide is not None else ensure_sample_slide().path)
    try:
        work = plan_work(source, work_mpp=mpp, tile=tile)
        index = np.arange(min(limit, len(work.grid)))
        return read_tiles(source, work.grid, index)
    finally:
        source.close()


def _batches(x: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(x), batch_size):
        yield x[start : start + batch_size]


def _variants(model: torch.nn.Module, use_compile: bool) -> dict[str, tuple[Callable[..., Any], Any]]:
    """name → (forward of an NCHW float batch giving (N, H, W) probabilities, context factory)."""
    import copy

    def plain(net: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda x: net(x).fused_prob[:, 0].float()

    nhwc = copy.deepcopy(model).to(memory_format=torch.channels_last)
    out: dict[str, tuple[Callable[..., Any], Any]] = {
        "fp32": (plain(model), torch.no_grad),
        "inference_mode": (plain(model), torch.inference_mode),
        "channels_last": (
            lambda x: nhwc(x.contiguous(memory_format=torch.channels_last)).fused_prob[:, 0].float(),
            torch.inference_mode,
        ),
        "bf16": (plain(model), lambda: _stack(torch.inference_mode(), torch.autocast("cpu", torch.bfloat16))),
        "threads=1": (plain(model), lambda: _stack(torch.inference_mode(), _threads(1))),
    }
    if use_compile:
        compiled = torch.compile(model, dynamic=False)
        out["compile"] = (plain(compiled), torch.inference_mode)
    return out


@contextlib.contextmanager
def _stack(*contexts: Any) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for c in contexts:
            stack.enter_context(c)
        yield


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    was = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(was)


def _run(forward: Callable[..., Any], context: Any, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    with context():
        return torch.cat([forward(b) for b in _batches(x, batch_size)])


def _dice(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a >= 0.5, b >= 0.5
    denom = int(a.sum() + b.sum())
    return 1.0 if denom == 0 else 2.0 * int((a & b).sum()) / denom


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, required=True, help="a teacher.pt / student.pt")
    ap.add_argument("--slide", type=Path, default=None, help="default: the built-in sample slide")
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--tiles", type=int, default=48, help="how many tissue tiles")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()

    from napari_milkd.core.engine.checkpoint import load_checkpoint
    from napari_milkd.core.engine.spec import checkpoint_spec
    from napari_milkd.core.engine.train import load_model

    spec = checkpoint_spec(load_checkpoint(args.checkpoint))
    mpp = spec.mpp if spec is not None and spec.mpp else 1.0
    model, _ = load_model(args.checkpoint, device="cpu")
    model.eval()
    tiles = _tiles(args.slide, mpp, args.tile, args.tiles)
    x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float().div_(255).contiguous()
    variants = _variants(model, args.compile)
    outputs: dict[str, torch.Tensor] = {}
    for name, (forward, context) in variants.items():  # warm-up (and compilation), not timed
        outputs[name] = _run(forward, context, x[: args.batch_size], args.batch_size)
    seconds = dict.fromkeys(variants, 0.0)
    for _ in range(args.repeats):
        for name, (forward, context) in variants.items():
            t0 = time.perf_counter()
            outputs[name] = _run(forward, context, x, args.batch_size)
            seconds[name] += time.perf_counter() - t0
    n = len(x) * args.repeats
    reference = outputs["fp32"]
    rows = {
        name: {
            "tiles_per_s": round(n / seconds[name], 2),
            "ratio_vs_fp32": round(seconds["fp32"] / seconds[name], 3),
            "dice_vs_fp32": round(_dice(outputs[name], reference), 4),
        }
        for name in variants
    }
    print(
        json.dumps(
            {
                "checkpoint": str(args.checkpoint),
                "backbone": getattr(spec, "backbone", None),
                "mpp": mpp,
                "tile": args.tile,
                "tiles": len(x),
                "batch_size": args.batch_size,
                "repeats": args.repeats,
                "variants": rows,
                "threads": torch.get_num_threads(),
                "cpus": os.cpu_count(),
                "cpu_bf16": bool(getattr(torch.backends.mkldnn, "is_available", lambda: False)())
                and _has_bf16(),
                "torch": torch.__version__,
                "machine": platform.machine(),
                "date": date.today().isoformat(),
            },
            indent=1,
        )
    )


def _has_bf16() -> bool:
    """Whether the CPU has native bf16 arithmetic (AVX-512 BF16 or AMX), from /proc/cpuinfo on Linux."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


if __name__ == "__main__":
    main()
