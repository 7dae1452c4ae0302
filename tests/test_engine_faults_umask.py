"""Issue 15 case 5: atomic writes respect the umask (0644 under 022), not ``mkstemp``'s private 0600."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest
import torch

from napari_milkd.core.atomic import write_bytes_atomic, write_json_atomic, write_text_atomic
from napari_milkd.core.engine.checkpoint import save_checkpoint

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask():
    """Set the process umask for one test, then restore it."""
    old = os.umask(0o022)
    os.umask(old)

    def set_(mask: int) -> None:
        os.umask(mask)

    yield set_
    os.umask(old)


@pytest.mark.parametrize(
    ("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750), (0o002, 0o664, 0o775)]
)
def test_atomic_files_and_folders_follow_the_umask(
    tmp_path: Path, umask, mask: int, file_mode: int, dir_mode: int
) -> None:
    from napari_milkd.core import atomic

    umask(mask)
    if hasattr(atomic, "current_umask"):
        assert atomic.current_umask() == mask
    written = {
        "text": tmp_path / "a" / "export.geojson",
        "json": tmp_path / "b" / "project.json",
        "bytes": tmp_path / "c" / "weak_labels.npz",
        "checkpoint": tmp_path / "d" / "nested" / "teacher.pt",
    }
    write_text_atomic(written["text"], "{}")
    write_json_atomic(written["json"], {"a": 1})
    write_bytes_atomic(written["bytes"], b"x")
    save_checkpoint(written["checkpoint"], {"model": {"w": torch.ones(1)}})
    for what, path in written.items():
        assert _mode(path) == file_mode, (what, oct(_mode(path)))
    for folder in (tmp_path / "a", tmp_path / "d", tmp_path / "d" / "nested"):
        assert _mode(folder) == dir_mode, (folder, oct(_mode(folder)))


def test_replacing_a_file_gives_the_umask_mode_too(tmp_path: Path, umask) -> None:
    umask(0o022)
    target = tmp_path / "tumour.geojson"
    write_text_atomic(target, "one")
    write_text_atomic(target, "two")
    assert target.read_text() == "two" and _mode(target) == 0o644
