"""Long-running slide jobs for front-ends: train (teacher or student) on a slide, then predict its map.

Owns the sequence "open slide → bags → train → load the selected model → predict the working map" as
one generator (reading the bag tiles, with progress, is its first part), so the widget can run it in a
worker thread (progress, Cancel between batches) and tests and the CLI can drain it. Jobs receive
copies — paths, arrays, configs — never layers, open the slide themselves and close it before returning.
May import numpy, torch (through the engine) and core modules.

Cancelling (the consumer stops iterating) loses at most the current epoch: the engine writes each
epoch's checkpoint before yielding its event, and a later job with ``resume=True`` continues from it.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_milkd.core.engine.config import TrainConfig, TrainEvent, TrainResult
from napari_milkd.core.engine.datasets import BagSet
from napari_milkd.core.engine.spec import ModelSpec
from napari_milkd.core.inference.stream import PredictProgress, predict_map
from napari_milkd.core.progress import relay
from napari_milkd.core.runtime import free_device_memory
from napari_milkd.core.session.labels import ReadingTiles, slide_bags_job
from napari_milkd.core.session.weak_labels import REGIONS_RULE, BagRule
from napari_milkd.core.slides.geometry import SlideWork
from napari_milkd.core.slides.slide import SlideSource, open_slide


@dataclass(frozen=True)
class MapPreview:
    """Prediction progress with the map being filled: rows ``[0, rows_done)`` of ``probability`` are final.

    ``probability`` is the job's own buffer (shared, written by the worker below ``rows_done`` only), so
    a front-end can show the mask appearing band by band without copying the whole map per event.
    """

    stage: str
    done: int
    total: int
    rows_done: int
    probability: np.ndarray


JobEvent = ReadingTiles | TrainEvent | MapPreview


@dataclass(frozen=True)
class StageOutput:
    """What a job returns: the stage, its working-resolution probability map and its training result."""

    stage: str
    probability: np.ndarray
    result: TrainResult
    n_positive: int
    n_negative: int


def checkpoint_is_complete(path: Path) -> bool:
    """True when ``path`` holds a finished run (a later job starts anew instead of resuming it)."""
    from napari_milkd.core.engine.checkpoint import load_checkpoint

    try:
        return bool(load_checkpoint(path).get("complete"))
    except Exception:
        return False


def slide_stage_job(
    stage: str,
    slide_path: str,
    mpp: float,
    work: SlideWork,
    regions: np.ndarray,
    config: TrainConfig,
    checkpoint_dir: str | Path,
    *,
    hard_labels: np.ndarray | None = None,
    teacher_checkpoint: str | Path | None = None,
    resume: bool = True,
    card: dict[str, Any] | None = None,
    bag_rule: BagRule = REGIONS_RULE,
) -> Generator[JobEvent, None, StageOutput]:
    """Train ``stage`` (``"teacher"`` or ``"student"``) on a slide's weak labels, then predict its map.

    ``regions`` is the weak-label map (1 contains tumour, 2 tumour-free) and ``hard_labels`` the
    corrections map (0/1, 255 none), both at the working resolution of ``work``. The checkpoint goes to
    ``checkpoint_dir/<stage>.pt``; an unfinished one is resumed when ``resume``, a finished one is
    replaced by a new run. A student needs ``teacher_checkpoint``. Every checkpoint records the model's
    input spec (working µm/px, tile size), so any predictor feeds it as it was trained, and the model
    card's provenance ``card`` (see :func:`~napari_milkd.core.engine.card.slide_provenance`). Tiles
    become bags by ``bag_rule`` (:mod:`~napari_milkd.core.session.weak_labels`).
    """
    if stage not in ("teacher", "student"):
        raise ValueError(f"unknown stage {stage!r}")
    checkpoint = Path(checkpoint_dir) / f"{stage}.pt"
    # The model's input spec travels with its weights: `milkd predict` reads the µm/px and tile from it.
    spec = ModelSpec.for_config(config, mpp=work.grid.mpp)
    source = open_slide(slide_path, mpp=mpp)
    try:
        bags, labels, _ = yield from slide_bags_job(
            source, work, regions, hard_labels=hard_labels, rule=bag_rule, stage=stage
        )
        train, val = bags.split(0.2, seed=config.seed)
        if not val.n_pos or not val.n_neg:
            val = None  # too few bags to hold out both kinds: select on the last epoch
        result = yield from train_stage_job(
            stage,
            train,
            val,
            config,
            checkpoint,
            spec=spec,
            teacher_checkpoint=teacher_checkpoint,
            resume=resume,
            card=card,
        )
        probability = yield from predict_stage_map(stage, checkpoint, source, work, config)
    finally:
        source.close()
    return StageOutput(
        stage=stage,
        probability=probability,
        result=result,
        n_positive=labels.n_positive,
        n_negative=labels.n_negative,
    )


def train_stage_job(
    stage: str,
    train: BagSet,
    val: BagSet | None,
    config: TrainConfig,
    checkpoint: Path,
    *,
    spec: ModelSpec,
    teacher_checkpoint: str | Path | None = None,
    resume: bool = True,
    card: dict[str, Any] | None = None,
) -> Generator[TrainEvent, None, TrainResult]:
    """Train ``stage`` on ``train`` (selecting on ``val``, or on the last epoch when None) into
    ``checkpoint``: an unfinished checkpoint is resumed when ``resume``, a finished one is replaced by a
    new run. A student needs ``teacher_checkpoint``. The part of :func:`slide_stage_job` a group of
    slides shares (:mod:`~napari_milkd.core.session.slide_group`)."""
    from napari_milkd.core.engine.train import distill_student, train_teacher

    continuing = resume and checkpoint.exists() and not checkpoint_is_complete(checkpoint)
    if stage == "teacher":
        gen = train_teacher(
            train, val, config, checkpoint=checkpoint, resume=continuing, spec=spec, card=card
        )
    elif stage == "student":
        if teacher_checkpoint is None:
            raise ValueError("a student needs a teacher checkpoint")
        gen = distill_student(
            train,
            val,
            config,
            teacher=teacher_checkpoint,
            checkpoint=checkpoint,
            resume=continuing,
            spec=spec,
            card=card,
        )
    else:
        raise ValueError(f"unknown stage {stage!r}")
    return (yield from gen)


def predict_stage_map(
    stage: str,
    checkpoint: Path,
    source: SlideSource,
    work: SlideWork,
    config: TrainConfig,
    *,
    preview: bool = True,
    name: str | None = None,
) -> Generator[MapPreview | PredictProgress, None, np.ndarray]:
    """Load the model of ``checkpoint`` and predict the working map of the open slide ``source``.

    With ``preview`` its events are :class:`MapPreview` (the map filling band by band), else the
    predictor's own progress events. ``name`` (the slide's) is added to the events' stage. The model is
    freed before returning.
    """
    from napari_milkd.core.engine.train import load_model

    model, _ = load_model(checkpoint, device=config.device)
    buffer = np.zeros(work.shape, np.float32)
    gen = predict_map(
        model,
        source,
        work.grid,
        batch_size=config.batch_size,
        device=config.device,
        stage=f"{stage} map" + (f" of {name}" if name else ""),
        out=buffer,
    )

    def as_preview(event: Any) -> MapPreview:
        return MapPreview(event.stage, event.done, event.total, int(event.rows_done or 0), buffer)

    try:
        probability = yield from (relay(gen, as_preview) if preview else gen)
    finally:
        del model
        free_device_memory()
    return probability
