"""Reliability of the engine: numerical faults, failed writes, unsafe checkpoints and paths from files.

See ``docs/reliability.md`` for the whole matrix and where each case is tested.
"""

from __future__ import annotations

import errno
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from napari_milkd.core.annotations import read_ome_zarr_labels, write_ome_zarr_labels
from napari_milkd.core.atomic import write_bytes_atomic, write_json_atomic
from napari_milkd.core.engine import train as train_module
from napari_milkd.core.engine.checkpoint import load_checkpoint, save_checkpoint
from napari_milkd.core.engine.config import BatchProgress, BatchSizeReduced, EpochEnd, TrainConfig
from napari_milkd.core.engine.datasets import BagSet, load_image_folder
from napari_milkd.core.engine.train import load_model, train_teacher
from napari_milkd.core.errors import CheckpointError, MilkdError, TrainingError, WriteError
from napari_milkd.core.progress import drain
from napari_milkd.core.session.project import Project

CFG = TrainConfig(backbone="tiny", size=32, batch_size=4, teacher_epochs=3, device="cpu", lr=3e-3)


def _events(gen: object) -> list[object]:
    out: list[object] = []
    drain(gen, out.append)  # type: ignore[arg-type]
    return out


# ------------------------------------------------------------------------------------------ numerical faults


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(
    square_bags: BagSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_loss = train_module._teacher_loss
    calls = {"n": 0}
    per_epoch = 4  # 16 bags / batch 4, no validation split

    def nan_from_epoch_2(out, labels, config):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        loss = real_loss(out, labels, config)
        return loss * float("nan") if calls["n"] > per_epoch else loss

    monkeypatch.setattr(train_module, "_teacher_loss", nan_from_epoch_2)
    ckpt = tmp_path / "teacher.pt"
    seen: list[object] = []
    with pytest.raises(TrainingError, match=r"teacher loss became nan at epoch 2, batch 1") as info:
        for event in train_teacher(square_bags, None, CFG, ckpt):
            seen.append(event)
    assert "teacher.pt keeps epoch 1" in str(info.value) and "\n" not in str(info.value)
    assert [e.epoch for e in seen if isinstance(e, EpochEnd)] == [1]
    state = load_checkpoint(ckpt)
    assert state["epoch"] == 1 and not state["complete"]
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert all(torch.isfinite(t).all() for t in state["last_model"].values() if t.is_floating_point())


def _oom_above(limit: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every training step with more than ``limit`` samples raise CUDA's out-of-memory error."""
    real_loss = train_module._teacher_loss

    def loss(out, labels, config):  # type: ignore[no-untyped-def]
        if len(labels) > limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_loss(out, labels, config)

    monkeypatch.setattr(train_module, "_teacher_loss", loss)


def test_out_of_memory_halves_the_batch_and_continues(
    square_bags: BagSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _oom_above(2, monkeypatch)
    config = TrainConfig.from_dict({**CFG.to_dict(), "batch_size": 8, "teacher_epochs": 2})
    bags = square_bags.subset(np.arange(8))
    events = _events(train_teacher(bags, None, config, tmp_path / "t.pt"))
    reduced = [e for e in events if isinstance(e, BatchSizeReduced)]
    assert [(e.old, e.new, e.epoch) for e in reduced] == [(8, 4, 1), (4, 2, 1)]  # then it stays at 2
    batches = [e for e in events if isinstance(e, BatchProgress)]
    assert len(batches) == 2 * 8 // 2 and all(e.n_batches == 4 for e in batches)
    assert load_checkpoint(tmp_path / "t.pt")["complete"]
    assert "out of GPU memory at batch size 8, continuing with 4" in caplog.text


def test_out_of_memory_at_the_floor_stops_cleanly(
    square_bags: BagSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _oom_above(0, monkeypatch)
    with pytest.raises(TrainingError, match=r"out of GPU memory at batch size 1: training stopped; no epoch"):
        drain(train_teacher(square_bags, None, CFG, tmp_path / "t.pt"))
    assert not (tmp_path / "t.pt").exists()


# ------------------------------------------------------------------------------------------ failed writes


def _fill_disk_midway(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ``os.replace`` of a finished temporary file fails as if the disk had filled up while writing."""
    real_replace = os.replace

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(src).name.startswith("."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def test_full_disk_keeps_previous_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = Project(tmp_path / "p.milkd")
    labels = np.ones((20, 30), np.uint8)
    project.save_array("corrections", labels)
    project.save_settings({"tile": 128})
    save_checkpoint(tmp_path / "c.pt", {"model": {"w": torch.ones(2)}, "backbone": "tiny", "config": {}})
    write_bytes_atomic(tmp_path / "a.bin", b"before")
    _fill_disk_midway(monkeypatch)
    for write in (
        lambda: project.save_array("corrections", labels * 0),
        lambda: project.save_settings({"tile": 256}),
        lambda: save_checkpoint(tmp_path / "c.pt", {"model": {}, "backbone": "tiny", "config": {}}),
        lambda: write_bytes_atomic(tmp_path / "a.bin", b"after"),
        lambda: write_json_atomic(tmp_path / "new.json", {}),
    ):
        with pytest.raises(WriteError, match=r"could not write .*: the disk is full") as info:
            write()
        assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC  # widget's except OSError
    monkeypatch.undo()
    assert np.array_equal(project.load_array("corrections")[0], labels)
    assert project.load_settings()["tile"] == 128
    assert torch.equal(load_checkpoint(tmp_path / "c.pt")["model"]["w"], torch.ones(2))
    assert (tmp_path / "a.bin").read_bytes() == b"before" and not (tmp_path / "new.json").exists()
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".part")]


def test_unwritable_destination_is_a_write_error(tmp_path: Path) -> None:
    # Tests may run as root, where chmod does not stop writes: a path below a regular file is unwritable
    # for everyone.
    (tmp_path / "file").write_text("x")
    with pytest.raises(WriteError, match=r"could not write .*file/sub/a\.json: part of the path is a file"):
        write_json_atomic(tmp_path / "file" / "sub" / "a.json", {})
    with pytest.raises(WriteError, match="could not write"):
        write_ome_zarr_labels(
            tmp_path / "file" / "m.zarr", np.zeros((4, 4), np.uint8), name="m", mpp=None, downsample=1
        )


def test_ome_zarr_full_disk_keeps_the_previous_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "m.zarr"
    write_ome_zarr_labels(target, np.ones((8, 8), np.uint8), name="m", mpp=0.5, downsample=2)
    _fill_disk_midway(monkeypatch)
    with pytest.raises(WriteError, match="the disk is full"):
        write_ome_zarr_labels(target, np.zeros((8, 8), np.uint8), name="m", mpp=0.5, downsample=2)
    monkeypatch.undo()
    labels, _ = read_ome_zarr_labels(target, "m")
    assert (labels == 1).all() and [p.name for p in tmp_path.iterdir()] == ["m.zarr"]


# ------------------------------------------------------------------------------------------ security


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoints_with_code_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    as_torch = tmp_path / "torch.pt"
    torch.save({"format": "napari-milkd/checkpoint-v1", "model": _Evil(marker)}, as_torch)
    as_pickle = tmp_path / "pickle.pt"
    as_pickle.write_bytes(pickle.dumps(_Evil(marker)))
    for path in (as_torch, as_pickle):
        with pytest.raises(CheckpointError, match="cannot read checkpoint"):
            load_checkpoint(path)
        with pytest.raises(CheckpointError):
            load_model(path, device="cpu")
    assert not marker.exists()


def test_paths_stored_in_a_checkpoint_are_never_opened(tmp_path: Path) -> None:
    """The config keeps the weights path it was trained with; loading the model never reads it."""
    config = TrainConfig.from_dict(
        {**CFG.to_dict(), "teacher_epochs": 1, "weights": str(tmp_path / "nope.pth")}
    )
    config_ok = TrainConfig.from_dict({**config.to_dict(), "weights": "random"})
    bags = BagSet.from_arrays(np.zeros((2, 32, 32, 3), np.uint8), [0, 1])
    drain(train_teacher(bags, None, config_ok, tmp_path / "t.pt"))
    state = load_checkpoint(tmp_path / "t.pt")
    save_checkpoint(tmp_path / "t.pt", {**state, "config": config.to_dict()})
    model, loaded = load_model(tmp_path / "t.pt", device="cpu")  # "weights file not found" if it were read
    assert loaded.weights == str(tmp_path / "nope.pth") and not model.training


def test_csv_names_never_reach_outside_the_image_folder(tmp_path: Path) -> None:
    images = tmp_path / "data" / "images"
    images.mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((20, 20, 3), 100 + i, np.uint8)).save(images / f"im{i}.png")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "data" / "im0.png")  # a decoy outside
    secret = tmp_path / "secret.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(secret)
    names = ["../im0.png", "../../secret.png", str(secret), "..\\secret.png", "..", "im1", "im2.png"]
    rows = ["name,label", *(f'"{n}",{"t" if i % 2 else "n"}' for i, n in enumerate(names)), "im3,t"]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    bags = load_image_folder(images, tmp_path / "labels.csv", "name", "label", "t", 16)
    assert bags.names == ["im1", "im2", "im3"]
    assert bags.skipped == names[:5]
    with pytest.raises(MilkdError, match="matches a name"):
        (tmp_path / "only_bad.csv").write_text("name,label\n../../secret.png,t\n")
        load_image_folder(images, tmp_path / "only_bad.csv", "name", "label", "t", 16)
