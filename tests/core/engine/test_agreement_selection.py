"""Model selection without masks (``select_on="agreement"``) and the per-epoch record of every criterion."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_milkd.core.engine.config import EpochEnd, TrainConfig
from napari_milkd.core.engine.datasets import BagSet
from napari_milkd.core.engine.losses import IGNORE
from napari_milkd.core.engine.models.dws_mil import SegOutput
from napari_milkd.core.engine.train import (
    CORRECTION_WEIGHT,
    SELECT_ON,
    _Runtime,
    _Validator,
    distill_student,
    load_model,
    train_teacher,
)
from napari_milkd.core.errors import InputError
from napari_milkd.core.progress import drain

CFG = TrainConfig(
    backbone="tiny", size=32, batch_size=4, teacher_epochs=3, student_epochs=3, switch_every=1,
    switch_from=1, device="cpu", lr=3e-3,
)  # fmt: skip


class _Painter(torch.nn.Module):
    """A fake net whose fused map is fixed per image (looked up by the image's top-left pixel value)."""

    def __init__(self, maps: dict[int, torch.Tensor]) -> None:
        super().__init__()
        self.maps = maps

    def forward(self, x: torch.Tensor) -> SegOutput:
        keys = (x[:, 0, 0, 0] * 255).round().long().tolist()
        prob = torch.stack([self.maps[k] for k in keys]).unsqueeze(1).float()
        logit = torch.logit(prob.clamp(1e-4, 1 - 1e-4))
        return SegOutput(sides=(logit, logit, logit), fused_logit=logit, fused_prob=prob)


def _val_bags(hard: np.ndarray | None = None) -> BagSet:
    """Four 16-px validation bags: 0 and 2 negative, 1 and 3 positive (tumour in the top half)."""
    images = np.zeros((4, 16, 16, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(4) + 10  # the key _Painter reads
    masks = np.zeros((4, 16, 16), np.uint8)
    masks[[1, 3], :8] = 1
    return BagSet.from_arrays(images, np.array([0, 1, 0, 1]), masks=masks, hard_labels=hard)


def _maps(negatives: float) -> dict[int, torch.Tensor]:
    """Positives: top half called tumour; negatives: the first ``negatives`` fraction of rows painted."""
    tumour = torch.zeros(16, 16)
    tumour[:8] = 1
    painted = torch.zeros(16, 16)
    painted[: round(16 * negatives)] = 1
    return {10: painted, 11: tumour, 12: painted, 13: tumour}


def _validator(val: BagSet, stage: str = "teacher") -> _Validator:
    config = replace(CFG, size=16, select_on="agreement")
    return _Validator(val, config, _Runtime(config), stage)


def test_agreement_ranks_a_model_that_paints_negatives_below_one_that_does_not() -> None:
    validator = _validator(_val_bags())
    clean = validator.scores(_Painter(_maps(0.0)))
    painter = validator.scores(_Painter(_maps(0.5)))
    assert clean["agreement_neg"] == pytest.approx(1.0)
    assert painter["agreement_neg"] == pytest.approx(0.5)
    assert clean["agreement_pos"] == painter["agreement_pos"] == pytest.approx(0.5)  # half of each called
    assert clean["agreement"] == pytest.approx(0.75)
    assert painter["agreement"] == pytest.approx(0.5)
    assert validator.score(_Painter(_maps(0.0))) > validator.score(_Painter(_maps(0.5)))
    # the mask oracle agrees on the order, and is recorded beside it
    assert clean["masks"] > painter["masks"]


def test_student_agreement_is_dice_with_the_first_teachers_mask() -> None:
    validator = _validator(_val_bags(), stage="student")
    validator.set_targets(_Painter(_maps(0.0)))
    same = validator.scores(_Painter(_maps(0.0)))
    assert same["agreement_pos"] == pytest.approx(1.0) and same["agreement"] == pytest.approx(1.0)
    everything = {k: torch.ones(16, 16) for k in (10, 11, 12, 13)}
    other = validator.scores(_Painter(everything))
    # Dice of the whole image with its top half: 2·128 / (256 + 128)
    assert other["agreement_pos"] == pytest.approx(2 / 3)
    assert other["agreement_neg"] == pytest.approx(0.0)
    assert other["agreement"] < same["agreement"]
    assert "weak" in same and "masks" in same


def test_corrected_pixels_change_the_score() -> None:
    hard = np.full((4, 16, 16), IGNORE, np.uint8)
    hard[1, 8:] = 0  # a human marked the bottom half of positive bag 1 as background
    plain = _validator(_val_bags())
    corrected = _validator(_val_bags(hard))
    right = _maps(0.0)  # calls the top half of positives only: agrees with the correction
    wrong = {**right, 11: torch.ones(16, 16)}  # paints the whole of bag 1, corrected pixels included
    assert "agreement_corrected" not in plain.scores(_Painter(right))
    a, b = corrected.scores(_Painter(right)), corrected.scores(_Painter(wrong))
    assert a["agreement_corrected"] == pytest.approx(1.0)
    assert b["agreement_corrected"] == pytest.approx(0.0)
    # without corrections, painting all of a positive bag looks better (more tumour found) ...
    assert plain.score(_Painter(wrong)) > plain.score(_Painter(right))
    # ... the corrections reverse the order, with their documented weight
    assert a["agreement"] > b["agreement"]
    weak_terms = (a["agreement_neg"] + a["agreement_pos"]) / 2
    assert a["agreement"] == pytest.approx((1 - CORRECTION_WEIGHT) * weak_terms + CORRECTION_WEIGHT * 1.0)


def test_corrections_that_are_all_ignore_add_no_term() -> None:
    hard = np.full((4, 16, 16), IGNORE, np.uint8)
    scores = _validator(_val_bags(hard)).scores(_Painter(_maps(0.25)))
    assert "agreement_corrected" not in scores
    assert scores["agreement"] == pytest.approx((0.75 + 0.5) / 2)


@pytest.mark.parametrize("select_on", SELECT_ON)
def test_history_holds_every_criterion_and_selection_follows_select_on(
    square_bags: BagSet, tmp_path: Path, select_on: str
) -> None:
    train, val = square_bags.split(0.25, seed=0)
    config = replace(CFG, select_on=select_on)
    events: list[EpochEnd] = []

    def collect(gen):  # type: ignore[no-untyped-def]
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                return stop.value
            if isinstance(event, EpochEnd):
                events.append(event)

    teacher = collect(train_teacher(train, val, config, tmp_path / "t.pt"))
    student = collect(distill_student(train, val, config, tmp_path / "t.pt", tmp_path / "s.pt"))
    for result in (teacher, student):
        assert len(result.history) == 3
        for record in result.history:
            assert {"weak", "agreement", "masks", "agreement_neg", "agreement_pos"} <= set(record["val"])
            assert record["val_score"] == record["val"][select_on]
            assert all(np.isfinite(v) for v in record["val"].values())
    # the teacher's kept epoch is the first best of the selected criterion (no role reversal there)
    column = [h["val"][select_on] for h in teacher.history]
    assert teacher.best_epoch == int(np.argmax(column)) + 1
    assert all(e.extra == h["val"] for e, h in zip(events, teacher.history + student.history, strict=True))
    _, saved = load_model(tmp_path / "s.pt", device="cpu")  # the checkpoint accepts the criterion
    assert saved.select_on == select_on


def test_history_without_validation_masks_has_no_mask_criterion(square_bags: BagSet) -> None:
    train, val = square_bags.split(0.25, seed=0)
    val = replace(val, masks=None)
    result = drain(train_teacher(train, val, replace(CFG, teacher_epochs=1, select_on="agreement")))
    assert "masks" not in result.history[0]["val"] and "agreement" in result.history[0]["val"]
    with pytest.raises(InputError, match="masks"):
        drain(train_teacher(train, val, replace(CFG, teacher_epochs=1, select_on="masks")))


def test_unknown_criterion_is_a_clear_error(square_bags: BagSet) -> None:
    train, val = square_bags.split(0.25, seed=0)
    with pytest.raises(InputError, match=r"select_on must be one of weak, agreement, masks.*'f1'"):
        drain(train_teacher(train, val, replace(CFG, select_on="f1")))


def test_cli_offers_agreement_and_writes_every_criterion(tmp_path: Path) -> None:
    from PIL import Image

    from napari_milkd.cli import build_parser, main

    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--select-on", "f1"])
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    rows = ["name,patient,label"]
    for i in range(12):
        img = rng.integers(60, 140, (32, 32, 3), dtype=np.uint8)
        mask = np.zeros((32, 32), np.uint8)
        if i % 2:
            mask[8:24, 8:24] = 255
            img[mask > 0] = (220, 40, 40)
        Image.fromarray(img).save(tmp_path / "images" / f"im{i}.png")
        Image.fromarray(mask).save(tmp_path / "masks" / f"im{i}.png")
        rows.append(f"im{i},p{i // 2},{'tumour' if i % 2 else 'normal'}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    argv = [
        "train", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels.csv"),
        "--name-column", "name", "--label-column", "label", "--positive", "tumour",
        "--patient-column", "patient", "--masks", str(tmp_path / "masks"), "--out", str(run),
        "--backbone", "tiny", "--size", "32", "--batch-size", "4", "--teacher-epochs", "1",
        "--student-epochs", "1", "--switch-every", "0", "--device", "cpu",
    ]  # fmt: skip
    assert main([*argv, "--select-on", "weak"]) == 0
    assert json.loads((run / "config.json").read_text())["config"]["select_on"] == "weak"
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["stage"] for h in history] == ["teacher", "student"]
    for h in history:
        assert {"weak", "agreement", "masks"} <= set(h["val"])
        assert h["val_score"] == h["val"]["weak"]
    # the default is now agreement, but a run started on weak resumes on weak without the flag
    assert main([*argv, "--resume"]) == 0
    assert json.loads((run / "config.json").read_text())["config"]["select_on"] == "weak"


def test_agreement_is_the_default_of_the_config_and_every_preset() -> None:
    from napari_milkd.core.engine.presets import PRESET_NAMES, schedule

    assert TrainConfig().select_on == "agreement"
    assert {schedule(name).select_on for name in PRESET_NAMES} == {"agreement"}
    assert schedule("quick", select_on="weak").select_on == "weak"
