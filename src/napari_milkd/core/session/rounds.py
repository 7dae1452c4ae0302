"""Rounds kept in the project folder: each finished teacher/student pair, to compare and go back to.

A *round* is what the session had when one of its models was about to be replaced (Next round, training a
stage again, going back to an earlier round): the models, their probability maps and masks, a small figure
and a record. Rounds are numbered 1, 2, 3, … in the order they were kept; ``round.json`` also records the
session's own round counter at the time (``session_round``: how many times the student had become the
teacher).

Layout, under ``<project>/rounds/<n>/``::

    round.json                  number, date (``created``: seconds; ``date``: local ISO 8601), reason,
                                session round, settings (``project.json`` then), per-stage metrics,
                                corrected pixels, teacher/student mask agreement (Dice)
    teacher.pt, student.pt      the models (hard links to the project's checkpoints when the filesystem
                                allows, else copies: every writer replaces files, never rewrites them)
    <stage>_probability.npz     the probability maps, as the project stores them (float16)
    <stage>_mask.npz            the masks the user saw (bit-packed 0/1, corrections applied)
    masks.png                   a small picture of the masks, side by side (white: tumour)

**Atomic.** A round is written into a hidden ``rounds/.<n>.<random>.part/`` folder which is renamed to
``rounds/<n>/`` only once ``round.json`` is in it; a crash or a kill leaves at most a hidden ``.part``
folder, which :func:`list_rounds` never shows (and the next :func:`archive_round` removes). Corrections
(the pathologist's hard labels) are counted here but never restored from a round: they are the user's
work and stay as they are. Standard library, numpy and Pillow only; no Qt.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_milkd.core.errors import InputError, write_error

#: The folder of the rounds inside a project.
ROUNDS_DIR = "rounds"
#: The record of one round (written last: a folder without it is not a round).
ROUND_FILE = "round.json"
#: The small picture of a round's masks.
FIGURE_FILE = "masks.png"
#: Longest side of :data:`FIGURE_FILE`, per mask.
FIGURE_SIDE = 256
#: Pixels :func:`mask_dice` looks at, at most (about): a bigger map is sampled on a regular grid.
DICE_PIXELS = 4_000_000


def rounds_dir(project_root: str | os.PathLike[str]) -> Path:
    """``<project>/rounds``."""
    return Path(project_root) / ROUNDS_DIR


@dataclass(frozen=True)
class RoundInfo:
    """One kept round: its ``number`` (folder name), folder, when (``created``, seconds since the epoch),
    why it was kept, the session's round counter then, the stages it holds a model of, and what is known
    of them (``metrics`` per stage: ``epochs``, ``best_epoch``, ``best_score``, bag counts), the corrected
    pixels then, the teacher/student mask ``dice`` when it held both, and the project settings then."""

    number: int
    path: Path
    created: float
    reason: str = ""
    session_round: int = 0
    stages: tuple[str, ...] = ()
    maps: tuple[str, ...] = ()
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    corrected_pixels: int | None = None
    dice: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def date(self) -> str:
        """Local date and time the round was kept (``YYYY-MM-DD HH:MM``)."""
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(self.created))

    def label(self) -> str:
        """One line for a list: ``round 2 · 14:03 · teacher + student · Dice 0.91 · 120 corrected px``
        (the date too when it was not kept today)."""
        when = time.localtime(self.created)
        today = time.localtime()[:3] == when[:3]
        parts = [f"round {self.number}", time.strftime("%H:%M" if today else "%Y-%m-%d %H:%M", when)]
        parts.append(" + ".join(self.stages) if self.stages else "no model")
        if self.dice is not None:
            parts.append(f"Dice {self.dice:.2f}")
        if self.corrected_pixels is not None:
            parts.append(f"{self.corrected_pixels} corrected px")
        return " · ".join(parts)

    def checkpoint(self, stage: str) -> Path:
        """Where this round keeps ``stage``'s model."""
        return self.path / f"{stage}.pt"

    def probability(self, stage: str) -> Path:
        """Where this round keeps ``stage``'s probability map (project array format)."""
        return self.path / f"{stage}_probability.npz"

    def mask_path(self, stage: str) -> Path:
        """Where this round keeps ``stage``'s mask (see :func:`save_mask`)."""
        return self.path / f"{stage}_mask.npz"

    @property
    def figure(self) -> Path:
        """The round's picture of its masks."""
        return self.path / FIGURE_FILE

    @classmethod
    def read(cls, folder: Path) -> RoundInfo:
        """The round kept in ``folder``; :class:`InputError` when it is not one (no or bad ``round.json``)."""
        try:
            record = json.loads((folder / ROUND_FILE).read_text(encoding="utf-8"))
            number = int(folder.name)
        except (OSError, ValueError) as exc:
            raise InputError(f"{folder} is not a kept round ({exc})") from exc
        if not isinstance(record, dict):
            raise InputError(f"{folder / ROUND_FILE} is not a round record")
        try:
            return cls._from_record(folder, number, record)
        except (TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"{folder / ROUND_FILE} is not a round record ({exc})") from exc

    @classmethod
    def _from_record(cls, folder: Path, number: int, record: dict[str, Any]) -> RoundInfo:
        stages = record.get("stages", {}) if isinstance(record.get("stages"), dict) else {}
        dice = record.get("dice")
        corrected = record.get("corrected_pixels")
        return cls(
            number=number,
            path=folder,
            created=float(record.get("created", 0.0)),
            reason=str(record.get("reason", "")),
            session_round=int(record.get("session_round", 0)),
            stages=tuple(
                s for s, item in stages.items() if isinstance(item, dict) and item.get("checkpoint")
            ),
            maps=tuple(s for s, item in stages.items() if isinstance(item, dict) and item.get("probability")),
            metrics={
                s: dict(item.get("metrics") or {}) for s, item in stages.items() if isinstance(item, dict)
            },
            corrected_pixels=int(corrected) if isinstance(corrected, int) else None,
            dice=float(dice) if isinstance(dice, int | float) else None,
            settings=dict(record.get("settings") or {}),
        )


