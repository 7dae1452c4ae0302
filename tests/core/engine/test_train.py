"""Training generators: events, checkpoints, resume, role reversal (no aliasing), validation-only choice."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_milkd.core.engine.checkpoint import load_checkpoint, save_checkpoint
from napari_milkd.core.engine.config import BatchProgress, EpochEnd, RoleReversal, TrainConfig
from napari_milkd.core.engine.datasets import BagSet
from napari_milkd.core.engine.train import distill_student, load_model, predict_probs, train_teacher
from napari_milkd.core.errors import CheckpointError, InputError
from napari_milkd.core.progress import drain

CFG = TrainConfig(
    backbone="tiny", size=32, batch_size=4, teacher_epochs=3, student_epochs=4, switch_every=1,
    switch_from=1, device="cpu", lr=3e-3,
)  # fmt: skip


def _split(bags: BagSet) -> tuple[BagSet, BagSet]:
    return bags.split(0.25, seed=0)


def _states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_teacher_generator_events_checkpoint_before_epoch_event(square_bags: BagSet, tmp_path: Path) -> None:
    train, val = _split(square_bags)
    ckpt = tmp_path / "teacher.pt"
    gen = train_teacher(train, val, CFG, ckpt)
    batches = epochs = 0
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            result = stop.value
            break
        if isinstance(event, BatchProgress):
            batches += 1
            assert event.n_batches == 3 and np.isfinite(event.loss)
        elif isinstance(event, EpochEnd):
            epochs += 1
            state = load_checkpoint(ckpt)  # on disk before the event is seen
            assert state["epoch"] == event.epoch and not state["complete"]
    assert (batches, epochs) == (9, 3)
    assert result.epochs == 3 and result.checkpoint == str(ckpt)
    assert load_checkpoint(ckpt)["complete"]
    assert [p.name for p in tmp_path.iterdir()] == ["teacher.pt"]  # no temp files left behind


def test_seeded_runs_are_reproducible(square_bags: BagSet) -> None:
    train, val = _split(square_bags)
    a = drain(train_teacher(train, val, CFG))
    b = drain(train_teacher(train, val, CFG))
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]


@pytest.mark.parametrize("stage", ["teacher", "student"])
def test_resume_matches_uninterrupted_run(square_bags: BagSet, tmp_path: Path, stage: str) -> None:
    train, val = _split(square_bags)
    teacher_ckpt = tmp_path / "t.pt"
    drain(train_teacher(train, val, CFG, teacher_ckpt))

    def run(ckpt: Path, resume: bool = False):
        if stage == "teacher":
            return train_teacher(train, val, CFG, ckpt, resume)
        return distill_student(train, val, CFG, teacher_ckpt, ckpt, resume)

    full = drain(run(tmp_path / "full.pt"))
    part = tmp_path / "part.pt"
    gen = run(part)
    for event in gen:  # stop for good after epoch 2's event, as a cancelled widget worker would
        if isinstance(event, EpochEnd) and event.epoch == 2:
            break
    gen.close()
    assert load_checkpoint(part)["epoch"] == 2
    resumed_events: list[object] = []
    resumed = drain(run(part, resume=True), resumed_events.append)
    first = next(e for e in resumed_events if isinstance(e, BatchProgress))
    assert first.epoch == 3  # continues after the last complete epoch
    a, b = load_checkpoint(tmp_path / "full.pt"), load_checkpoint(part)
    assert _states_equal(a["last_model"], b["last_model"])
    assert _states_equal(a["model"], b["model"])
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in full.history]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in resumed.history]
    assert full.switches == resumed.switches


def test_role_reversal_copies_the_best_student_without_aliasing(square_bags: BagSet, tmp_path: Path) -> None:
    train, val = _split(square_bags)
    teacher_ckpt = tmp_path / "t.pt"
    drain(train_teacher(train, val, CFG, teacher_ckpt))
    first_teacher = load_checkpoint(teacher_ckpt)["model"]
    cfg = TrainConfig.from_dict({**CFG.to_dict(), "switch_every": 2, "student_epochs": 4})
    ckpt = tmp_path / "s.pt"
    snapshots = {}
    reversals = []
    for event in distill_student(train, val, cfg, teacher_ckpt, ckpt):
        if isinstance(event, EpochEnd):
            snapshots[event.epoch] = load_checkpoint(ckpt)
        elif isinstance(event, RoleReversal):
            reversals.append(event)
    assert [r.epoch for r in reversals] == [1, 3]  # from epoch 1 every 2 epochs, none at the last
    e1, e2, e3 = snapshots[1], snapshots[2], snapshots[3]
    # epoch 0..1: the teacher is the first teacher; after the reversal at epoch 1, the best student of epoch 1
    assert _states_equal(e1["teacher_model"], e1["model"])
    assert not _states_equal(e1["teacher_model"], first_teacher)
    # a further epoch of student steps moves the student but not the teacher (a copy, not an alias)
    assert not _states_equal(e2["last_model"], e1["last_model"])
    assert _states_equal(e2["teacher_model"], e1["model"])
    assert not _states_equal(e2["teacher_model"], e2["last_model"])
    # the second reversal takes the best student as of epoch 3
    assert _states_equal(e3["teacher_model"], e3["model"])


def _scripted_scores(monkeypatch: pytest.MonkeyPatch, scores: list[float]) -> None:
    """Make the validator return ``scores`` epoch after epoch (best epoch known in advance)."""
    it = iter(scores)
    monkeypatch.setattr("napari_milkd.core.engine.train._Validator.score", lambda self, model: next(it))


def test_best_state_is_a_frozen_copy(
    square_bags: BagSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train, val = _split(square_bags)
    _scripted_scores(monkeypatch, [0.5, 0.9, 0.1, 0.2])
    cfg = TrainConfig.from_dict({**CFG.to_dict(), "teacher_epochs": 4})
    ckpt = tmp_path / "t.pt"
    snaps = {}
    for event in train_teacher(train, val, cfg, ckpt):
        if isinstance(event, EpochEnd):
            snaps[event.epoch] = load_checkpoint(ckpt)
    final = snaps[4]
    assert final["best_epoch"] == 2
    assert _states_equal(final["model"], snaps[2]["last_model"])  # epoch 2's weights, not the live ones
    assert not _states_equal(final["model"], final["last_model"])


def test_role_reversal_takes_the_best_not_the_current_student(
    square_bags: BagSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train, val = _split(square_bags)
    teacher_ckpt = tmp_path / "t.pt"
    drain(train_teacher(train, None, CFG, teacher_ckpt))
    _scripted_scores(monkeypatch, [0.1, 0.9, 0.3, 0.2])  # best student: epoch 2; reversal after epoch 3
    cfg = TrainConfig.from_dict({**CFG.to_dict(), "switch_every": 3, "switch_from": 3})
    ckpt = tmp_path / "s.pt"
    snaps = {}
    for event in distill_student(train, val, cfg, teacher_ckpt, ckpt):
        if isinstance(event, EpochEnd):
            snaps[event.epoch] = load_checkpoint(ckpt)
    assert snaps[4]["switches"] == [3]
    assert _states_equal(snaps[3]["teacher_model"], snaps[2]["last_model"])
    assert not _states_equal(snaps[3]["teacher_model"], snaps[3]["last_model"])
    assert _states_equal(snaps[4]["teacher_model"], snaps[2]["last_model"])  # unchanged by epoch 4's steps


def test_selection_uses_only_the_validation_split(square_bags: BagSet, tmp_path: Path, make_bags) -> None:
    # there is no way to pass test data: selection and role reversal see train and val only
    assert set(inspect.signature(train_teacher).parameters) == {
        "train",
        "val",
        "config",
        "checkpoint",
        "resume",
        "spec",
        "card",  # provenance text for the model card, never data
    }
    params = set(inspect.signature(distill_student).parameters)
    assert params == {"train", "val", "config", "teacher", "checkpoint", "resume", "spec", "card"}
    train, val = _split(square_bags)
    cfg = TrainConfig.from_dict({**CFG.to_dict(), "teacher_epochs": 1, "student_epochs": 3})
    teacher = tmp_path / "t.pt"
    drain(train_teacher(train, val, cfg, teacher))
    a = drain(distill_student(train, val, cfg, teacher, tmp_path / "a.pt"))
    before = (tmp_path / "a.pt").read_bytes()
    # scoring the selected model on some test data afterwards changes neither the checkpoint nor the choice
    model, _ = load_model(tmp_path / "a.pt", "cpu")
    predict_probs(model, make_bags(6, 32, seed=5).images, device="cpu")
    assert (tmp_path / "a.pt").read_bytes() == before
    b = drain(distill_student(train, val, cfg, teacher))
    assert [h["val_score"] for h in a.history] == [h["val_score"] for h in b.history]
    assert (a.best_epoch, a.switches) == (b.best_epoch, b.switches)
    # ... while the validation data does drive the scores
    c = drain(distill_student(train, make_bags(4, 32, seed=9), cfg, teacher))
    assert [h["val_score"] for h in c.history] != [h["val_score"] for h in a.history]


def test_full_supervision_learns_the_masks(tmp_path: Path, make_bags) -> None:
    bags = make_bags(24, 32, seed=1)
    train, val = bags.split(0.25, seed=0)
    cfg = TrainConfig.from_dict({**CFG.to_dict(), "supervision": "full", "teacher_epochs": 12, "lr": 1e-2})
    result = drain(train_teacher(train, val, cfg, tmp_path / "full.pt"))
    assert result.stage == "full"
    assert result.best_score is not None and result.best_score > 0.8  # mean of tumour / background F1


def test_hard_labels_reach_the_student(square_bags: BagSet, tmp_path: Path) -> None:
    train, val = _split(square_bags)
    teacher = tmp_path / "t.pt"
    drain(train_teacher(train, val, CFG, teacher))
    neg = train.labels == 0
    hard = np.full(train.images.shape[:3], 255, np.uint8)
    hard[neg] = 1  # a human overrides the bag label: the negative images are all tumour
    cfg = TrainConfig.from_dict({**CFG.to_dict(), "student_epochs": 4, "switch_every": 0, "lr": 1e-2})
    mean_neg = {}
    for name, labels in (("plain", None), ("human", hard)):
        bags = BagSet.from_arrays(train.images, train.labels, hard_labels=labels, groups=train.groups)
        drain(distill_student(bags, None, cfg, teacher, tmp_path / f"{name}.pt"))
        model, _ = load_model(tmp_path / f"{name}.pt", "cpu")
        mean_neg[name] = predict_probs(model, train.images[neg], device="cpu").mean()
    assert mean_neg["human"] > 0.7 > 0.3 > mean_neg["plain"]


def test_checkpoint_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a napari-milkd checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    save_checkpoint(tmp_path / "ok.pt", {"model": {"w": torch.ones(2)}, "backbone": "tiny", "config": {}})
    assert torch.equal(load_checkpoint(tmp_path / "ok.pt")["model"]["w"], torch.ones(2))


def test_resume_refuses_a_different_model(square_bags: BagSet, tmp_path: Path) -> None:
    train, val = _split(square_bags)
    ckpt = tmp_path / "t.pt"
    drain(train_teacher(train, val, TrainConfig.from_dict({**CFG.to_dict(), "teacher_epochs": 1}), ckpt))
    other = TrainConfig.from_dict({**CFG.to_dict(), "fusion_weights": [0.2, 0.2, 0.6]})
    with pytest.raises(CheckpointError, match="fusion_weights"):
        drain(train_teacher(train, val, other, ckpt, resume=True))


def test_config_errors(square_bags: BagSet) -> None:
    negatives = square_bags.subset(np.flatnonzero(square_bags.labels == 0))
    with pytest.raises(InputError, match="positive and one negative"):
        drain(train_teacher(negatives, None, CFG))
    with pytest.raises(InputError, match="size"):
        drain(train_teacher(square_bags, None, TrainConfig.from_dict({**CFG.to_dict(), "size": 64})))


def test_student_init_teacher_starts_from_a_copy_of_its_teacher(square_bags: BagSet, tmp_path: Path) -> None:
    from napari_milkd.core.engine.train import new_model

    train, _ = _split(square_bags)
    teacher = tmp_path / "t.pt"
    drain(train_teacher(train, None, CFG, teacher))
    teacher_state = load_checkpoint(teacher)["model"]
    params = [name for name, _ in new_model(CFG).named_parameters()]
    same = {}
    for init in ("weights", "teacher"):
        # lr 0: the parameters the student ends with are those it started from (BN statistics still move)
        cfg = TrainConfig.from_dict({**CFG.to_dict(), "student_epochs": 1, "switch_every": 0, "lr": 0.0,
                                     "student_init": init})  # fmt: skip
        drain(distill_student(train, None, cfg, teacher, tmp_path / f"{init}.pt"))
        student = load_checkpoint(tmp_path / f"{init}.pt")["model"]
        same[init] = all(torch.equal(student[k], teacher_state[k]) for k in params)
    assert same == {"weights": False, "teacher": True}
