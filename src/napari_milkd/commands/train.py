"""``milkd train``: MIL teacher then IFKD student (or the fully supervised net) on an image folder, or
(``--slides MANIFEST.csv``) on whole slides with region annotations.

The slide mode reads the manifest, makes tile bags per slide (capped per slide) and a validation split by
slide through :mod:`napari_milkd.core.session.cohort_training`, then trains exactly as the folder mode
does; ``docs/cli.md`` ("milkd train --slides") describes the manifest and ``config.json``.

Writes ``RUN_DIR/teacher.pt``, ``RUN_DIR/student.pt`` (a full-supervision run writes only
``student.pt``), ``RUN_DIR/config.json`` and ``RUN_DIR/history.jsonl`` (one JSON line per epoch).
torch is imported inside :func:`run` only.

The schedule is a named preset (``--preset``, default ``standard``) that every explicit flag overrides,
through :func:`napari_milkd.core.engine.presets.schedule`. Those config flags are generated from the
settings' one description (:mod:`napari_milkd.core.engine.settings`, by
:func:`napari_milkd.commands._settings.add_setting_flags`); the data and run flags are written here. Both
checkpoints record the model's input spec; ``--image-mpp`` puts the images' µm/px in it (without it the
µm/px is unknown, and ``milkd predict`` asks for ``--mpp``).

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
import contextlib
import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_milkd.commands._settings import add_setting_flags
from napari_milkd.core.engine.config import BACKBONES, NETS
from napari_milkd.core.engine.presets import PRESET_NAMES, schedule
from napari_milkd.core.engine.settings import SETTINGS
from napari_milkd.core.engine.spec import ModelSpec, checkpoint_spec
from napari_milkd.core.errors import InputError, write_error

if TYPE_CHECKING:
    from napari_milkd.core.engine.config import TrainConfig
    from napari_milkd.core.engine.datasets import BagSet

#: ``--work-mpp`` when not given (``milkd demo``'s default working resolution).
DEFAULT_WORK_MPP = 1.0
#: ``--max-bags-per-slide`` when not given: ``core.session.cohort_training.DEFAULT_MAX_BAGS_PER_SLIDE``
#: (repeated here so the CLI starts without numpy; a test keeps the two in step).
DEFAULT_MAX_BAGS_PER_SLIDE = 512

#: The flags a preset sets and an explicit value overrides, passed to ``schedule`` as they are (argparse
#: dest = TrainConfig field); ``run`` decides ``supervision``, ``select_on`` and ``device`` itself.
_SCHEDULE_FLAGS: tuple[str, ...] = tuple(
    n for n in SETTINGS if n not in ("supervision", "select_on", "device")
)


#: The image-folder flags (argparse dest) that ``--images`` needs.
_FOLDER_FLAGS = ("labels", "name_column", "label_column", "positive")


def add_data_arguments(parser: argparse.ArgumentParser, masks_required: bool, slides_help: str) -> None:
    """The data arguments shared by ``train`` and ``evaluate``: an image folder (``--images`` with its
    label CSV) or, mutually exclusive with it, a slide manifest (``--slides``, described by
    ``slides_help``). The folder flags are checked by :func:`check_folder_arguments`."""
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--images", help="folder of images (png, jpg, tif, bmp)")
    mode.add_argument("--slides", metavar="MANIFEST.csv", help=slides_help)
    parser.add_argument("--labels", help="CSV with one row per image (with --images)")
    parser.add_argument("--name-column", help="CSV column with the image name (with --images)")
    parser.add_argument("--label-column", help="CSV column with the bag label (with --images)")
    parser.add_argument("--positive", help="label value meaning tumour (positive bag; with --images)")
    needed = " (needed with --images)" if masks_required else ""
    parser.add_argument("--masks", help=f"folder of ground-truth masks named like the images{needed}")


def check_folder_arguments(args: argparse.Namespace, masks_required: bool) -> None:
    """Refuse (one line) an ``--images`` run without its label CSV flags, or a ``--slides`` run given them."""
    flags = (*_FOLDER_FLAGS, "masks")
    if args.slides is not None:
        given = [f"--{f.replace('_', '-')}" for f in flags if getattr(args, f, None) is not None]
        if given:
            raise InputError(f"{', '.join(given)} belong to --images; a --slides manifest says it per slide")
        return
    missing = [f"--{f.replace('_', '-')}" for f in _FOLDER_FLAGS if getattr(args, f) is None]
    if masks_required and args.masks is None:
        missing.append("--masks")
    if missing:
        raise InputError(f"--images needs {', '.join(missing)}")


def register(subparsers: Any) -> None:
    """Add the ``train`` subcommand."""
    p = subparsers.add_parser(
        "train", help="train a MIL teacher and a distilled student on image bags or annotated slides"
    )
    add_data_arguments(
        p,
        masks_required=False,
        slides_help="CSV manifest of slides with their region annotations (columns slide, annotations, "
        "label, mpp, split; see docs/cli.md); exclusive with --images",
    )
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
    p.add_argument(
        "--work-mpp",
        type=float,
        default=None,
        metavar="UM",
        help="with --slides: working resolution in µm/px, recorded in the checkpoints "
        f"(default {DEFAULT_WORK_MPP:g})",
    )
    p.add_argument(
        "--tile", type=int, default=None, metavar="PX", help="with --slides: tile side in px (same as --size)"
    )
    p.add_argument("--class-map", help="with --slides: class → label file (JSON object or CSV 'class,label')")
    p.add_argument(
        "--max-bags-per-slide",
        type=int,
        default=None,
        metavar="N",
        help=f"with --slides: at most N tile bags from each slide (default {DEFAULT_MAX_BAGS_PER_SLIDE})",
    )
    add_setting_flags(p, SETTINGS)
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


def _has_run(out: Path, checkpoints: tuple[Path, ...]) -> bool:
    """Whether ``out`` already holds (part of) a run: a checkpoint or its ``config.json``."""
    return any(c.exists() for c in checkpoints) or (out / "config.json").is_file()


def _select_on(args: argparse.Namespace) -> str | None:
    """``--select-on``, else, for ``--resume``, the criterion the run in ``--out`` was started with (a run
    from before the default became ``agreement`` resumes as it was), else ``None`` (the preset's)."""
    if args.select_on is not None or not args.resume:
        return args.select_on
    try:
        record = json.loads((Path(args.out) / "config.json").read_text(encoding="utf-8"))
        saved = record["config"]["select_on"]
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, KeyError, TypeError):
        return None
    return saved if saved in SETTINGS["select_on"].choices else None