def list_rounds(project_root: str | os.PathLike[str]) -> list[RoundInfo]:
    """The rounds kept in a project, oldest first. Only whole rounds: a folder named by a number with a
    readable ``round.json``; a half-written (hidden ``.part``) or damaged folder is not listed."""
    folder = rounds_dir(project_root)
    if not folder.is_dir():
        return []
    found: list[RoundInfo] = []
    for child in folder.iterdir():
        if not child.name.isdigit() or not child.is_dir():
            continue
        with contextlib.suppress(InputError):
            found.append(RoundInfo.read(child))
    return sorted(found, key=lambda r: r.number)


def read_round(project_root: str | os.PathLike[str], number: int) -> RoundInfo:
    """Round ``number`` of a project; :class:`InputError` when it was not kept."""
    folder = rounds_dir(project_root) / str(int(number))
    if not (folder / ROUND_FILE).is_file():
        raise InputError(f"round {number} was not kept in {rounds_dir(project_root)}")
    return RoundInfo.read(folder)


# --- files -----------------------------------------------------------------------------------------------


def fingerprint(path: Path) -> tuple[int, int] | None:
    """``(size, mtime ns)`` of ``path`` (None when absent): the same for a file and its hard link or a
    metadata-preserving copy, so a round already kept is told without reading it."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def kept_fingerprints(project_root: str | os.PathLike[str], name: str) -> set[tuple[int, int]]:
    """Fingerprints of the file ``name`` (``teacher.pt``, …) in every kept round."""
    prints = (fingerprint(r.path / name) for r in list_rounds(project_root))
    return {p for p in prints if p is not None}


def link_or_copy(source: Path, target: Path) -> None:
    """Make ``target`` hold ``source``'s bytes: a hard link when the filesystem allows (instant, no space:
    every milkd writer replaces a file rather than rewriting it), else a copy that keeps its times."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def replace_with(source: Path, target: Path) -> None:
    """Atomically make ``target`` hold ``source``'s bytes (:func:`link_or_copy` to a hidden name beside
    it, then rename over it); a failure is a :class:`~napari_milkd.core.errors.WriteError`."""
    pending = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        link_or_copy(source, pending)
        os.replace(pending, target)
    except OSError as exc:
        raise write_error(target, exc) from exc
    finally:
        with contextlib.suppress(OSError):
            pending.unlink()


def save_mask(path: Path, mask: np.ndarray) -> None:
    """Write a 0/1 mask bit-packed (8 pixels a byte, uncompressed: fast on the GUI thread)."""
    mask = np.asarray(mask)
    bits = np.packbits(mask.view(bool) if mask.dtype == np.uint8 and mask.max(initial=0) <= 1 else mask > 0)
    with open(path, "wb") as fh:
        np.savez(fh, bits=bits, shape=np.asarray(mask.shape, np.int64))


def load_mask(path: Path) -> np.ndarray:
    """A mask :func:`save_mask` wrote, as uint8 0/1."""
    with np.load(path, allow_pickle=False) as npz:
        shape = tuple(int(v) for v in npz["shape"])
        bits = npz["bits"]
    return np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape).astype(np.uint8)


