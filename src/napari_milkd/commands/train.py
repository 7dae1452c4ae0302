"""``milkd train``: MIL teacher then IFKD student (or the fully supervised net) on an image folder.

Writes ``RUN_DIR/teacher.pt``, ``RUN_DIR/student.pt`` (a full-supervision run writes only
``student.pt``), ``RUN_DIR/config.json`` and ``RUN_DIR/history.jsonl`` (one JSON line per epoch).
torch is imported inside :func:`run` only.

The schedule is a named preset (``--preset``, default ``standard``) that every explicit flag overrides,
through :func:`napari_milkd.core.engine.presets.schedule`. Both checkpoints record the model's input spec;
``--image-mpp`` puts the images' µm/px in it (without it the µm/px is unknown, and ``milkd predict`` asks
for ``--mpp``).

``--resume`` continues the run in ``--out`` only with the arguments it was started with: everything that
defines the run (the schedule and seed, i.e. every config field but ``--device`` and the epoch counts,
which may extend or shorten the run; the images, labels,
columns, ``--positive``, ``--masks``, the labels file's content, the train/validation split, and a given
``--image-mpp``) is compared with ``config.json`` and the checkpoints before anything is written, and a
difference is refused with one line. A refused resume changes nothing on disk; an accepted one leaves
``config.json`` as it was. Both checkpoints carry a model card (:mod:`napari_milkd.core.engine.card`):
the image folder, label CSV and columns, the classes, the preset; ``milkd info RUN`` prints it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from napari_milkd.core.engine.config import BACKBONES
from napari_milkd.core.engine.presets import PRESET_NAMES, schedule
from napari_milkd.core.engine.spec import ModelSpec, checkpoint_spec
from napari_milkd.core.errors import InputError, write_error

#: The flags a preset sets and an explicit value overrides (argparse dest → TrainConfig field).
_SCHEDULE_FLAGS = (
    "backbone",
    "weights",
    "size",
    "batch_size",
    "teacher_epochs",
    "student_epochs",
    "switch_every",
    "switch_from",
    "lr",
    "weight_decay",
    "val_fraction",
    "seed",
)


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
    p.add_argument(
        "--preset",
        choices=PRESET_NAMES,
        default="standard",
        help="named schedule (default standard: 30 teacher + 60 student epochs); explicit flags override it",
    )
    p.add_argument(
        "--image-mpp",
        type=float,
        default=None,
        metavar="UM",
        help="µm/px of the images, recorded in the checkpoints (default: unknown; predict then needs --mpp)",
    )
    p.add_argument("--backbone", default=None, help=f"one of {', '.join(BACKBONES)} (default: the preset's)")
    p.add_argument(
        "--weights",
        default=None,
        help="'default', 'imagenet', 'random', or an encoder weights file (default: 'default')",
    )
    p.add_argument(
        "--size", type=int, default=None, help="training size in px (square; default: the preset's)"
    )
    p.add_argument("--batch-size", type=int, default=None, help="default: the preset's")
    p.add_argument("--teacher-epochs", type=int, default=None, help="default: the preset's")
    p.add_argument(
        "--student-epochs", type=int, default=None, help="default: the preset's, or 2 × --teacher-epochs"
    )
    p.add_argument(
        "--switch-every",
        type=int,
        default=None,
        help="role reversal every K student epochs; 0 disables it (default: the preset's, or student / 3)",
    )
    p.add_argument("--switch-from", type=int, default=None, help="first role-reversal epoch (default: K)")
    p.add_argument("--supervision", choices=("weak", "full"), default="weak")
    p.add_argument("--select-on", choices=("weak", "masks"), default="weak", help="validation criterion")
    p.add_argument("--val-fraction", type=float, default=None, help="default: the preset's (0.2)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: the preset's)")
    p.add_argument(
        "--weight-decay", type=float, default=None, help="Adam weight decay (default: the preset's)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--seed", type=int, default=None, help="default 0")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.set_defaults(func=run)


def _write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (``WriteError`` when that fails)."""
    from napari_milkd.core.atomic import write_text_atomic

    write_text_atomic(path, text)


#: Config fields that may differ on ``--resume``: where the run runs, and how long it goes on (a run may
#: be extended or cut short; epochs already trained are kept as they are).
_FREE_ON_RESUME = ("device", "teacher_epochs", "student_epochs")