def _is_run_record(path: Path) -> bool:
    """Whether ``path`` is a ``config.json`` that ``milkd train`` wrote (a JSON object with a config)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(record, dict) and isinstance(record.get("config"), dict)


def _is_history(path: Path) -> bool:
    """Whether ``path`` is a ``history.jsonl`` that ``milkd train`` wrote (one epoch record a line)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return all(isinstance(r, dict) and "stage" in r and "epoch" in r for r in records)


def _check_foreign_files(out: Path) -> None:
    """Refuse (one line, before any write) an ``--out`` whose ``config.json`` or ``history.jsonl`` milkd
    did not write: a run would replace them."""
    for name, ours in (("config.json", _is_run_record), ("history.jsonl", _is_history)):
        path = out / name
        if (path.exists() or path.is_symlink()) and (path.is_symlink() or not ours(path)):
            raise InputError(
                f"{path} was not written by milkd train; it is kept: move it away or choose another --out"
            )


#: The lock file a ``milkd train`` run holds in its ``--out`` while it checks, writes and trains.
TRAIN_LOCK = ".milkd-train.lock"


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Hold ``out``'s lock (:data:`TRAIN_LOCK`) for the block: a second ``milkd train`` into the same
    folder gets one line naming the first, instead of both writing checkpoints and ``config.json`` there
    (two runs with different seeds left a folder whose config described neither model)."""
    from napari_milkd.core.inference.cohort import lock_output

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(out, exc) from exc
    with lock_output(out, TRAIN_LOCK, "milkd train"):
        yield


def _write_run_config(out: Path, meta: dict[str, Any], resuming: bool) -> None:
    """Create ``out`` and write the run's ``config.json`` (a resumed run keeps the one it has)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(out, exc) from exc
    if not (out / "config.json").is_file() or not resuming:
        _write_atomic(out / "config.json", json.dumps(meta, indent=2) + "\n")


