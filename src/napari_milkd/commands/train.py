"""``milkd train``: MIL teacher then IFKD student (or the fully supervised net) on an image folder.

Writes ``RUN_DIR/teacher.pt``, ``RUN_DIR/student.pt`` (a full-supervision run writes only
``student.pt``), ``RUN_DIR/config.json`` and ``RUN_DIR/history.jsonl`` (one JSON line per epoch).
torch is imported inside :func:`run` only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from napari_milkd.core.engine.config import BACKBONES, TrainConfig
from napari_milkd.core.errors import InputError, write_error

_DEFAULTS = TrainConfig()


def add_data_arguments(parser: argparse.ArgumentParser, masks_required: bool) -> None:
    """The image-folder arguments shared by ``train`` and ``evaluate``."""
    parser.add_argument("--images", required=True, help="folder of images (png, jpg, tif, bmp)")
    parser.add_argument("--labels", required=True, help="CSV with one row per image")
    parser.add_argument("--name-column", required=True, help="CSV column with the image name")
    parser.add_argument("--label-column", required=True, help="CSV column with the bag label")
    parser.add_argument("--positive", required=True, help="label value meaning tumour (positive bag)")
    parser.add_argument(
        "--masks", required=masks_required, help="folder of ground-truth masks named like the images"
    )


def register(subparsers: Any) -> None:
    """Add the ``train`` subcommand."""
    p = subparsers.add_parser("train", help="train a MIL teacher and a distilled student on image bags")
    add_data_arguments(p, masks_required=False)
    p.add_argument("--out", required=True, help="run folder for checkpoints, config and history")
    p.add_argument("--patient-column", help="CSV column grouping images by patient for the validation split")
    p.add_argument("--backbone", default=_DEFAULTS.backbone, help=f"one of {', '.join(BACKBONES)}")
    p.add_argument(
        "--weights",
        default=_DEFAULTS.weights,
        help="'default', 'imagenet', 'random', or an encoder weights file",
    )
    p.add_argument("--size", type=int, default=_DEFAULTS.size, help="training size in px (square)")
    p.add_argument("--batch-size", type=int, default=_DEFAULTS.batch_size)
    p.add_argument("--teacher-epochs", type=int, default=_DEFAULTS.teacher_epochs)
    p.add_argument("--student-epochs", type=int, default=_DEFAULTS.student_epochs)
    p.add_argument(
        "--switch-every", type=int, default=_DEFAULTS.switch_every, help="0 disables role reversal"
    )
    p.add_argument("--switch-from", type=int, default=0, help="first role-reversal epoch (default: K)")
    p.add_argument("--supervision", choices=("weak", "full"), default="weak")
    p.add_argument("--select-on", choices=("weak", "masks"), default="weak", help="validation criterion")
    p.add_argument("--val-fraction", type=float, default=_DEFAULTS.val_fraction)
    p.add_argument("--lr", type=float, default=_DEFAULTS.lr)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.set_defaults(func=run)


def _write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (``WriteError`` when that fails)."""
    from napari_milkd.core.atomic import write_text_atomic

    write_text_atomic(path, text)


def _progress(total: int, desc: str) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm ships with napari
        return None
    return tqdm(total=total, desc=desc, unit="batch", file=sys.stderr, dynamic_ncols=True, leave=True)


