"""Training throughput: teacher-step and student-step images/s at 256×256, batch 16 and 64.

Prints one JSON object: device name, torch version, settings, and for each batch size the images/s of a
teacher step (MIL Dice loss, forward + backward + Adam) and a student step (frozen teacher forward under
``no_grad`` + student forward/backward with the IFKD loss). Uses the engine's own runtime (bf16 autocast,
channels_last and fused Adam on CUDA; data already on the device, as in training) and synthetic images.

    python benchmarks/bench_train.py                 # device auto, full measurement
    python benchmarks/bench_train.py --quick         # few steps, for CPUs

``--data slide`` times, in one run and round-robin (``--rounds`` rounds, so the machine's load falls on
all alike), teacher steps of batch ``--batches[0]`` fed three ways:

* ``synthetic_device``: one float batch already on the device, channels_last (no gather, no
  augmentation): the model's step alone, the upper bound;
* ``synthetic_batch``: what the synthetic rows above time: a uint8 batch staged on the device, gathered,
  augmented and converted by the engine's ``_Runtime.batch`` every step;
* ``slide``: the trainer itself, :func:`~napari_milkd.core.engine.train.train_teacher`, on a
  :class:`BagSet` of real slide tiles read through the project's own path
  (:func:`~napari_milkd.core.session.cohort_training.cohort_bags` on ``--manifest``, or, without one,
  :func:`~napari_milkd.core.session.cohort_training.read_slide_bags` on the sample slide with its known
  tumour as the positive region and the rest of its tissue as the negative one), timed between its
  consecutive ``BatchProgress`` events within an epoch (so it holds the staged-uint8 gather, the
  augmentation, the loss, the backward, Adam and the per-step loss read-back; not the epoch ends'
  validation and checkpoint, which are reported apart).

Prints images/s of each and the ratios ``slide / synthetic_*`` (issue 14 aims at ≥ 0.8), plus the seconds
spent reading the tiles (once, before training).

    python benchmarks/bench_train.py --data slide --backbone efficientnet_lite0 --batches 16 --steps 4
    python benchmarks/bench_train.py --data slide --manifest runs/mosaic/train.csv --work-mpp 1.0
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from napari_milkd.core.engine import losses
from napari_milkd.core.engine.config import BatchProgress, EpochEnd, TrainConfig
from napari_milkd.core.engine.datasets import BagSet
from napari_milkd.core.engine.train import _Runtime, new_model, train_teacher


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


def slide_bags(manifest: Path | None, work_mpp: float, tile: int, max_bags: int) -> tuple[BagSet, str]:
    """Bags of real slide tiles through the project's own reading path, and where they came from."""
    from napari_milkd.core.progress import drain
    from napari_milkd.core.session import cohort_training as ct

    if manifest is not None:
        from napari_milkd.core.session.cohort_manifest import read_training_manifest

        slides = read_training_manifest(manifest)
        per_slide = drain(ct.cohort_bags(slides, work_mpp=work_mpp, tile=tile, max_bags_per_slide=max_bags))
        bags = [s.bags for s in per_slide if s.bags is not None]
        return BagSet.concat(bags), f"{manifest} ({len(bags)} slides)"
    from napari_milkd.core.session.weak_labels import REGION_FREE, REGION_TUMOUR, bag_labels_from_regions
    from napari_milkd.core.slides.geometry import plan_work, tissue_map
    from napari_milkd.core.slides.sample import ensure_sample_slide
    from napari_milkd.core.slides.slide import open_slide

    sample = ensure_sample_slide()
    source = open_slide(sample.path)
    try:
        work = plan_work(source, work_mpp=work_mpp, tile=tile)
        regions = np.where(tissue_map(work), REGION_FREE, 0).astype(np.uint8)
        truth = sample.truth_mask(work.downsample)[: regions.shape[0], : regions.shape[1]]
        regions[: truth.shape[0], : truth.shape[1]][truth] = REGION_TUMOUR
        labels = bag_labels_from_regions(work.grid, regions, work.downsample)
        bags = drain(
            ct.read_slide_bags(
                source, work, labels.labels, name="sample", group="sample", max_bags=max_bags,
                rng=np.random.default_rng(0),
            )
        )  # fmt: skip
    finally:
        source.close()
    assert bags is not None
    return bags, f"sample slide {sample.path.name}"