def _check_resume(
    out: Path,
    meta: dict[str, Any],
    checkpoints: tuple[Path, ...],
    data_fields: tuple[tuple[str, str], ...] = _DATA_FIELDS,
    mpp_flag: str = "--image-mpp",
) -> None:
    """Refuse (one line, before any write) a ``--resume`` whose arguments differ from the run's:
    the config, the ``data_fields`` of ``config.json`` (key, what to call it) and the spec's µm/px
    (given by ``mpp_flag``)."""
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
        for key, what in data_fields:
            if key in old_data and old_data[key] != meta["data"].get(key):
                shown = not key.endswith("sha256")
                raise _refuse(out, what, *((old_data[key], meta["data"].get(key)) if shown else ()))
        old_mpp = (old.get("spec") or {}).get("mpp") if isinstance(old.get("spec"), dict) else None
        new_mpp = meta["spec"]["mpp"]
        if old_mpp is not None and new_mpp is not None and abs(old_mpp - new_mpp) > 1e-9 * old_mpp:
            raise _refuse(out, mpp_flag, old_mpp, new_mpp)
    for ckpt in checkpoints:
        if not ckpt.exists():
            continue
        state = load_checkpoint(ckpt)
        saved = checkpoint_config(state, ckpt).to_dict()
        for key, value in new_config.items():
            if key not in _FREE_ON_RESUME and saved.get(key) != value:
                raise _refuse(out, f"--{key.replace('_', '-')} ({ckpt.name})", saved.get(key), value)


def run(args: argparse.Namespace) -> int:
    """Train from an image folder (``--images``) or from annotated slides (``--slides``)."""
    check_folder_arguments(args, masks_required=False)
    if args.backbone is not None and args.backbone not in BACKBONES:
        raise InputError(f"unknown backbone {args.backbone!r}; choose one of {', '.join(BACKBONES)}")
    if args.net is not None and args.net not in NETS:
        raise InputError(f"unknown MIL net {args.net!r}; choose one of {', '.join(NETS)}")
    if args.slides is not None:
        return _run_slides(args)
    slide_flags = ("work_mpp", "tile", "class_map", "max_bags_per_slide")
    given = [f"--{f.replace('_', '-')}" for f in slide_flags if getattr(args, f) is not None]
    if given:
        raise InputError(f"{', '.join(given)} belong to --slides")
    return _run_folder(args)


def _run_folder(args: argparse.Namespace) -> int:
    """Load the bags, split by patient, train, and write the run folder."""
    from napari_milkd.core.engine.card import folder_provenance
    from napari_milkd.core.engine.datasets import load_image_folder, read_label_table

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
        select_on="masks" if args.supervision == "full" else _select_on(args),
        device=args.device,
    )
    spec = ModelSpec.for_config(config, mpp=args.image_mpp)
    out = Path(args.out)
    teacher_ckpt, student_ckpt = out / "teacher.pt", out / "student.pt"
    if not args.resume and (teacher_ckpt.exists() or student_ckpt.exists()):
        raise InputError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    _check_foreign_files(out)
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
    with _locked(out):  # a second milkd train into this folder is refused, not mixed in
        resuming = args.resume and _has_run(out, (teacher_ckpt, student_ckpt))
        if resuming:  # everything is checked before anything is written
            _check_resume(out, meta, (teacher_ckpt, student_ckpt))
        if args.resume and spec.mpp is None:  # the run keeps the µm/px it started with
            for ckpt in (teacher_ckpt, student_ckpt):
                saved = checkpoint_spec(load_checkpoint(ckpt)) if ckpt.exists() else None
                if saved is not None and saved.mpp is not None:
                    spec = ModelSpec.for_config(config, mpp=saved.mpp)
                    meta["spec"] = spec.to_dict()
                    break
        _write_run_config(out, meta, resuming)
        for note in bags.notes:
            print(f"note: {note}", file=sys.stderr)
        print(
            f"bags: {len(train)} train ({train.n_pos} positive), "
            f"{len(val)} validation ({val.n_pos} positive)",
            file=sys.stderr,
        )

        return _train(out, config, train, val, spec, card, args.resume)