def load_probability(path: Path) -> np.ndarray:
    """A probability map kept in a round (the project's array format), as float32."""
    with np.load(path, allow_pickle=False) as npz:
        return np.asarray(npz["data"], np.float32)


def mask_dice(a: np.ndarray, b: np.ndarray) -> float | None:
    """Dice between two 0/1 masks of the same shape (1.0 when both are empty; None when shapes differ),
    on a regular grid of at most about :data:`DICE_PIXELS` pixels (a list's number, cheap on any map)."""
    if a.shape != b.shape:
        return None
    a, b = np.asarray(a), np.asarray(b)
    step = max(1, int(np.ceil(np.sqrt(a.size / DICE_PIXELS))))
    a, b = a[::step, ::step], b[::step, ::step]
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        a, b = (a > 0).view(np.uint8), (b > 0).view(np.uint8)
    total = np.count_nonzero(a) + np.count_nonzero(b)
    return 1.0 if total == 0 else 2.0 * np.count_nonzero(a & b) / total


def write_figure(path: Path, masks: Mapping[str, np.ndarray]) -> None:
    """A small PNG of the masks side by side (white: tumour, a grey gap between them)."""
    from PIL import Image

    panels = []
    for mask in masks.values():
        step = max(1, int(np.ceil(max(mask.shape) / FIGURE_SIDE)))
        panels.append(np.where(np.asarray(mask)[::step, ::step] > 0, 255, 40).astype(np.uint8))
    if not panels:
        return
    height = max(p.shape[0] for p in panels)
    gap = np.full((height, 4), 128, np.uint8)
    padded = [np.pad(p, ((0, height - p.shape[0]), (0, 0)), constant_values=128) for p in panels]
    row = np.concatenate([part for p in padded for part in (p, gap)][:-1], axis=1)
    Image.fromarray(row).save(path)


# --- keeping a round -------------------------------------------------------------------------------------


def _clean_leftovers(folder: Path) -> None:
    """Remove hidden half-written rounds a crash left (the project's lock keeps other writers out)."""
    for child in folder.glob(".*.part"):
        shutil.rmtree(child, ignore_errors=True)


def archive_round(
    project_root: str | os.PathLike[str],
    *,
    files: Mapping[str, Path],
    masks: Mapping[str, np.ndarray],
    record: Mapping[str, Any],
) -> RoundInfo:
    """Keep a round: link or copy ``files`` (name in the round → file now) into a new round folder, save
    ``masks`` (stage → mask), a figure and ``record`` (JSON-able; ``number`` and ``created`` are added),
    all in a hidden folder renamed to ``rounds/<n>/`` at the end; ``n`` is one more than the highest
    kept. A failure is a :class:`~napari_milkd.core.errors.WriteError` and leaves no round behind."""
    folder = rounds_dir(project_root)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(folder, exc) from exc
    _clean_leftovers(folder)
    taken = [int(c.name) for c in folder.iterdir() if c.name.isdigit()]
    number = max(taken, default=0) + 1
    pending = folder / f".{number}.{uuid.uuid4().hex[:8]}.part"
    created = time.time()
    try:
        pending.mkdir()
        for name, source in files.items():
            link_or_copy(source, pending / name)
        for stage, mask in masks.items():
            save_mask(pending / f"{stage}_mask.npz", mask)
        with contextlib.suppress(Exception):  # a picture is a convenience, never a reason to fail
            write_figure(pending / FIGURE_FILE, masks)
        date = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(created))
        payload = {**record, "number": number, "created": created, "date": date}
        (pending / ROUND_FILE).write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
        while True:
            try:
                os.rename(pending, folder / str(number))
                break
            except OSError:
                if not (folder / str(number)).exists():
                    raise
                number += 1  # taken meanwhile: the next number (the record says the folder's)
                payload["number"] = number
                (pending / ROUND_FILE).write_text(
                    json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8"
                )
    except OSError as exc:
        shutil.rmtree(pending, ignore_errors=True)
        raise write_error(folder / str(number), exc) from exc
    except BaseException:
        shutil.rmtree(pending, ignore_errors=True)
        raise
    return RoundInfo.read(folder / str(number))


__all__ = [
    "FIGURE_FILE",
    "ROUNDS_DIR",
    "ROUND_FILE",
    "RoundInfo",
    "archive_round",
    "fingerprint",
    "kept_fingerprints",
    "link_or_copy",
    "list_rounds",
    "load_mask",
    "load_probability",
    "mask_dice",
    "read_round",
    "replace_with",
    "rounds_dir",
    "save_mask",
    "write_figure",
]