def bench_slide(
    config: TrainConfig, bags: BagSet, batch: int, steps: int, warmup: int, rounds: int
) -> dict[str, object]:
    """Teacher-step images/s fed from a device batch, the synthetic staged batch and slide tiles through
    ``train_teacher``, round-robin over ``rounds`` rounds of ``steps`` timed steps each."""
    config = TrainConfig(**{**config.to_dict(), "batch_size": batch, "teacher_epochs": 10_000})
    rt = _Runtime(config)
    gen = torch.Generator().manual_seed(0)
    labels = (torch.arange(batch) % 2).float().to(rt.device)
    idx = torch.arange(batch)
    staged = rt.stage_data(torch.randint(0, 256, (batch, config.size, config.size, 3), generator=gen,
                                         dtype=torch.uint8).numpy())  # fmt: skip
    assert staged is not None
    x_dev, _ = rt.batch(staged, None, idx, None)

    def stepper(feed: Callable[[], torch.Tensor]) -> Callable[[], None]:
        model = rt.prepare(new_model(config, 0))
        opt = rt.optimizer(model, config)

        def step() -> None:
            x = feed()
            model.train()
            with rt.autocast():
                out = model(x)
            loss = losses.mil_dice_loss(out, labels)
            float(loss.detach())  # the trainer reads every step's loss back too
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    synthetic = {
        "synthetic_device": stepper(lambda: x_dev),
        "synthetic_batch": stepper(lambda: rt.batch(staged, None, idx, gen)[0]),
    }
    events = train_teacher(bags, None, config)
    epoch_ends: list[float] = []

    slide_images = 0

    def slide_steps(n: int) -> float:
        """Seconds of the next ``n`` steps of the trainer, each from the previous step's event."""
        nonlocal slide_images
        total, done = 0.0, 0
        last: float | None = None
        while done < n:
            event = next(events)
            now = time.perf_counter()
            if isinstance(event, BatchProgress):
                if last is not None:
                    total += now - last
                    done += 1
                    # every batch of an epoch is full but its last
                    last_size = len(bags) - batch * (event.n_batches - 1)
                    slide_images += batch if event.batch < event.n_batches else last_size
                last = now
            elif isinstance(event, EpochEnd):
                if last is not None:
                    epoch_ends.append(now - last)
                last = None  # the first step of the next epoch follows the epoch's end: not counted
        return total

    # Staging the tiles, then at least one whole epoch: its last, smaller batch is a new input shape, and on
    # CUDA the first step of each shape runs cuDNN's autotuning (seconds for vgg16), which must not be timed.
    slide_steps(max(warmup, -(-len(bags) // batch)) + 1)
    slide_images = 0
    for step in synthetic.values():
        for _ in range(warmup):
            step()
    seconds = {name: 0.0 for name in (*synthetic, "slide")}
    for _ in range(rounds):
        for name, step in synthetic.items():
            _sync(rt.device)
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            _sync(rt.device)
            seconds[name] += time.perf_counter() - t0
        seconds["slide"] += slide_steps(steps)
    events.close()
    rt.release()
    n = batch * steps * rounds
    rate = {name: n / s for name, s in seconds.items()}
    rate["slide"] = slide_images / seconds["slide"]
    return {
        "img_s": {name: round(r, 2) for name, r in rate.items()},
        "ratio_slide_vs_synthetic_device": round(rate["slide"] / rate["synthetic_device"], 3),
        "ratio_slide_vs_synthetic_batch": round(rate["slide"] / rate["synthetic_batch"], 3),
        "epoch_end_s": [round(e, 2) for e in epoch_ends],
    }


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
    parser.add_argument(
        "--data",
        choices=("synthetic", "slide"),
        default="synthetic",
        help="slide: teacher steps fed from slide tiles against synthetic data, in one run",
    )
    parser.add_argument(
        "--manifest", type=Path, default=None, help="--data slide: a training manifest (default: sample)"
    )
    parser.add_argument("--work-mpp", type=float, default=1.0, help="--data slide: µm/px of the tiles")
    parser.add_argument("--max-bags", type=int, default=512, help="--data slide: tiles per slide at most")
    parser.add_argument("--rounds", type=int, default=2, help="--data slide: round-robin rounds")
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
    }
    if args.data == "slide":
        t0 = time.perf_counter()
        bags, origin = slide_bags(args.manifest, args.work_mpp, args.size, args.max_bags)
        out["bags"] = {"from": origin, "n": len(bags), "positive": bags.n_pos, "work_mpp": args.work_mpp,
                       "read_s": round(time.perf_counter() - t0, 2)}  # fmt: skip
        out["rounds"] = args.rounds
        out["slide"] = bench_slide(config, bags, args.batches[0], steps, warmup, args.rounds)
        print(json.dumps(out))
        return
    out["results"] = {str(b): bench(config, b, steps, warmup) for b in args.batches}
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
