"""The model's input spec: round trip, validation, and every trainer writing it into its checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from napari_milkd.core.engine.checkpoint import load_checkpoint, save_checkpoint
from napari_milkd.core.engine.config import EpochEnd, TrainConfig
from napari_milkd.core.engine.datasets import BagSet
from napari_milkd.core.engine.models import build_model
from napari_milkd.core.engine.models.dws_mil import IMAGENET_MEAN, IMAGENET_STD
from napari_milkd.core.engine.spec import ModelSpec, checkpoint_spec
from napari_milkd.core.engine.train import distill_student, load_model, train_teacher
from napari_milkd.core.errors import CheckpointError, InputError
from napari_milkd.core.progress import drain

CFG = TrainConfig(
    backbone="tiny", size=32, batch_size=4, teacher_epochs=2, student_epochs=2, switch_every=1,
    device="cpu", lr=3e-3,
)  # fmt: skip


def test_round_trip_is_json_and_exact() -> None:
    spec = ModelSpec(mpp=0.5, tile=256, overlap=16, backbone="vgg16")
    data = json.loads(json.dumps(spec.to_dict()))  # JSON-ready
    assert data == {
        "mpp": 0.5,
        "tile": 256,
        "overlap": 16,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "backbone": "vgg16",
    }
    assert ModelSpec.from_dict(data) == spec
    unknown = ModelSpec(mpp=None, tile=64, backbone="tiny")
    assert unknown.overlap == 8 and ModelSpec.from_dict(unknown.to_dict()) == unknown
    assert ModelSpec.from_dict({**unknown.to_dict(), "future_key": 1}) == unknown  # forward compatible
    del data["overlap"]
    assert ModelSpec.from_dict(data).overlap == 32  # round(256 / 8)


def test_for_config() -> None:
    config = TrainConfig(backbone="efficientnet_lite0", size=192)
    spec = ModelSpec.for_config(config, mpp=1)
    assert (spec.mpp, spec.tile, spec.overlap, spec.backbone) == (1.0, 192, 24, "efficientnet_lite0")
    assert isinstance(spec.mpp, float)
    assert ModelSpec.for_config(config, mpp=None, overlap=0).overlap == 0
    with pytest.raises(InputError, match="mpp"):
        ModelSpec.for_config(config, mpp=-0.5)


def test_normalisation_is_what_the_model_applies() -> None:
    spec = ModelSpec(mpp=None, tile=32, backbone="tiny")
    model = build_model("tiny", "random")
    assert spec.mean == IMAGENET_MEAN and spec.std == IMAGENET_STD
    assert model.mean.flatten().tolist() == pytest.approx(list(spec.mean))
    assert model.std.flatten().tolist() == pytest.approx(list(spec.std))


GOOD = ModelSpec(mpp=0.5, tile=64, backbone="tiny").to_dict()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mpp": -1.0}, "mpp"),
        ({"mpp": "0.5"}, "mpp must be a finite number"),
        ({"mpp": float("nan")}, "mpp must be a finite number"),
        ({"mpp": True}, "mpp must be a finite number"),
        ({"tile": 64.0}, "tile must be an integer"),
        ({"tile": 0}, "tile must be ≥ 1"),
        ({"overlap": 64}, "overlap must be in"),
        ({"overlap": -1}, "overlap must be in"),
        ({"mean": [0.5, 0.5]}, "mean must be 3 numbers"),
        ({"std": [0.2, 0.0, 0.2]}, "std must be positive"),
        ({"backbone": ""}, "backbone"),
        ({"backbone": None}, "backbone"),
    ],
)
def test_malformed_spec_is_a_checkpoint_error(change: dict, message: str) -> None:
    with pytest.raises(CheckpointError, match=message) as info:
        ModelSpec.from_dict({**GOOD, **change})
    assert str(info.value).startswith("malformed model spec: ") and "\n" not in str(info.value)


def test_missing_keys_and_non_mapping() -> None:
    with pytest.raises(CheckpointError, match="missing mpp, tile"):
        ModelSpec.from_dict({"mean": [0, 0, 0], "std": [1, 1, 1], "backbone": "tiny"})
    with pytest.raises(CheckpointError, match="expected a mapping"):
        ModelSpec.from_dict([1, 2, 3])


def test_checkpoint_spec_and_legacy_checkpoints(tmp_path: Path) -> None:
    config = TrainConfig(backbone="tiny", size=64).to_dict()
    assert checkpoint_spec({"backbone": "tiny", "config": config}) is None  # legacy: no spec
    state = {"backbone": "tiny", "config": config, "spec": GOOD}
    assert checkpoint_spec(state) == ModelSpec(mpp=0.5, tile=64, backbone="tiny")
    with pytest.raises(CheckpointError, match="backbone vgg16"):
        checkpoint_spec({**state, "spec": {**GOOD, "backbone": "vgg16"}})
    with pytest.raises(CheckpointError, match="128-px tiles but the model was trained at 64 px"):
        checkpoint_spec({**state, "spec": {**GOOD, "tile": 128}})
    # A malformed spec on disk is refused when the checkpoint is loaded, with the file named.
    model = {"w": torch.ones(1)}
    save_checkpoint(tmp_path / "bad.pt", {"model": model, "backbone": "tiny", "config": config, "spec": 3})
    with pytest.raises(CheckpointError, match=r"bad\.pt: malformed model spec"):
        load_checkpoint(tmp_path / "bad.pt")
    save_checkpoint(tmp_path / "old.pt", {"model": model, "backbone": "tiny", "config": config})
    assert checkpoint_spec(load_checkpoint(tmp_path / "old.pt")) is None  # legacy still loads


def _weights_only(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_teacher_and_student_checkpoints_carry_the_spec(square_bags: BagSet, tmp_path: Path) -> None:
    train, val = square_bags.split(0.25, seed=0)
    spec = ModelSpec.for_config(CFG, mpp=0.5, overlap=4)
    teacher = tmp_path / "teacher.pt"
    for event in train_teacher(train, val, CFG, teacher, spec=spec):
        if isinstance(event, EpochEnd):  # every epoch's checkpoint, not only the final one
            assert _weights_only(teacher)["spec"] == spec.to_dict()
    assert _weights_only(teacher)["complete"] and checkpoint_spec(load_checkpoint(teacher)) == spec
    student = tmp_path / "student.pt"
    for event in distill_student(train, val, CFG, teacher, student, spec=spec):
        if isinstance(event, EpochEnd):
            assert _weights_only(student)["spec"] == spec.to_dict()
    assert checkpoint_spec(load_checkpoint(student)) == spec
    load_model(student, "cpu")  # its normalisation is the one the model applies


def test_without_a_spec_the_mpp_is_unknown_or_the_teachers(square_bags: BagSet, tmp_path: Path) -> None:
    train, val = square_bags.split(0.25, seed=0)
    drain(train_teacher(train, val, CFG, tmp_path / "plain.pt"))
    assert checkpoint_spec(load_checkpoint(tmp_path / "plain.pt")) == ModelSpec.for_config(CFG, mpp=None)
    teacher = tmp_path / "teacher.pt"
    drain(train_teacher(train, val, CFG, teacher, spec=ModelSpec.for_config(CFG, mpp=2.0)))
    # the student learns from the same tiles as its teacher: it inherits the teacher's µm/px
    drain(distill_student(train, val, CFG, teacher, tmp_path / "s1.pt"))
    assert checkpoint_spec(load_checkpoint(tmp_path / "s1.pt")).mpp == 2.0
    unknown = ModelSpec.for_config(CFG, mpp=None)
    drain(distill_student(train, val, CFG, teacher, tmp_path / "s2.pt", spec=unknown))
    assert checkpoint_spec(load_checkpoint(tmp_path / "s2.pt")).mpp == 2.0
    with pytest.raises(InputError, match=r"trained at 2 µm/px but the student's spec says 0\.5 µm/px"):
        drain(distill_student(train, val, CFG, teacher, spec=ModelSpec.for_config(CFG, mpp=0.5)))
    with pytest.raises(InputError, match="does not match the config"):
        drain(train_teacher(train, val, CFG, spec=ModelSpec(mpp=1.0, tile=64, backbone="tiny")))


def test_resume_keeps_the_runs_mpp(square_bags: BagSet, tmp_path: Path) -> None:
    train, val = square_bags.split(0.25, seed=0)
    ckpt = tmp_path / "t.pt"
    gen = train_teacher(train, val, CFG, ckpt, spec=ModelSpec.for_config(CFG, mpp=0.5))
    for event in gen:  # stopped after epoch 1, as a cancelled worker would be
        if isinstance(event, EpochEnd):
            break
    gen.close()
    assert load_checkpoint(ckpt)["epoch"] == 1
    with pytest.raises(CheckpointError, match=r"trained at 0\.5 µm/px, not 1 µm/px"):
        drain(train_teacher(train, val, CFG, ckpt, resume=True, spec=ModelSpec.for_config(CFG, mpp=1.0)))
    drain(train_teacher(train, val, CFG, ckpt, resume=True))  # no spec given: the checkpoint's µm/px
    state = load_checkpoint(ckpt)
    assert state["epoch"] == 2 and state["complete"] and checkpoint_spec(state).mpp == 0.5
