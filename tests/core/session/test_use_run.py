"""A run trained elsewhere opens on a slide (issue #11, "trained headless and opened in the widget"): its
models become the session's and predict the slide, only at the µm/px and tile size they were trained at;
a refusal changes nothing, and the models they replace are kept as a round."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_milkd.core.engine.presets import schedule
from napari_milkd.core.errors import InputError
from napari_milkd.core.progress import drain
from napari_milkd.core.session.project import Project
from napari_milkd.core.session.slide_session import SlideSession
from napari_milkd.core.session.weak_labels import REGION_FREE, REGION_TUMOUR
from slide_images import TWO_TONE_SPLIT, two_tone_slide

CONFIG = schedule("quick", backbone="tiny", teacher_epochs=2, student_epochs=2, batch_size=8, device="cpu")


def test_a_run_trained_on_one_slide_predicts_another_at_its_own_geometry(tmp_path: Path) -> None:
    first = two_tone_slide(tmp_path / "a.tiff", seed=1)
    second = two_tone_slide(tmp_path / "b.tiff", seed=2)
    with SlideSession(first, project=Project(tmp_path / "pa")) as trainer:
        trainer.prepare(1.0, 32)
        assert trainer.weak is not None and trainer.work is not None
        split = round(TWO_TONE_SPLIT / trainer.work.downsample)
        trainer.weak[:, :split] = REGION_TUMOUR
        trainer.weak[:, split:] = REGION_FREE
        trainer.weak[~trainer.tissue] = 0
        trainer.train("teacher", CONFIG)
        run = trainer.project.checkpoints

    # Another slide prepared at another tile size: refused, nothing changes.
    with SlideSession(second, project=Project(tmp_path / "pb")) as other:
        other.prepare(1.0, 64)
        with pytest.raises(InputError, match="trained at 1 µm/px with 32 px tiles"):
            other.use_run_job(run, CONFIG)
        assert not other.project.checkpoints.exists() or not any(other.project.checkpoints.iterdir())
        assert other.rounds() == []

    with SlideSession(second, project=Project(tmp_path / "pb")) as other:
        other.prepare(1.0, 32)
        outputs = drain(other.use_run_job(run, CONFIG))
        assert [o.stage for o in outputs] == ["teacher"]
        for output in outputs:
            other.accept(output)
        mask = other.mask("teacher")
        assert mask is not None and mask.shape == other.work.shape
        assert other.checkpoint("teacher").read_bytes() == (run / "teacher.pt").read_bytes()
        # The model it replaces the next time is kept as a round first.
        drain(other.use_run_job(run, CONFIG))
        assert len(other.rounds()) == 1
    with SlideSession(second, project=Project(tmp_path / "pc")) as empty:
        empty.prepare(1.0, 32)
        with pytest.raises(InputError, match=r"no teacher\.pt or student\.pt"):
            empty.use_run_job(tmp_path, CONFIG)
    assert np.isfinite(outputs[0].probability).all()
