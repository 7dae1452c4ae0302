"""Training throughput: teacher-step and student-step images/s at 256×256, batch 16 and 64.

Prints one JSON object: device name, torch version, settings, and for each batch size the images/s of a
teacher step (MIL Dice loss, forward + backward + Adam) and a student step (frozen teacher forward under
``no_grad`` + student forward/backward with the IFKD loss). Uses the engine's own runtime (bf16 autocast,
channels_last and fused Adam on CUDA; data already on the device, as in training) and synthetic images.

    python benchmarks/bench_train.py                 # device auto, full measurement
    python benchmarks/bench_train.py --quick         # few steps, for CPUs
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime

import torch

from napari_milkd.core.engine import losses
from napari_milkd.core.engine.config import TrainConfig
from napari_milkd.core.engine.train import _Runtime, new_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(
    config: TrainConfig, batch: int, steps: int, warmup: int, channels_last: bool | None = None
) -> dict[str, float]:
    """images/s of the teacher step and the student step at ``config.size`` for one batch size;
    ``channels_last`` overrides the runtime's memory format (``None``: the engine's choice)."""
    rt = _Runtime(config)
    if channels_last is not None:
        rt.channels_last = channels_last
    gen = torch.Generator().manual_seed(0)
    images = rt.stage_data(torch.randint(0, 256, (batch, config.size, config.size, 3), generator=gen,
                                         dtype=torch.uint8).numpy())  # fmt: skip
    assert images is not None
    labels = (torch.arange(batch) % 2).float().to(rt.device)
    idx = torch.arange(batch)
    teacher = rt.prepare(new_model(config, 0))
    student = rt.prepare(new_model(config, 1))
    results = {}
    for name in ("teacher", "student"):
        model = teacher if name == "teacher" else student
        opt = rt.optimizer(model, config)
        if name == "student":
            teacher.eval().requires_grad_(False)

        def step(model: torch.nn.Module = model, opt: torch.optim.Optimizer = opt, name: str = name) -> None:
            x, _ = rt.batch(images, None, idx, gen)
            model.train()
            if name == "teacher":
                with rt.autocast():
                    out = model(x)
                loss = losses.mil_dice_loss(out, labels)
            else:
                with torch.no_grad(), rt.autocast():
                    q = teacher(x).fused_prob.float()
                with rt.autocast():
                    out = model(x)
                loss = losses.student_loss(out, q, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for _ in range(warmup):
            step()
        _sync(rt.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(rt.device)
        results[f"{name}_img_s"] = round(batch * steps / (time.perf_counter() - t0), 1)
    rt.release()
    return results


def main() -> None:
    """Parse arguments, run the measurements, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backbone", default="vgg16", help="vgg16 (the paper's), efficientnet_lite0 or tiny")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 steps after 1 warm-up (CPU)")
    parser.add_argument("--no-amp", action="store_true", help="fp32 on CUDA")
    parser.add_argument(
        "--compare-layouts",
        action="store_true",
        help="NCHW and channels_last alternately in one run (ratio = channels_last / NCHW)",
    )
    args = parser.parse_args()
    steps, warmup = (2, 1) if args.quick else (args.steps, args.warmup)
    config = TrainConfig(backbone=args.backbone, weights="random", size=args.size, device=args.device,
                         amp=not args.no_amp)  # fmt: skip
    device = _Runtime(config).device
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    out = {
        "device": name,
        "torch": torch.__version__,
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "backbone": args.backbone,
        "size": args.size,
        "amp_bf16": device.type == "cuda" and not args.no_amp,
        "steps": steps,
        "results": {str(b): bench(config, b, steps, warmup) for b in args.batches},
    }
    if args.compare_layouts:
        layouts: dict[str, dict[str, dict[str, float]]] = {}
        for b in args.batches:
            runs = {"nchw": [], "channels_last": []}
            for _ in range(2):  # alternate, so the machine's load falls on both alike
                runs["nchw"].append(bench(config, b, steps, warmup, channels_last=False))
                runs["channels_last"].append(bench(config, b, steps, warmup, channels_last=True))
            mean = {k: {m: sum(r[m] for r in v) / len(v) for m in v[0]} for k, v in runs.items()}
            mean["ratio"] = {m: round(mean["channels_last"][m] / mean["nchw"][m], 2) for m in mean["nchw"]}
            layouts[str(b)] = mean
        out["layouts"] = layouts
    print(json.dumps(out))


if __name__ == "__main__":
    main()