#: ``config.json`` data fields of a ``--slides`` run compared on ``--resume``, and what to call them.
_SLIDE_DATA_FIELDS = (
    ("slides", "--slides"),
    ("manifest_sha256", "the content of the manifest"),
    ("annotations_sha256", "the content of the annotation files"),
    ("class_map", "--class-map"),
    ("class_map_sha256", "the content of the class map"),
    ("max_bags_per_slide", "--max-bags-per-slide"),
    ("train", "the training slides"),
    ("val", "the validation slides"),
)


def _run_slides(args: argparse.Namespace) -> int:
    """``--slides``: tile bags from every slide of the manifest, a validation split by slide, then the
    same training as an image folder (see ``docs/cli.md``, "milkd train --slides")."""
    from napari_milkd.commands._progress import ProgressPrinter
    from napari_milkd.core.annotations.io import class_map_from
    from napari_milkd.core.engine.card import slide_provenance
    from napari_milkd.core.progress import drain
    from napari_milkd.core.session.cohort_manifest import read_training_manifest
    from napari_milkd.core.session.cohort_training import cohort_bags, sha256_of, split_by_slide
    from napari_milkd.core.slides.sample import is_sample_slide

    if args.supervision == "full" or args.select_on == "masks":
        raise InputError(
            "--slides trains from region annotations (weak supervision); --supervision full and "
            "--select-on masks need pixel masks, which only --images gives"
        )
    for flag in ("image_mpp", "patient_column"):
        if getattr(args, flag) is not None:
            raise InputError(f"--{flag.replace('_', '-')} belongs to --images (with --slides see --work-mpp)")
    work_mpp = DEFAULT_WORK_MPP if args.work_mpp is None else args.work_mpp
    if not work_mpp > 0:
        raise InputError(f"--work-mpp must be positive, got {work_mpp}")
    if args.tile is not None and args.size is not None and args.tile != args.size:
        raise InputError(f"--tile {args.tile} and --size {args.size} disagree (they are the same setting)")
    cap = DEFAULT_MAX_BAGS_PER_SLIDE if args.max_bags_per_slide is None else args.max_bags_per_slide
    if cap < 1:
        raise InputError(f"--max-bags-per-slide must be at least 1, got {cap}")
    flags = {flag: getattr(args, flag) for flag in _SCHEDULE_FLAGS}
    flags["size"] = args.tile if args.tile is not None else args.size
    config = schedule(
        args.preset, **flags, supervision="weak", select_on=_select_on(args), device=args.device
    )
    spec = ModelSpec.for_config(config, mpp=work_mpp)
    out = Path(args.out)
    teacher_ckpt, student_ckpt = out / "teacher.pt", out / "student.pt"
    if not args.resume and (teacher_ckpt.exists() or student_ckpt.exists()):
        raise InputError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    _check_foreign_files(out)
    if config.weights not in ("default", "imagenet", "random") and not Path(config.weights).is_file():
        raise InputError(f"weights file not found: {config.weights}")
    slides = read_training_manifest(args.slides)
    class_map = class_map_from(args.class_map)
    manifest = Path(args.slides).resolve()
    progress = ProgressPrinter()
    with progress:
        per_slide = drain(
            cohort_bags(
                slides,
                work_mpp=work_mpp,
                tile=config.size,
                class_map=class_map,
                max_bags_per_slide=cap,
                seed=config.seed,
            ),
            progress,
        )
    split = split_by_slide(per_slide, config.val_fraction, config.seed)
    data = {
        "slides": str(manifest),
        "manifest_sha256": sha256_of([manifest])[0],
        "annotations_sha256": sha256_of([s.annotations for s in slides]),
        "class_map": None if args.class_map is None else str(Path(args.class_map).resolve()),
        "class_map_sha256": None if args.class_map is None else sha256_of([args.class_map])[0],
        "max_bags_per_slide": cap,
        "train": split.train_slides,
        "val": split.val_slides,
        "split": split.how,
        "per_slide": [
            {
                "slide": str(s.slide.slide.resolve()),
                "split": s.slide.split,
                "positive_tiles": s.n_positive,
                "negative_tiles": s.n_negative,
                "bags_used": s.n_used,
            }
            for s in per_slide
        ],
    }
    meta = {"preset": args.preset, "config": config.to_dict(), "spec": spec.to_dict(), "data": data}
    with _locked(out):  # a second milkd train into this folder is refused, not mixed in
        resuming = args.resume and _has_run(out, (teacher_ckpt, student_ckpt))
        if resuming:  # everything is checked before anything is written
            _check_resume(out, meta, (teacher_ckpt, student_ckpt), _SLIDE_DATA_FIELDS, "--work-mpp")
        _write_run_config(out, meta, resuming)
        for s in per_slide:
            for warning in s.warnings:
                print(f"warning: {warning}", file=sys.stderr)
            print(
                f"slide {s.slide.name}: {s.n_positive} positive, {s.n_negative} negative tiles; "
                f"{s.n_used} bags used",
                file=sys.stderr,
            )
        for note in split.notes:
            print(f"note: {note}", file=sys.stderr)
        n_val = 0 if split.val is None else len(split.val)
        n_val_pos = 0 if split.val is None else split.val.n_pos
        print(
            f"bags: {len(split.train)} train ({split.train.n_pos} positive) "
            f"from {len(split.train_slides)} slides, "
            f"{n_val} validation ({n_val_pos} positive) from {len(split.val_slides)} slides ({split.how})",
            file=sys.stderr,
        )
        card = slide_provenance(
            [str(s.slide.resolve()) for s in slides],
            sample_only=all(is_sample_slide(s.slide) for s in slides),
            negative=["tumour-free regions", "slides labelled negative"],
            preset=args.preset,
        )
        return _train(out, config, split.train, split.val, spec, card, args.resume)


