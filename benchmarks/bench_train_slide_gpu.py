"""The trainer on slide tiles against the synthetic teacher step, alternated in one process (issue 14).

``train_teacher`` on the sample slide's tiles (98 bags at 0.5 µm/px, 256 px, batch 16: 7 steps an
epoch) is timed over STEPS optimisation steps *including* its epoch ends, against ``bench_train.bench``'s
synthetic teacher step, three rounds alternated after a warm-up of 10 trainer steps; then
``bench_train.bench_slide`` once. From the repository root::

    python benchmarks/bench_train_slide_gpu.py cuda vgg16 40    # cpu tiny 4 to try it on a CPU

Prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_train as bt
from napari_milkd.core.engine.config import BatchProgress, TrainConfig
from napari_milkd.core.engine.train import train_teacher

BATCH = 16


def main() -> None:
    """Parse ``DEVICE BACKBONE STEPS`` from argv, measure, print JSON."""
    dev, backbone, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cfg = TrainConfig(backbone=backbone, weights="random", size=256, device=dev, batch_size=BATCH,
                      teacher_epochs=10_000)  # fmt: skip
    bags, _ = bt.slide_bags(None, 0.5, 256, 512)
    events = train_teacher(bags, None, cfg)

    def sync() -> None:
        if dev == "cuda":
            torch.cuda.synchronize()

    def trainer(n: int) -> int:
        """Run ``n`` optimisation steps of the real trainer (epoch ends included); the images seen."""
        k = images = 0
        while k < n:
            event = next(events)
            if isinstance(event, BatchProgress):
                k += 1
                full = event.batch < event.n_batches
                images += BATCH if full else len(bags) - BATCH * (event.n_batches - 1)
        return images

    trainer(10)
    sync()
    rates: dict[str, list[float]] = {"trainer": [], "synthetic_teacher": []}
    for _ in range(3):
        t0 = time.perf_counter()
        images = trainer(steps)
        sync()
        rates["trainer"].append(images / (time.perf_counter() - t0))
        rates["synthetic_teacher"].append(bt.bench(cfg, BATCH, steps, 3)["teacher_img_s"])
    mean = {k: sum(v) / len(v) for k, v in rates.items()}
    print(json.dumps({
        "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu",
        "steps": steps,
        "bags": len(bags),
        "img_s": rates,
        "bench_slide": bt.bench_slide(cfg, bags, BATCH, steps, 3, 1)["img_s"],
        "mean": mean,
        "ratio_trainer_vs_synthetic": mean["trainer"] / mean["synthetic_teacher"],
    }))  # fmt: skip


if __name__ == "__main__":
    main()
