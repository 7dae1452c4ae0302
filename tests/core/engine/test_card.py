"""Issue 15 case 7: every checkpoint carries a model card; describe_model / is_sample_only read it."""

from __future__ import annotations

from pathlib import Path

import torch

from napari_milkd.core.engine.card import (
    SAMPLE_WARNING,
    card_lines,
    describe_model,
    folder_provenance,
    is_sample_only,
    model_card,
    slide_provenance,
)
from napari_milkd.core.engine.checkpoint import load_checkpoint
from napari_milkd.core.engine.config import TrainConfig
from napari_milkd.core.engine.datasets import BagSet
from napari_milkd.core.engine.spec import ModelSpec
from napari_milkd.core.engine.train import distill_student, train_teacher
from napari_milkd.core.progress import drain

CFG = TrainConfig(
    backbone="tiny", size=32, batch_size=8, teacher_epochs=2, student_epochs=2, switch_every=0,
    device="cpu", augment=False,
)  # fmt: skip


def test_trainers_write_the_card_with_provenance_dates_and_validation(
    square_bags: BagSet, tmp_path: Path
) -> None:
    train, val = square_bags.split(0.25, seed=0)
    spec = ModelSpec.for_config(CFG, mpp=0.5)
    card = slide_provenance(["/data/CMU-1.svs"], preset="quick")
    drain(train_teacher(train, val, CFG, tmp_path / "t.pt", spec=spec, card=card))
    drain(distill_student(train, val, CFG, tmp_path / "t.pt", tmp_path / "s.pt", spec=spec))
    for name, stage in (("t.pt", "teacher"), ("s.pt", "student")):
        state = load_checkpoint(tmp_path / name)
        c = state["card"]
        assert c["stage"] == stage and c["trained_on"]["slides"] == ["CMU-1.svs"]  # student inherits it
        assert c["classes"]["positive"] == "contains tumour" and c["preset"] == "quick"
        assert c["spec"]["mpp"] == 0.5 and c["schedule"]["teacher_epochs"] == 2
        assert c["epochs"] == {"done": 2, "planned": 2}
        assert c["bags"] == {"train": len(train), "train_positive": train.n_pos, "validation": len(val),
                             "validation_positive": val.n_pos}  # fmt: skip
        assert c["validation"]["best_epoch"] == state["best_epoch"]
        assert (
            c["validation"]["best_score"] == state["best_score"]
            and "validation" in c["validation"]["criterion"]
        )
        assert c["created"] <= c["updated"] and c["software"].startswith("napari-milkd ")
        line = describe_model(state)
        assert "\n" not in line and line.startswith(f"{stage} model (tiny, 32-px tiles at 0.5 µm/px)")
        assert "CMU-1.svs" in line and "2/2 epochs" in line
        assert not is_sample_only(state)
    assert load_checkpoint(tmp_path / "s.pt")["card"]["teacher"]["stage"] == "teacher"


def test_sample_only_models_say_so(square_bags: BagSet, tmp_path: Path) -> None:
    train, val = square_bags.split(0.25, seed=0)
    cfg = TrainConfig.from_dict({**CFG.to_dict(), "teacher_epochs": 1})
    card = slide_provenance(["sample.tiff"], sample_only=True)
    drain(train_teacher(train, val, cfg, tmp_path / "t.pt", card=card))
    state = load_checkpoint(tmp_path / "t.pt")
    assert is_sample_only(state)
    text = describe_model(state)
    assert (
        "trained only on the synthetic sample slide" in text
        and text.splitlines()[1] == f"warning: {SAMPLE_WARNING}"
    )
    assert any("trained only on the synthetic sample slide" in line for line in card_lines(state))


def test_resume_keeps_the_card_created_date(square_bags: BagSet, tmp_path: Path) -> None:
    train, val = square_bags.split(0.25, seed=0)
    card = folder_provenance("/x/images", "/x/labels.csv", name_column="n", label_column="l", positive="t")
    one = TrainConfig.from_dict({**CFG.to_dict(), "teacher_epochs": 1})
    drain(train_teacher(train, val, one, tmp_path / "t.pt", card=card))
    created = load_checkpoint(tmp_path / "t.pt")["card"]["created"]
    state = torch.load(tmp_path / "t.pt", weights_only=True)
    state["complete"] = False
    torch.save(state, tmp_path / "t.pt")
    drain(train_teacher(train, val, CFG, tmp_path / "t.pt", resume=True))  # no card given: keeps its own
    c = load_checkpoint(tmp_path / "t.pt")["card"]
    assert c["created"] == created and c["epochs"]["done"] == 2
    assert c["trained_on"]["kind"] == "image folder" and c["trained_on"]["labels"] == "/x/labels.csv"


def test_a_checkpoint_without_a_card_is_described_from_what_it_has(
    square_bags: BagSet, tmp_path: Path
) -> None:
    train, val = square_bags.split(0.25, seed=0)
    one = TrainConfig.from_dict({**CFG.to_dict(), "teacher_epochs": 1})
    drain(train_teacher(train, val, one, tmp_path / "t.pt"))
    state = load_checkpoint(tmp_path / "t.pt")
    assert state["card"]["trained_on"] == {"kind": "unknown"}  # no provenance given: said, not guessed
    del state["card"]  # as written before cards existed
    assert model_card(state)["recorded"] is False
    assert "not recorded (no model card)" in describe_model(state) and not is_sample_only(state)
    assert any("no model card" in line for line in card_lines(state))
