"""The image-folder job for front-ends: teacher then student on image bags, then predictions to review.

Owns the sequence "split → train teacher → distil student → predict every image with both" as one
generator (events out, a :class:`FolderOutput` back), so the widget runs it in a worker and tests drain it.
The bags come from :func:`napari_milkd.core.engine.datasets.load_image_folder` (the paper's setting: a
folder of images plus a label CSV). May import numpy, torch (through the engine) and core modules.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_milkd.core.engine.config import TrainConfig, TrainEvent
from napari_milkd.core.engine.datasets import BagSet


@dataclass(frozen=True)
class FolderOutput:
    """Per-image fused probabilities ``(N, S, S)`` of teacher and student, and where the run lives."""

    teacher: np.ndarray
    student: np.ndarray
    run_dir: str


def folder_training_job(
    bags: BagSet, config: TrainConfig, run_dir: str | Path, *, resume: bool = True
) -> Generator[TrainEvent, None, FolderOutput]:
    """Train the MIL teacher and distil the student on ``bags`` (validation split grouped by patient when
    the bags carry groups); checkpoints go to ``run_dir/teacher.pt`` and ``run_dir/student.pt``."""
    from napari_milkd.core.engine.train import distill_student, load_model, predict_probs, train_teacher
    from napari_milkd.core.session.jobs import checkpoint_is_complete

    run = Path(run_dir)
    teacher, student = run / "teacher.pt", run / "student.pt"
    train, val = bags.split(0.2, seed=config.seed)
    # An unfinished run continues; a finished one is trained anew (the user asked to train again).
    fresh_teacher = not (resume and teacher.exists() and not checkpoint_is_complete(teacher))
    yield from train_teacher(train, val, config, checkpoint=teacher, resume=not fresh_teacher)
    continue_student = (
        resume and not fresh_teacher and student.exists() and not checkpoint_is_complete(student)
    )
    yield from distill_student(
        train, val, config, teacher=teacher, checkpoint=student, resume=continue_student
    )
    probabilities = {}
    for stage in ("teacher", "student"):
        model, _ = load_model(teacher if stage == "teacher" else student, device=config.device)
        probabilities[stage] = predict_probs(model, bags.images, config.batch_size, config.device)
    return FolderOutput(teacher=probabilities["teacher"], student=probabilities["student"], run_dir=str(run))