#: ``config.json`` data fields compared on ``--resume`` (when the run recorded them), and what to call them.
_DATA_FIELDS = (
    ("images", "--images"),
    ("labels", "--labels"),
    ("labels_sha256", "the content of the labels CSV"),
    ("name_column", "--name-column"),
    ("label_column", "--label-column"),
    ("positive", "--positive"),
    ("patient_column", "--patient-column"),
    ("masks", "--masks"),
    ("train", "the training split"),
    ("val", "the validation split"),
)


def _sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise InputError(f"cannot read label CSV {path}: {exc.strerror or exc}") from exc


def _short(value: Any) -> str:
    if isinstance(value, list):
        return f"{len(value)} images"
    text = repr(value)
    return text if len(text) <= 60 else text[:59] + "…"


def _refuse(out: Path, what: str, then: Any = None, now: Any = None) -> InputError:
    change = "" if then is None and now is None else f" (the run has {_short(then)}, now {_short(now)})"
    return InputError(
        f"cannot resume {out}: {what} differs from the run's{change}; a resumed run keeps its seed, data, "
        "labels, split and schedule (start a new --out for a different run)"
    )


def _check_resume(out: Path, meta: dict[str, Any], checkpoints: tuple[Path, ...]) -> None:
    """Refuse (one line, before any write) a ``--resume`` whose arguments differ from the run's."""
    from napari_milkd.core.engine.checkpoint import checkpoint_config, load_checkpoint

    new_config = meta["config"]
    recorded = out / "config.json"
    if recorded.is_file():
        try:
            old = json.loads(recorded.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise InputError(
                f"cannot resume {out}: its config.json is unreadable ({type(exc).__name__})"
            ) from None
        if not isinstance(old, dict):
            raise InputError(f"cannot resume {out}: its config.json is not a run record")
        old_config = old.get("config") if isinstance(old.get("config"), dict) else {}
        for key, value in new_config.items():
            if key in old_config and key not in _FREE_ON_RESUME and old_config[key] != value:
                raise _refuse(out, f"--{key.replace('_', '-')}", old_config[key], value)
        old_data = old.get("data") if isinstance(old.get("data"), dict) else {}
        for key, what in _DATA_FIELDS:
            if key in old_data and old_data[key] != meta["data"][key]:
                shown = key not in ("labels_sha256",)
                raise _refuse(out, what, *((old_data[key], meta["data"][key]) if shown else ()))
        old_mpp = (old.get("spec") or {}).get("mpp") if isinstance(old.get("spec"), dict) else None
        new_mpp = meta["spec"]["mpp"]
        if old_mpp is not None and new_mpp is not None and abs(old_mpp - new_mpp) > 1e-9 * old_mpp:
            raise _refuse(out, "--image-mpp", old_mpp, new_mpp)
    for ckpt in checkpoints:
        if not ckpt.exists():
            continue
        state = load_checkpoint(ckpt)
        saved = checkpoint_config(state, ckpt).to_dict()
        for key, value in new_config.items():
            if key not in _FREE_ON_RESUME and saved.get(key) != value:
                raise _refuse(out, f"--{key.replace('_', '-')} ({ckpt.name})", saved.get(key), value)


def run(args: argparse.Namespace) -> int:
    """Load the bags, split by patient, train, and write the run folder."""
    from napari_milkd.commands._progress import ProgressPrinter
    from napari_milkd.core.engine.card import folder_provenance
    from napari_milkd.core.engine.config import EpochEnd, RoleReversal
    from napari_milkd.core.engine.datasets import load_image_folder, read_label_table
    from napari_milkd.core.progress import drain

    if args.backbone is not None and args.backbone not in BACKBONES:
        raise InputError(f"unknown backbone {args.backbone!r}; choose one of {', '.join(BACKBONES)}")
    if args.supervision == "full" and not args.masks:
        raise InputError("--supervision full needs --masks")
    if args.select_on == "masks" and not args.masks:
        raise InputError("--select-on masks needs --masks (masks of the validation patients are used)")
    if args.image_mpp is not None and not args.image_mpp > 0:
        raise InputError(f"--image-mpp must be positive, got {args.image_mpp}")
    config = schedule(
        args.preset,
        **{flag: getattr(args, flag) for flag in _SCHEDULE_FLAGS},
        supervision=args.supervision,
        select_on="masks" if args.supervision == "full" else args.select_on,
        device=args.device,
    )
    spec = ModelSpec.for_config(config, mpp=args.image_mpp)
    out = Path(args.out)
    teacher_ckpt, student_ckpt = out / "teacher.pt", out / "student.pt"
    if not args.resume and (teacher_ckpt.exists() or student_ckpt.exists()):
        raise InputError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if config.weights not in ("default", "imagenet", "random") and not Path(config.weights).is_file():
        raise InputError(f"weights file not found: {config.weights}")
    bags = load_image_folder(
        args.images,
        args.labels,
        args.name_column,
        args.label_column,
        args.positive,
        config.size,
        masks_dir=args.masks,
        patient_column=args.patient_column,
    )
    train, val = bags.split(config.val_fraction, config.seed)
    labels_path = Path(args.labels)
    positive = args.positive.strip().lower()
    values = read_label_table(
        labels_path, args.name_column, args.label_column, args.positive, args.patient_column
    ).values
    negative = sorted({v for v in values if v.lower() != positive})[:20]
    card = folder_provenance(
        Path(args.images).resolve(),
        labels_path.resolve(),
        name_column=args.name_column,
        label_column=args.label_column,
        positive=args.positive,
        negative=negative,
        patient_column=args.patient_column,
        preset=args.preset,
    )
    # torch is imported only now, so bad input is reported without waiting for it.
    from napari_milkd.core.engine.checkpoint import load_checkpoint
    from napari_milkd.core.engine.train import distill_student, train_teacher

    meta = {
        "preset": args.preset,
        "config": config.to_dict(),
        "spec": spec.to_dict(),
        "data": {
            "images": str(Path(args.images).resolve()),
            "labels": str(labels_path.resolve()),
            "labels_sha256": _sha256(labels_path),
            "name_column": args.name_column,
            "label_column": args.label_column,
            "positive": args.positive,
            "patient_column": args.patient_column,
            "masks": None if args.masks is None else str(Path(args.masks).resolve()),
            "train": train.names,
            "val": val.names,
            "skipped": bags.skipped,
            "notes": bags.notes,
        },
    }
    resuming = args.resume and (
        teacher_ckpt.exists() or student_ckpt.exists() or (out / "config.json").is_file()
    )
    if resuming:  # everything is checked before anything is written
        _check_resume(out, meta, (teacher_ckpt, student_ckpt))
    if args.resume and spec.mpp is None:  # the run keeps the µm/px it started with
        for ckpt in (teacher_ckpt, student_ckpt):
            saved = checkpoint_spec(load_checkpoint(ckpt)) if ckpt.exists() else None
            if saved is not None and saved.mpp is not None:
                spec = ModelSpec.for_config(config, mpp=saved.mpp)
                meta["spec"] = spec.to_dict()
                break
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(out, exc) from exc
    if not (out / "config.json").is_file() or not resuming:
        _write_atomic(out / "config.json", json.dumps(meta, indent=2) + "\n")
    for note in bags.notes:
        print(f"note: {note}", file=sys.stderr)
    print(
        f"bags: {len(train)} train ({train.n_pos} positive), {len(val)} validation ({val.n_pos} positive)",
        file=sys.stderr,
    )

    history: list[dict[str, Any]] = []
    for ckpt in (teacher_ckpt, student_ckpt):
        if args.resume and ckpt.exists():
            history += list(load_checkpoint(ckpt)["history"])

    def record(event: Any) -> None:
        """Keep the epoch history on disk as the run goes (history.jsonl), and show progress."""
        progress(event)
        if isinstance(event, EpochEnd):
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
        elif isinstance(event, RoleReversal) and history:
            history[-1]["switched_to_epoch"] = event.student_epoch
        else:
            return
        _write_atomic(out / "history.jsonl", "".join(json.dumps(h) + "\n" for h in history))

    def drive(gen: Any) -> Any:
        with progress:
            return drain(gen, record)

    progress = ProgressPrinter()
    if config.supervision == "full":
        result = drive(train_teacher(train, val, config, student_ckpt, args.resume, spec=spec, card=card))
        print(f"full supervision: best epoch {result.best_epoch}, checkpoint {student_ckpt}", file=sys.stderr)
        return 0
    teacher = drive(train_teacher(train, val, config, teacher_ckpt, args.resume, spec=spec, card=card))
    print(f"teacher: best epoch {teacher.best_epoch}, checkpoint {teacher_ckpt}", file=sys.stderr)
    student = drive(
        distill_student(train, val, config, teacher_ckpt, student_ckpt, args.resume, spec=spec, card=card)
    )
    print(
        f"student: best epoch {student.best_epoch}, role reversals after epochs {student.switches}, "
        f"checkpoint {student_ckpt}",
        file=sys.stderr,
    )
    return 0
