"""Issue 18 case 3: a full disk / file-size limit during a checkpoint, array or JSON write.

Real faults, no mocks: the writes run in a child process under ``ulimit -f`` (``RLIMIT_FSIZE``) with
SIGXFSZ ignored, so ``write`` fails with EFBIG exactly as on a disk that cannot take the file. Every
write must end in a one-line ``WriteError`` and keep the previous file byte for byte; ``torch.save``'s
own ``RuntimeError`` (``inline_container.cc … unexpected pos``) must never reach the user.
"""

from __future__ import annotations

import csv
import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from napari_milkd.core.atomic import write_bytes_atomic, write_json_atomic
from napari_milkd.core.engine.checkpoint import load_checkpoint, save_checkpoint

MILKD = str(Path(sys.executable).parent / "milkd")
LIMIT = 64 * 1024  # bytes: the largest file the child may write

pytestmark = pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="needs RLIMIT_FSIZE (POSIX)")


def _limited(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


CHILD = textwrap.dedent(
    """
    import io, json, sys
    import numpy as np, torch
    from napari_milkd.core.atomic import write_bytes_atomic, write_json_atomic
    from napari_milkd.core.engine.checkpoint import save_checkpoint

    folder = sys.argv[1]
    big = {"model": {"w": torch.arange(200_000, dtype=torch.float32)}, "backbone": "tiny", "config": {}}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, data=np.random.default_rng(0).random((300, 300)))
    writes = {
        "checkpoint": lambda: save_checkpoint(folder + "/model.pt", big),
        "array": lambda: write_bytes_atomic(folder + "/weak_labels.npz", buffer.getvalue()),
        "json": lambda: write_json_atomic(folder + "/project.json", {"x": list(range(100_000))}),
    }
    out = {}
    for name, write in writes.items():
        try:
            write()
            out[name] = ["ok", "", None]
        except BaseException as exc:
            out[name] = [type(exc).__name__, str(exc), getattr(exc, "errno", None)]
    print(json.dumps(out))
    """
)


def test_size_limit_on_every_write_is_a_one_line_write_error(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "model.pt", {"model": {"w": torch.ones(3)}, "backbone": "tiny", "config": {}})
    write_bytes_atomic(tmp_path / "weak_labels.npz", b"previous array")
    write_json_atomic(tmp_path / "project.json", {"previous": True})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        capture_output=True,
        text=True,
        preexec_fn=_limited(LIMIT),
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    for name, (kind, message, errno_) in outcome.items():
        assert kind == "WriteError", (name, kind, message)
        assert "\n" not in message and message.startswith("could not write "), message
        assert "file-size limit" in message and "previous version" in message, message
        assert errno_ == 27  # EFBIG
    # the previous files are whole, and no temporary file is left
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert load_checkpoint(tmp_path / "model.pt")["model"]["w"].tolist() == [1.0, 1.0, 1.0]


def _folder(root: Path) -> list[str]:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    rows = [("name", "label")]
    for i in range(8):
        img = rng.integers(60, 140, (24, 24, 3), dtype=np.uint8)
        if i % 2:
            img[4:14, 4:14] = (220, 40, 40)
        Image.fromarray(img).save(root / "images" / f"im{i}.png")
        rows.append((f"im{i}", "tumour" if i % 2 else "normal"))
    with (root / "labels.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return [
        "train", "--images", str(root / "images"), "--labels", str(root / "labels.csv"), "--name-column",
        "name", "--label-column", "label", "--positive", "tumour", "--backbone", "tiny", "--size", "24",
        "--batch-size", "4", "--teacher-epochs", "1", "--student-epochs", "1", "--switch-every", "0",
        "--device", "cpu",
    ]  # fmt: skip


def test_cli_train_under_a_size_limit_is_one_line_and_keeps_the_teacher(tmp_path: Path) -> None:
    """``milkd train`` where the teacher's checkpoint fits and the (larger) student's does not."""
    args = _folder(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    free = subprocess.run(
        [MILKD, *args, "--out", str(tmp_path / "free")], capture_output=True, text=True, env=env, timeout=300
    )
    assert free.returncode == 0, free.stderr
    teacher_size = (tmp_path / "free" / "teacher.pt").stat().st_size
    student_size = (tmp_path / "free" / "student.pt").stat().st_size
    assert student_size > teacher_size + 4096  # the student also carries its teacher's weights
    limit = (teacher_size + student_size) // 2
    run = tmp_path / "limited"
    result = subprocess.run(
        [MILKD, *args, "--out", str(run)],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=_limited(limit),
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "RuntimeError" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("milkd: error: could not write ") and "student.pt" in lines[-1], lines
    assert "file-size limit" in lines[-1]
    assert sum(line.startswith("milkd: error") for line in lines) == 1
    assert load_checkpoint(run / "teacher.pt")["complete"]  # the finished teacher is kept
    assert not (run / "student.pt").exists()
    assert [p.name for p in run.iterdir() if p.name.endswith(".part")] == []