def run(args: argparse.Namespace) -> int:
    """Load the bags, split by patient, train, and write the run folder."""
    from napari_milkd.core.engine.config import BatchProgress, BatchSizeReduced, EpochEnd, RoleReversal
    from napari_milkd.core.engine.datasets import load_image_folder

    if args.backbone not in BACKBONES:
        raise InputError(f"unknown backbone {args.backbone!r}; choose one of {', '.join(BACKBONES)}")
    if args.supervision == "full" and not args.masks:
        raise InputError("--supervision full needs --masks")
    if args.select_on == "masks" and not args.masks:
        raise InputError("--select-on masks needs --masks (masks of the validation patients are used)")
    config = TrainConfig(
        backbone=args.backbone,
        weights=args.weights,
        size=args.size,
        batch_size=args.batch_size,
        teacher_epochs=args.teacher_epochs,
        student_epochs=args.student_epochs,
        switch_every=args.switch_every,
        switch_from=args.switch_from,
        lr=args.lr,
        supervision=args.supervision,
        select_on="masks" if args.supervision == "full" else args.select_on,
        val_fraction=args.val_fraction,
        device=args.device,
        seed=args.seed,
    )
    out = Path(args.out)
    teacher_ckpt, student_ckpt = out / "teacher.pt", out / "student.pt"
    if not args.resume and (teacher_ckpt.exists() or student_ckpt.exists()):
        raise InputError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if args.weights not in ("default", "imagenet", "random") and not Path(args.weights).is_file():
        raise InputError(f"weights file not found: {args.weights}")
    bags = load_image_folder(
        args.images,
        args.labels,
        args.name_column,
        args.label_column,
        args.positive,
        args.size,
        masks_dir=args.masks,
        patient_column=args.patient_column,
    )
    train, val = bags.split(config.val_fraction, config.seed)
    # torch is imported only now, so bad input is reported without waiting for it.
    from napari_milkd.core.engine.checkpoint import load_checkpoint
    from napari_milkd.core.engine.train import distill_student, train_teacher

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(out, exc) from exc
    meta = {
        "config": config.to_dict(),
        "data": {
            "images": str(Path(args.images).resolve()),
            "labels": str(Path(args.labels).resolve()),
            "name_column": args.name_column,
            "label_column": args.label_column,
            "positive": args.positive,
            "patient_column": args.patient_column,
            "train": train.names,
            "val": val.names,
            "skipped": bags.skipped,
        },
    }
    _write_atomic(out / "config.json", json.dumps(meta, indent=2) + "\n")
    print(
        f"bags: {len(train)} train ({train.n_pos} positive), {len(val)} validation ({val.n_pos} positive)",
        file=sys.stderr,
    )

    history: list[dict[str, Any]] = []
    for ckpt in (teacher_ckpt, student_ckpt):
        if args.resume and ckpt.exists():
            history += list(load_checkpoint(ckpt)["history"])

    def drive(gen: Any, desc: str, n_epochs: int) -> Any:
        done = sum(1 for h in history if h.get("stage") == desc)
        n_batches = -(-len(train) // config.batch_size)
        bar = _progress(n_epochs * n_batches, desc)
        if bar is not None:
            bar.update(done * n_batches)
        try:
            while True:
                try:
                    event = next(gen)
                except StopIteration as stop:
                    return stop.value
                if isinstance(event, BatchProgress) and bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=event.epoch, loss=f"{event.loss:.4f}")
                elif isinstance(event, EpochEnd):
                    history.append(
                        {
                            "stage": event.stage,
                            "epoch": event.epoch,
                            "train_loss": event.train_loss,
                            "val_score": event.val_score,
                            "best_epoch": event.best_epoch,
                            "seconds": event.seconds,
                        }
                    )
                    _write_atomic(out / "history.jsonl", "".join(json.dumps(h) + "\n" for h in history))
                elif isinstance(event, BatchSizeReduced):
                    print(
                        f"{event.stage}: out of GPU memory, continuing with batch size {event.new}",
                        file=sys.stderr,
                    )
                elif isinstance(event, RoleReversal):
                    history[-1]["switched_to_epoch"] = event.student_epoch
                    _write_atomic(out / "history.jsonl", "".join(json.dumps(h) + "\n" for h in history))
        finally:
            if bar is not None:
                bar.close()

    if config.supervision == "full":
        result = drive(
            train_teacher(train, val, config, student_ckpt, args.resume), "full", config.teacher_epochs
        )
        print(f"full supervision: best epoch {result.best_epoch}, checkpoint {student_ckpt}", file=sys.stderr)
        return 0
    teacher = drive(
        train_teacher(train, val, config, teacher_ckpt, args.resume), "teacher", config.teacher_epochs
    )
    print(f"teacher: best epoch {teacher.best_epoch}, checkpoint {teacher_ckpt}", file=sys.stderr)
    student = drive(
        distill_student(train, val, config, teacher_ckpt, student_ckpt, args.resume),
        "student",
        config.student_epochs,
    )
    print(
        f"student: best epoch {student.best_epoch}, role reversals after epochs {student.switches}, "
        f"checkpoint {student_ckpt}",
        file=sys.stderr,
    )
    return 0
