"""Issue 18 case 7: tampered or broken checkpoints are refused with one line at load, never half-used."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from napari_milkd.cli import main
from napari_milkd.core.engine.checkpoint import load_checkpoint
from napari_milkd.core.engine.config import TrainConfig
from napari_milkd.core.engine.datasets import BagSet
from napari_milkd.core.engine.train import load_model, train_teacher
from napari_milkd.core.errors import CheckpointError
from napari_milkd.core.progress import drain

CFG = TrainConfig(backbone="tiny", size=32, batch_size=8, teacher_epochs=1, device="cpu", augment=False)


@pytest.fixture
def good(square_bags: BagSet, tmp_path: Path) -> Path:
    path = tmp_path / "teacher.pt"
    train, val = square_bags.split(0.25, seed=0)
    drain(train_teacher(train, val, CFG, path))
    return path


def _tampered(good: Path, tmp_path: Path, change) -> Path:
    state = torch.load(good, weights_only=True)
    change(state)
    out = tmp_path / "tampered.pt"
    torch.save(state, out)
    return out


def _set_size(size: object, spec_too: bool):
    def change(state: dict) -> None:
        state["config"]["size"] = size
        if spec_too:
            state["spec"]["tile"] = size

    return change


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (_set_size(10**6, spec_too=True), "config size must be in [16, 4096]"),
        (_set_size(10**6, spec_too=False), "size"),
        (_set_size("abc", spec_too=False), "config size must be an integer"),
        (_set_size(True, spec_too=False), "config size must be an integer"),
        (lambda s: s["config"].update(fusion_weights="abc"), "config fusion_weights"),
        (lambda s: s["config"].update(backbone="resnet"), "config backbone must be one of"),
        (lambda s: s["config"].update(lr=float("nan")), "config lr must be a finite number"),
        (lambda s: s.update(epoch="abc"), "'epoch'"),
        (lambda s: s["model"].update({next(iter(s["model"])): "not a tensor"}), "not a named tensor"),
    ],
)
def test_tampered_config_is_one_line(good: Path, tmp_path: Path, change, words: str) -> None:
    bad = _tampered(good, tmp_path, change)
    with pytest.raises(CheckpointError) as info:
        load_model(bad, "cpu")
    message = str(info.value)
    assert "\n" not in message and str(bad) in message and words in message, message


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused_at_load(good: Path, tmp_path: Path, value: float) -> None:
    def poison(state: dict) -> None:
        for tensor in state["model"].values():
            if tensor.is_floating_point():
                tensor.fill_(value)

    bad = _tampered(good, tmp_path, poison)
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        load_model(bad, "cpu")


def test_one_nan_in_one_tensor_is_enough(good: Path, tmp_path: Path) -> None:
    def poison(state: dict) -> None:
        name = sorted(state["model"])[-1]
        state["model"][name].view(-1)[0] = float("nan")

    with pytest.raises(CheckpointError, match="NaN or infinite"):
        load_checkpoint(_tampered(good, tmp_path, poison))


def test_the_untampered_checkpoint_still_loads(good: Path) -> None:
    model, config = load_model(good, "cpu")
    assert config.size == 32 and not model.training


def test_cli_evaluate_with_a_tampered_size_is_one_line(
    good: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    _tampered(good, tmp_path, _set_size("abc", spec_too=False)).rename(run / "teacher.pt")
    (tmp_path / "images").mkdir()
    (tmp_path / "labels.csv").write_text("name,label\n")
    code = main(["evaluate", "--run", str(run), "--images", str(tmp_path / "images"), "--labels",
                 str(tmp_path / "labels.csv"), "--name-column", "name", "--label-column", "label",
                 "--positive", "t", "--masks", str(tmp_path / "images")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("milkd: error: "), err
    assert "config size must be an integer" in err, err  # the checkpoint is refused before anything else