def _train(
    out: Path,
    config: TrainConfig,
    train: BagSet,
    val: BagSet | None,
    spec: ModelSpec,
    card: dict[str, Any],
    resume: bool,
) -> int:
    """Train the teacher then the student (or the full-supervision net) into ``out``, keeping
    ``history.jsonl`` and showing progress; the part both data modes share."""
    from napari_milkd.commands._progress import ProgressPrinter
    from napari_milkd.core.engine.checkpoint import load_checkpoint
    from napari_milkd.core.engine.config import EpochEnd, RoleReversal
    from napari_milkd.core.engine.train import distill_student, train_teacher
    from napari_milkd.core.progress import drain
    from napari_milkd.core.runtime import allocation_failure

    teacher_ckpt, student_ckpt = out / "teacher.pt", out / "student.pt"
    history: list[dict[str, Any]] = []
    for ckpt in (teacher_ckpt, student_ckpt):
        if resume and ckpt.exists():
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
                    **({"val": dict(event.extra)} if event.extra else {}),
                }
            )
        elif isinstance(event, RoleReversal) and history:
            history[-1]["switched_to_epoch"] = event.student_epoch
        else:
            return
        _write_atomic(out / "history.jsonl", "".join(json.dumps(h) + "\n" for h in history))

    def drive(gen: Any) -> Any:
        with progress:
            try:
                return drain(gen, record)
            except (MemoryError, RuntimeError, ImportError) as exc:
                needed = allocation_failure(exc)
                if needed is None:
                    raise
                what = f" (needed {needed})" if needed else ""
                raise InputError(
                    f"out of memory{what}; lower --batch-size (now {config.batch_size}) or --size (now "
                    f"{config.size}), or allow milkd more memory; the last finished epoch is kept "
                    "(--resume continues from it)"
                ) from None

    progress = ProgressPrinter()
    if config.supervision == "full":
        result = drive(train_teacher(train, val, config, student_ckpt, resume, spec=spec, card=card))
        print(f"full supervision: best epoch {result.best_epoch}, checkpoint {student_ckpt}", file=sys.stderr)
        return 0
    teacher = drive(train_teacher(train, val, config, teacher_ckpt, resume, spec=spec, card=card))
    print(f"teacher: best epoch {teacher.best_epoch}, checkpoint {teacher_ckpt}", file=sys.stderr)
    student = drive(
        distill_student(train, val, config, teacher_ckpt, student_ckpt, resume, spec=spec, card=card)
    )
    print(
        f"student: best epoch {student.best_epoch}, role reversals after epochs {student.switches}, "
        f"checkpoint {student_ckpt}",
        file=sys.stderr,
    )
    return 0
