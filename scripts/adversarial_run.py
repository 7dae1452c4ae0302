#!/usr/bin/env python
"""The adversarial run of issue 18: hostile input and real faults against the installed ``milkd`` CLI.

Self-contained and repeatable: in a temporary folder it generates every input (slides, annotations, label
CSVs, manifests, checkpoints, malicious pickles), runs the ``milkd`` executable beside this interpreter in
subprocesses, and classifies each case:

* ``PASS``: exit 0 with the expected output, or exit 2 with exactly one ``milkd: error:`` line on stderr
  and no traceback;
* ``FAIL-traceback``: a traceback, another exit code (a crash, a signal), or not exactly one error line;
* ``FAIL-silent``: exit 0 but the result is wrong (a non-finite model predicts, a pickle's payload ran,
  a resumed output differs from an uninterrupted one, a refusal was due);
* ``FAIL-lost``: a file the user made was changed or deleted;
* ``FAIL-refused``: exit 2 where the command had to succeed (e.g. the resume after a kill).

Faults are real, not mocks: ``RLIMIT_FSIZE`` with SIGXFSZ ignored (a full disk: ``write`` gets EFBIG),
``RLIMIT_AS`` (``ulimit -v``), SIGKILL at several points, two processes at once.

Usage::

    .venv/bin/python scripts/adversarial_run.py [--quick] [--json out.json] [--jobs 2] [-k substring]

Exits 1 when any case fails. ``--quick`` runs a subset (42 of the 226 cases) in about four minutes.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import hashlib
import json
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

MILKD = str(Path(sys.executable).parent / "milkd")

PASS = "PASS"
TRACEBACK = "FAIL-traceback"
SILENT = "FAIL-silent"
LOST = "FAIL-lost"
REFUSED = "FAIL-refused"
STATUSES = (PASS, TRACEBACK, SILENT, LOST, REFUSED)

#: A verdict: (status, one-line detail).
Verdict = tuple[str, str]


# ----------------------------------------------------------------------------------------------- running


@dataclasses.dataclass
class Proc:
    """A finished ``milkd`` process."""

    rc: int
    out: str
    err: str
    seconds: float


#: Safety caps for every ``milkd`` process of the run (a case may set lower ones): no file over 1 GiB
#: (a runaway writer must not fill the disk), no more than 6 GiB of address space.
SAFE_FSIZE = 1 << 30
SAFE_MEM = 6 << 30


def _limits(fsize: int | None, mem: int | None) -> Callable[[], None]:
    """A ``preexec_fn`` that applies a file-size limit (SIGXFSZ ignored, so writes get EFBIG) and an
    address-space limit in the child before it runs ``milkd`` (the safety caps where none is given)."""
    fsize = SAFE_FSIZE if fsize is None else fsize
    mem = SAFE_MEM if mem is None else mem

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))

    return apply


class Runner:
    """Starts ``milkd`` with a controlled environment (everything cached or written goes under ``root``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "TORCH_HOME": str(root / "torch-home"),
            "MILKD_CACHE_DIR": str(root / "cache"),
            "MILKD_PROJECTS": str(root / "projects"),
            "PYTHONWARNINGS": "ignore",
        }

    def popen(
        self,
        args: list[str],
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        fsize: int | None = None,
        mem: int | None = None,
    ) -> subprocess.Popen[str]:
        """Start ``milkd args`` (stdout and stderr piped)."""
        return subprocess.Popen(
            [MILKD, *args],
            cwd=cwd,
            env={**self.env, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            preexec_fn=_limits(fsize, mem),
        )

    def run(
        self,
        args: list[str],
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        fsize: int | None = None,
        mem: int | None = None,
        timeout: float = 600,
    ) -> Proc:
        """Run ``milkd args`` to the end."""
        start = time.monotonic()
        proc = self.popen(args, cwd=cwd, env=env, fsize=fsize, mem=mem)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            err += f"\n[harness: timed out after {timeout} s]"
        return Proc(proc.returncode, out, err, time.monotonic() - start)

    def kill_when(
        self, args: list[str], predicate: Callable[[float], bool], *, timeout: float = 300
    ) -> tuple[bool, Proc]:
        """Start ``milkd args`` and SIGKILL it as soon as ``predicate(elapsed)`` holds. Returns whether it
        was killed (False: it finished first) and the process."""
        start = time.monotonic()
        proc = self.popen(args)
        killed = False
        # Drain the pipes in threads so that a chatty child never blocks on a full pipe.
        chunks: dict[str, list[str]] = {"out": [], "err": []}

        def drain(stream: Any, key: str) -> None:
            for line in stream:
                chunks[key].append(line)

        threads = [
            threading.Thread(target=drain, args=(proc.stdout, "out"), daemon=True),
            threading.Thread(target=drain, args=(proc.stderr, "err"), daemon=True),
        ]
        for t in threads:
            t.start()
        while proc.poll() is None:
            elapsed = time.monotonic() - start
            if predicate(elapsed):
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
            if elapsed > timeout:
                proc.kill()
                break
            time.sleep(0.005)
        proc.wait()
        for t in threads:
            t.join(timeout=10)
        return killed, Proc(proc.returncode, "".join(chunks["out"]), "".join(chunks["err"]), 0.0)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def judge(
    p: Proc, expect: str = "either", check: Callable[[], str | None] | None = None, phrase: str = ""
) -> Verdict:
    """Classify a finished process. ``expect``: ``"error"`` (must refuse), ``"ok"`` (must succeed) or
    ``"either"``; ``check`` (run on exit 0) returns what is wrong with the output, or None."""
    if "Traceback" in p.err or "Traceback" in p.out:
        return TRACEBACK, f"exit {p.rc}: {_last_line(p.err)}"
    if p.rc == 2:
        errors = [line for line in p.err.splitlines() if line.startswith("milkd: error:")]
        if len(errors) != 1:
            return TRACEBACK, f"exit 2 with {len(errors)} error lines: {_last_line(p.err)}"
        if expect == "ok":
            return REFUSED, errors[0][:300]
        detail = errors[0][:300]
        if phrase and phrase not in errors[0]:
            detail += f"  [note: expected the phrase {phrase!r}]"
        return PASS, detail
    if p.rc == 0:
        if expect == "error":
            return SILENT, f"exit 0 where a refusal was due: {_last_line(p.err) or _last_line(p.out)}"
        if check is not None:
            wrong = check()
            if wrong:
                return SILENT, wrong
        return PASS, "exit 0" + (f": {_last_line(p.err)[:120]}" if p.err.strip() else "")
    return TRACEBACK, f"exit {p.rc} (crash or signal): {_last_line(p.err)}"


#: Lock files milkd keeps in its output folders (its own bookkeeping; a stale one is taken over).
LOCK_NAMES = frozenset({".milkd-predict.lock", ".milkd-train.lock"})


class Guard:
    """Byte snapshot of user files and folders (and where symlinks point) to prove nothing was lost."""

    def __init__(self, *paths: Path) -> None:
        self.paths = paths
        self.before = {p: self._state(p) for p in paths}

    @staticmethod
    def _state(path: Path) -> object:
        if path.is_symlink():
            return ("link", os.readlink(path))
        if path.is_dir():  # milkd's own lock files (taken over when stale) are not the user's
            return {
                str(q.relative_to(path)): (q.read_bytes() if q.is_file() else os.readlink(q))
                for q in sorted(path.rglob("*"))
                if (q.is_file() or q.is_symlink()) and q.name not in LOCK_NAMES
            }
        if path.is_file():
            return path.read_bytes()
        return None

    def lost(self) -> str | None:
        """What changed (the first path, and inside a folder the first entry that differs), or None."""
        for p, before in self.before.items():
            now = self._state(p)
            if now == before:
                continue
            if isinstance(before, dict) and isinstance(now, dict):
                changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
                return f"{p.name}/{changed[0]} was changed or deleted"
            return f"{p.name} was changed or deleted"
        return None


def guarded(guard: Guard, verdict: Verdict) -> Verdict:
    """``verdict``, unless the guard saw a user file change (then ``FAIL-lost``)."""
    lost = guard.lost()
    return (LOST, lost) if lost else verdict


# ------------------------------------------------------------------------------------------------ inputs


def write_slide(
    path: Path, size: tuple[int, int] = (512, 640), seed: int = 0, mpp: float | None = 0.5
) -> Path:
    """A generated pyramidal TIFF: textured 'tissue' on white glass (``mpp=None``: no resolution tags)."""
    from napari_milkd.core.slides.sample import write_pyramidal_tiff

    h, w = size
    rng = np.random.default_rng(seed)
    image = np.full((h, w, 3), 240, np.uint8)
    y0, y1, x0, x1 = h // 6, h - h // 6, w // 6, w - w // 6
    yy, xx = np.mgrid[0 : y1 - y0, 0 : x1 - x0].astype(np.float32)
    tissue = np.stack([150 + 60 * np.sin(xx / 17), 80 + 50 * np.cos(yy / 13), 170 + 40 * np.sin(xx / 9)], -1)
    image[y0:y1, x0:x1] = np.clip(tissue + rng.normal(0, 10, tissue.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    if mpp is None:
        import tifffile

        tifffile.imwrite(path, image, tile=(128, 128), photometric="rgb")
        return path
    write_pyramidal_tiff(path, [image, image[::4, ::4].copy()], mpp=mpp, tile=128)
    return path


def write_tiny_run(folder: Path, seed: int = 0) -> Path:
    """A ``milkd train``-like run folder with a tiny random student (1 µm/px, 64-px tiles)."""
    import torch

    from napari_milkd.core.engine.checkpoint import save_checkpoint
    from napari_milkd.core.engine.config import TrainConfig
    from napari_milkd.core.engine.models import build_model
    from napari_milkd.core.engine.spec import ModelSpec

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = build_model("tiny", "random")
    payload = {
        "stage": "student",
        "backbone": "tiny",
        "config": TrainConfig(backbone="tiny", size=64, device="cpu").to_dict(),
        "epoch": 1,
        "complete": True,
        "model": model.state_dict(),
        "history": [],
        "best_epoch": 1,
        "best_score": None,
        "spec": ModelSpec(mpp=1.0, tile=64, backbone="tiny").to_dict(),
    }
    save_checkpoint(folder / "student.pt", payload)
    return folder


def _put(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` and return ``path``."""
    path.write_bytes(data)
    return path


def write_csv(path: Path, rows: Iterable[Iterable[object]], encoding: str = "utf-8") -> Path:
    """Write ``rows`` as CSV."""
    with path.open("w", newline="", encoding=encoding) as fh:
        csv.writer(fh).writerows(rows)
    return path


def write_images(root: Path, n: int = 8, size: int = 24) -> Path:
    """``root/images`` with ``n`` noise PNGs (odd ones with a red square) and ``root/labels.csv``."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str]] = [("name", "label")]
    for i in range(n):
        img = rng.integers(60, 140, (size, size, 3), dtype=np.uint8)
        if i % 2:
            img[4:14, 4:14] = (220, 40, 40)
        Image.fromarray(img).save(root / "images" / f"im{i}.png")
        rows.append((f"im{i}", "tumour" if i % 2 else "normal"))
    write_csv(root / "labels.csv", rows)
    return root


def feature(x0: float, y0: float, x1: float, y1: float, name: str) -> dict:
    """A QuPath annotation rectangle of class ``name``."""
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"objectType": "annotation", "classification": {"name": name, "color": [200, 0, 0]}},
    }


def good_geojson(path: Path) -> Path:
    """Tumour over the left half of the small slide's tissue, stroma over the right half."""
    fc = {
        "type": "FeatureCollection",
        "features": [feature(110, 90, 310, 420, "Tumor"), feature(330, 90, 530, 420, "Stroma")],
    }
    path.write_text(json.dumps(fc))
    return path


def prediction_digest(zarr_dir: Path) -> str:
    """A digest of a prediction's arrays (probability and mask) and of its GeoJSON geometries."""
    import zarr

    digest = hashlib.sha256()
    group = zarr.open_group(str(zarr_dir), mode="r")
    for key in ("0", "labels/tumour/0"):
        digest.update(np.asarray(group[key][...]).tobytes())
    geojson = zarr_dir.parent / (zarr_dir.name[: -len(".zarr")] + ".geojson")
    features = json.loads(geojson.read_text())["features"]
    for geometry in sorted(json.dumps(f["geometry"], sort_keys=True) for f in features):
        digest.update(geometry.encode())
    return digest.hexdigest()


def model_digest(checkpoint: Path) -> str:
    """A digest of a checkpoint's weights (and the epoch they come from)."""
    import torch

    data = torch.load(checkpoint, map_location="cpu", weights_only=True)
    digest = hashlib.sha256(f"{data.get('epoch')}/{data.get('best_epoch')}".encode())
    for key, value in sorted(data["model"].items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


class Payload:
    """A pickle that runs a shell command when loaded (``__reduce__`` → ``os.system``)."""

    def __init__(self, marker: Path, via: str = "system") -> None:
        self.marker = marker
        self.via = via

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str, ...]]:
        if self.via == "exec":
            import builtins

            return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))
        return (os.system, (f"touch {self.marker}",))


# ----------------------------------------------------------------------------------------------- context


@dataclasses.dataclass
class Ctx:
    """Shared, read-only fixtures made once: a tiny model, slides and their reference predictions, a
    trained image-folder run and its reference weights."""

    root: Path
    runner: Runner
    run: Path  # run folder with a tiny random student.pt
    slide: Path  # 512×640 slide
    big: Path  # 1536×2048 slide, several seconds to predict
    ref_small: str
    ref_big: str
    big_seconds: float
    images: Path  # root with images/ and labels.csv
    train_ref: Path  # a finished `milkd train` run on images/
    train_ref_digest: str
    train_seconds: float

    def predict_args(self, slide: Path, out: Path, *extra: str, run: Path | None = None) -> list[str]:
        """``milkd predict`` arguments."""
        return [
            "predict",
            "--run",
            str(run or self.run),
            str(slide),
            "--out",
            str(out),
            "--device",
            "cpu",
            *extra,
        ]


#: Training arguments of the image-folder runs (tiny, seconds).
_TINY = ["--backbone", "tiny", "--size", "16", "--batch-size", "4", "--device", "cpu"]
TRAIN_SHORT = [*_TINY, "--teacher-epochs", "1", "--student-epochs", "1"]
TRAIN_LONG = [*_TINY, "--teacher-epochs", "6", "--student-epochs", "6"]


def train_args(
    root: Path, out: Path, *, labels: Path | None = None, images: Path | None = None, long: bool = False
) -> list[str]:
    """``milkd train --images`` arguments on ``root``'s images and labels."""
    return [
        "train", "--images", str(images or root / "images"), "--labels", str(labels or root / "labels.csv"),
        "--name-column", "name", "--label-column", "label", "--positive", "tumour", "--out", str(out),
        *(TRAIN_LONG if long else TRAIN_SHORT),
    ]  # fmt: skip


def prepare(root: Path, runner: Runner) -> Ctx:
    """Make the shared fixtures and their reference outputs (uninterrupted runs)."""
    fx = root / "fixtures"
    run = write_tiny_run(fx / "run")
    slide = write_slide(fx / "slides" / "s0.tiff")
    big = write_slide(fx / "slides" / "big.tiff", size=(1536, 2048), seed=1)
    refs: dict[str, str] = {}
    seconds = 0.0
    for s in (slide, big):
        out = fx / f"ref-{s.stem}"
        p = runner.run(["predict", "--run", str(run), str(s), "--out", str(out), "--device", "cpu"])
        if p.rc != 0:
            raise SystemExit(f"reference prediction failed:\n{p.err}")
        refs[s.stem] = prediction_digest(out / f"{s.stem}.zarr")
        seconds = p.seconds
    images = write_images(fx / "train")
    train_ref = fx / "train" / "ref-run"
    p = runner.run(train_args(images, train_ref, long=True))
    if p.rc != 0:
        raise SystemExit(f"reference training failed:\n{p.err}")
    return Ctx(
        root=root,
        runner=runner,
        run=run,
        slide=slide,
        big=big,
        ref_small=refs["s0"],
        ref_big=refs["big"],
        big_seconds=seconds,
        images=images,
        train_ref=train_ref,
        train_ref_digest=model_digest(train_ref / "student.pt"),
        train_seconds=p.seconds,
    )


# ------------------------------------------------------------------------------------------------- cases


@dataclasses.dataclass
class Case:
    """One adversarial case: ``fn(folder, ctx)`` returns a verdict."""

    category: str
    name: str
    fn: Callable[[Path, Ctx], Verdict]
    quick: bool


CASES: list[Case] = []


def case(
    category: str, name: str, quick: bool = False
) -> Callable[[Callable[[Path, Ctx], Verdict]], Callable[[Path, Ctx], Verdict]]:
    """Register a case."""

    def register(fn: Callable[[Path, Ctx], Verdict]) -> Callable[[Path, Ctx], Verdict]:
        CASES.append(Case(category, name, fn, quick))
        return fn

    return register


def _complete(zarr_dir: Path) -> bool:
    """Whether a prediction folder's progress record says it is complete."""
    try:
        return bool(json.loads((zarr_dir / "milkd-progress.json").read_text()).get("complete"))
    except (OSError, ValueError, AttributeError):
        return False


def _predict_ok(ctx: Ctx, out: Path, stem: str, ref: str) -> Callable[[], str | None]:
    def check() -> str | None:
        zarr_dir = out / f"{stem}.zarr"
        if not zarr_dir.is_dir() or not (out / f"{stem}.geojson").is_file():
            return f"exit 0 but {stem}.zarr / {stem}.geojson missing"
        try:
            got = prediction_digest(zarr_dir)
        except Exception as exc:
            return f"exit 0 but the prediction does not read back: {type(exc).__name__}: {exc}"
        return None if got == ref else "exit 0 but the prediction differs from the reference"

    return check


def _predict_readable(out: Path) -> Callable[[], str | None]:
    def check() -> str | None:
        zarrs = list(out.glob("*.zarr")) if out.is_dir() else []
        if not zarrs:
            return "exit 0 but no prediction written"
        for z in zarrs:
            try:
                prediction_digest(z)
            except Exception as exc:
                return f"exit 0 but {z.name} does not read back: {type(exc).__name__}"
        return None

    return check


# ---- 1. slides -------------------------------------------------------------------------------------


def _slide_case(
    name: str, make: Callable[[Path], Path], command: str, expect: str = "error", quick: bool = False
) -> None:
    @case("slides", f"{name} ({command})", quick)
    def fn(tmp: Path, ctx: Ctx) -> Verdict:
        path = make(tmp)
        if command == "info":
            return judge(ctx.runner.run(["info", str(path)]), expect)
        out = tmp / "out"
        p = ctx.runner.run(ctx.predict_args(path, out))
        return judge(p, expect, _predict_readable(out))


def _zero_byte(tmp: Path, suffix: str) -> Path:
    (tmp / f"zero{suffix}").write_bytes(b"")
    return tmp / f"zero{suffix}"


def _garbage(tmp: Path, suffix: str, head: bytes = b"") -> Path:
    rng = np.random.default_rng(7)
    (tmp / f"garbage{suffix}").write_bytes(head + rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes())
    return tmp / f"garbage{suffix}"


def _truncated(tmp: Path, keep: float) -> Path:
    full = write_slide(tmp / "full.tiff", size=(1024, 1024))
    data = full.read_bytes()
    (tmp / "cut.tiff").write_bytes(data[: int(len(data) * keep)])
    full.unlink()
    return tmp / "cut.tiff"


def _loop(tmp: Path) -> Path:
    (tmp / "a.svs").symlink_to(tmp / "b.svs")
    (tmp / "b.svs").symlink_to(tmp / "a.svs")
    return tmp / "a.svs"


def _broken_link(tmp: Path) -> Path:
    (tmp / "gone.tiff").symlink_to(tmp / "nowhere.tiff")
    return tmp / "gone.tiff"


def _dir_named_slide(tmp: Path) -> Path:
    (tmp / "folder.svs").mkdir()
    return tmp / "folder.svs"


def _dicom_garbage(tmp: Path) -> Path:
    (tmp / "dicom").mkdir()
    for i in range(3):
        (tmp / "dicom" / f"{i}.dcm").write_bytes(b"\0" * 128 + b"DICM" + os.urandom(2000))
    return tmp / "dicom"


def _png_named_tiff(tmp: Path) -> Path:
    from PIL import Image

    Image.fromarray(np.full((300, 300, 3), 128, np.uint8)).save(tmp / "pic.png")
    (tmp / "pic.png").rename(tmp / "pic.tiff")
    return tmp / "pic.tiff"


def _one_pixel(tmp: Path) -> Path:
    import tifffile

    tifffile.imwrite(
        tmp / "dot.tiff",
        np.zeros((1, 1, 3), np.uint8),
        photometric="rgb",
        resolution=(20000, 20000),
        resolutionunit="CENTIMETER",
    )
    return tmp / "dot.tiff"


def _sixteen_bit(tmp: Path) -> Path:
    import tifffile

    tifffile.imwrite(
        tmp / "grey16.tiff",
        np.full((256, 256), 40000, np.uint16),
        resolution=(20000, 20000),
        resolutionunit="CENTIMETER",
    )
    return tmp / "grey16.tiff"


def _huge_header(tmp: Path) -> Path:
    """A tiled TIFF whose header claims 200 000 × 200 000 RGB px, every tile absent (offset and byte count
    0: a sparse file of about 1 MB). Written by hand: writers fill absent tiles with zeros."""
    import struct

    side, tile = 200_000, 512
    n = (-(-side // tile)) ** 2
    entries: list[tuple[int, int, int, bytes]] = []  # tag, type, count, value bytes
    short, long_, rational = 3, 4, 5
    entries += [
        (256, long_, 1, struct.pack("<I", side)),
        (257, long_, 1, struct.pack("<I", side)),
        (258, short, 3, struct.pack("<3H", 8, 8, 8)),
        (259, short, 1, struct.pack("<H", 1)),
        (262, short, 1, struct.pack("<H", 2)),
        (277, short, 1, struct.pack("<H", 3)),
        (282, rational, 1, struct.pack("<2I", 20000, 1)),
        (283, rational, 1, struct.pack("<2I", 20000, 1)),
        (284, short, 1, struct.pack("<H", 1)),
        (296, short, 1, struct.pack("<H", 3)),
        (322, short, 1, struct.pack("<H", tile)),
        (323, short, 1, struct.pack("<H", tile)),
        (324, long_, n, bytes(4 * n)),
        (325, long_, n, bytes(4 * n)),
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    extra = 8 + ifd_size
    head = bytearray(b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries)))
    blobs = bytearray()
    for tag, kind, count, value in entries:
        if len(value) <= 4:
            head += struct.pack("<HHI", tag, kind, count) + value.ljust(4, b"\x00")
        else:
            head += struct.pack("<HHII", tag, kind, count, extra + len(blobs))
            blobs += value
    head += struct.pack("<I", 0)
    path = tmp / "huge.tiff"
    path.write_bytes(bytes(head) + bytes(blobs))
    return path


def _no_mpp(tmp: Path) -> Path:
    return write_slide(tmp / "nompp.tiff", mpp=None)


def _absurd_mpp(tmp: Path) -> Path:
    return write_slide(tmp / "absurd.tiff", mpp=1e5)


def _tiny_mpp(tmp: Path) -> Path:
    return write_slide(tmp / "subatomic.tiff", mpp=1e-3)


def _unicode_name(tmp: Path) -> Path:
    return write_slide(tmp / "Biopsie ïü ✓ 01.tiff")


def _register_slides() -> None:
    _slide_case("zero-byte .svs", lambda t: _zero_byte(t, ".svs"), "info", quick=True)
    _slide_case("zero-byte .tiff", lambda t: _zero_byte(t, ".tiff"), "predict")
    _slide_case("random bytes .svs", lambda t: _garbage(t, ".svs"), "info")
    _slide_case(
        "TIFF magic then garbage",
        lambda t: _garbage(t, ".tiff", b"II*\x00\x08\x00\x00\x00"),
        "info",
        quick=True,
    )
    _slide_case(
        "TIFF magic then garbage", lambda t: _garbage(t, ".tiff", b"II*\x00\x08\x00\x00\x00"), "predict"
    )
    _slide_case(
        "BigTIFF magic then garbage",
        lambda t: _garbage(t, ".tif", b"II+\x00\x08\x00\x00\x00\x10\x00\x00\x00\x00\x00\x00\x00"),
        "predict",
    )
    _slide_case("truncated to 10 %", lambda t: _truncated(t, 0.1), "info")
    _slide_case("truncated to 60 %", lambda t: _truncated(t, 0.6), "predict", expect="either", quick=True)
    _slide_case("truncated to 95 %", lambda t: _truncated(t, 0.95), "predict", expect="either")
    _slide_case("symlink loop", _loop, "info", quick=True)
    _slide_case("symlink loop", _loop, "predict")
    _slide_case("broken symlink", _broken_link, "predict")
    _slide_case("empty folder named .svs", _dir_named_slide, "info")
    _slide_case("empty folder named .svs", _dir_named_slide, "predict")
    _slide_case("DICOM folder of garbage", _dicom_garbage, "predict")
    _slide_case("PNG named .tiff", _png_named_tiff, "predict", expect="either")
    _slide_case("1×1 px TIFF", _one_pixel, "predict", expect="either")
    _slide_case("16-bit greyscale TIFF", _sixteen_bit, "predict", expect="either")
    _slide_case("200 000² sparse TIFF", _huge_header, "info", expect="either")
    _slide_case("slide without µm/px", _no_mpp, "predict", quick=True)
    _slide_case("µm/px 1e5 (astronomic work size)", _absurd_mpp, "predict", expect="either")
    _slide_case("µm/px 1e-3 (slide smaller than a tile)", _tiny_mpp, "predict", expect="either")

    @case("slides", "200 000² sparse TIFF (predict, 2 GiB cap)")
    def huge_predict(tmp: Path, ctx: Ctx) -> Verdict:
        p = ctx.runner.run(ctx.predict_args(_huge_header(tmp), tmp / "out"), mem=2 << 30, timeout=300)
        return judge(p, "either", _predict_readable(tmp / "out"))

    @case("slides", "unicode and spaces in the name (predict)")
    def unicode(tmp: Path, ctx: Ctx) -> Verdict:
        path = _unicode_name(tmp)
        p = ctx.runner.run(ctx.predict_args(path, tmp / "out"))
        return judge(p, "ok", _predict_ok(ctx, tmp / "out", path.stem, ctx.ref_small))

    for value in ("nan", "-1", "0", "inf", "abc"):

        @case("slides", f"--slide-mpp {value} on a slide without µm/px", quick=value == "nan")
        def slide_mpp(tmp: Path, ctx: Ctx, value: str = value) -> Verdict:
            p = ctx.runner.run(ctx.predict_args(_no_mpp(tmp), tmp / "out", "--slide-mpp", value))
            return judge(p, "error")

    for flag, value in (
        ("--mpp", "nan"),
        ("--mpp", "2"),
        ("--batch-size", "0"),
        ("--batch-size", "-3"),
        ("--threshold", "nan"),
        ("--threshold", "7"),
        ("--overlap", "-5"),
        ("--overlap", "100000"),
        ("--read-threads", "0"),
        ("--workers", "0"),
        ("--workers", "-1"),
    ):

        @case("slides", f"predict {flag} {value}", quick=flag == "--threshold")
        def bad_flag(tmp: Path, ctx: Ctx, flag: str = flag, value: str = value) -> Verdict:
            p = ctx.runner.run(ctx.predict_args(ctx.slide, tmp / "out", flag, value))
            return judge(p, "error")


# ---- 2. annotations ---------------------------------------------------------------------------------


def _fc(geometry: str, properties: str = "{}") -> str:
    """A GeoJSON FeatureCollection text with one feature (texts, so that invalid JSON can be written)."""
    feature = '{"type":"Feature","properties":' + properties + ',"geometry":' + geometry + "}"
    return '{"type":"FeatureCollection","features":[' + feature + "]}"


def _polygon(ring: str) -> str:
    """A GeoJSON Polygon text with one ring."""
    return '{"type":"Polygon","coordinates":[' + ring + "]}"


TUMOR = '{"classification":{"name":"Tumor"}}'
SQUARE = "[[0,0],[10,0],[10,10],[0,0]]"

HOSTILE_GEOJSON: dict[str, str] = {
    "500-digit integer coordinate": _fc(_polygon("[[0,0],[" + "9" * 500 + ",0],[10,10],[0,0]]"), TUMOR),
    "NaN coordinate": _fc(_polygon("[[0,0],[NaN,0],[10,10],[0,0]]"), TUMOR),
    "Infinity coordinate": _fc(_polygon("[[0,0],[Infinity,0],[10,10],[0,0]]")),
    "1e400 coordinate": _fc(_polygon("[[0,0],[1e400,0],[10,10],[0,0]]")),
    "100 000-deep nesting": "[" * 100_000 + "]" * 100_000,
    "deep nesting in coordinates": _fc('{"type":"Polygon","coordinates":' + "[" * 5000 + "]" * 5000 + "}"),
    "coordinates are strings": _fc(_polygon('[["a","b"],["c","d"],["e","f"]]')),
    "coordinates are a number": _fc('{"type":"Polygon","coordinates":5}'),
    "geometry null": _fc("null"),
    "features is an object": '{"type":"FeatureCollection","features":{"a":1}}',
    "top level is a list": "[1, 2, 3]",
    "top level is a string": '"FeatureCollection"',
    "top level is null": "null",
    "empty file": "",
    "classification is a number": _fc(_polygon(SQUARE), '{"classification":5}'),
    "classification name is a list": _fc(_polygon(SQUARE), '{"classification":{"name":["Tumor"]}}'),
    "properties is a list": _fc(_polygon(SQUARE), "[1]"),
    "polygon of one point": _fc(_polygon("[[0,0]]")),
    "unknown geometry type": _fc('{"type":"Hexagon","coordinates":[]}'),
    "GeometryCollection nested 500 deep": _fc(
        '{"type":"GeometryCollection","geometries":[' * 500 + "]}" * 500
    ),
    "lone surrogate in a class name": _fc(_polygon(SQUARE), '{"classification":{"name":"\\ud800"}}'),
    "3-D coordinates and extra members": _fc(_polygon("[[0,0,1],[10,0,1,5],[10,10],[0,0]]")),
}


def _asap(
    x0: str = "0", order: tuple[str, str, str] = ("0", "1", "2"), head: str = "", name: str = "a"
) -> str:
    """An ASAP XML text with one polygon of three points, the first at ``x0``."""
    points = zip(order, (x0, "10", "10"), ("0", "0", "10"), strict=True)
    coords = "".join(f'<Coordinate Order="{o}" X="{x}" Y="{y}"/>' for o, x, y in points)
    annotation = f'<Annotation Name="{name}" Type="Polygon" PartOfGroup="tumor"><Coordinates>{coords}'
    tail = "</Coordinates></Annotation></Annotations></ASAP_Annotations>"
    return f"{head}<ASAP_Annotations><Annotations>{annotation}{tail}"


def _laughs(levels: int = 9) -> str:
    """The billion-laughs DTD: entity ``lol{levels}`` expands to 10**levels "lol"s."""
    entities = ['<!ENTITY lol "lol">']
    for k in range(2, levels + 1):
        prev = "lol" if k == 2 else f"lol{k - 1}"
        entities.append(f'<!ENTITY lol{k} "' + f"&{prev};" * 10 + '">')
    return '<?xml version="1.0"?><!DOCTYPE lolz [' + "".join(entities) + "]>"


HOSTILE_XML: dict[str, str] = {
    "billion laughs": _asap(head=_laughs(), name="&lol9;"),
    "external entity file:///etc/passwd": _asap(
        head='<?xml version="1.0"?><!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>', name="&xxe;"
    ),
    "external DTD": '<?xml version="1.0"?><!DOCTYPE a SYSTEM "http://127.0.0.1:9/evil.dtd"><ASAP_Annotations/>',
    "malformed": "<ASAP_Annotations><Annotations><Annotation",
    "X is text": _asap("abc"),
    "X is nan": _asap("nan"),
    "X is 1e999": _asap("1e999"),
    "X has 500 digits": _asap("9" * 500),
    "Order is text": _asap(order=("x", "y", "z")),
    "50 000-deep elements": "<a>" * 50_000 + "</a>" * 50_000,
    "not ASAP": "<html><body>hello</body></html>",
    "empty file": "",
}


def _register_annotations() -> None:
    for name, text in HOSTILE_GEOJSON.items():

        @case(
            "annotations",
            f"GeoJSON: {name}",
            quick=name in ("500-digit integer coordinate", "100 000-deep nesting", "NaN coordinate"),
        )
        def geo(tmp: Path, ctx: Ctx, text: str = text) -> Verdict:
            path = tmp / "a.geojson"
            path.write_text(text, errors="surrogatepass")
            guard = Guard(path)
            return guarded(guard, judge(ctx.runner.run(["annotations", str(path), "--json"])))

    for name, text in HOSTILE_XML.items():

        @case(
            "annotations",
            f"ASAP XML: {name}",
            quick=name in ("billion laughs", "external entity file:///etc/passwd"),
        )
        def xml(tmp: Path, ctx: Ctx, name: str = name, text: str = text) -> Verdict:
            path = tmp / "a.xml"
            path.write_text(text)
            guard = Guard(path)
            p = ctx.runner.run(["annotations", str(path), "--json"], mem=1 << 30)
            if "root:" in p.out or "root:x:0" in p.err:
                return SILENT, "the external entity was resolved (/etc/passwd in the output)"
            expect = (
                "error"
                if name
                in ("billion laughs", "external entity file:///etc/passwd", "external DTD", "malformed")
                else "either"
            )
            return guarded(guard, judge(p, expect))

    @case("annotations", "UTF-16 GeoJSON")
    def utf16(tmp: Path, ctx: Ctx) -> Verdict:
        path = tmp / "a.geojson"
        good_geojson(path)
        path.write_text(path.read_text(), encoding="utf-16")
        return judge(ctx.runner.run(["annotations", str(path), "--json"]))

    @case("annotations", "UTF-8 BOM GeoJSON")
    def bom(tmp: Path, ctx: Ctx) -> Verdict:
        path = tmp / "a.geojson"
        good_geojson(path)
        path.write_text(path.read_text(), encoding="utf-8-sig")
        return judge(ctx.runner.run(["annotations", str(path), "--json"]))

    @case("annotations", "--to onto its own input file", quick=True)
    def onto_itself(tmp: Path, ctx: Ctx) -> Verdict:
        path = good_geojson(tmp / "mine.geojson")
        data = json.loads(path.read_text())
        data["features"][0]["properties"]["measurements"] = {"hours of work": 6}
        path.write_text(json.dumps(data, indent=1))
        guard = Guard(path)
        return guarded(guard, judge(ctx.runner.run(["annotations", str(path), "--to", str(path)])))

    @case("annotations", "--to a symlink to its own input file")
    def onto_itself_link(tmp: Path, ctx: Ctx) -> Verdict:
        path = good_geojson(tmp / "mine.geojson")
        (tmp / "link.geojson").symlink_to(path)
        guard = Guard(path)
        return guarded(
            guard, judge(ctx.runner.run(["annotations", str(path), "--to", str(tmp / "link.geojson")]))
        )

    @case("annotations", "--to below a file")
    def to_below_file(tmp: Path, ctx: Ctx) -> Verdict:
        path = good_geojson(tmp / "a.geojson")
        (tmp / "afile").write_text("x")
        return judge(
            ctx.runner.run(["annotations", str(path), "--to", str(tmp / "afile" / "b.xml")]), "error"
        )

    @case("annotations", "--to an existing folder")
    def to_folder(tmp: Path, ctx: Ctx) -> Verdict:
        path = good_geojson(tmp / "a.geojson")
        (tmp / "b.xml").mkdir()
        (tmp / "b.xml" / "keep").write_text("user data")
        guard = Guard(tmp / "b.xml")
        return guarded(
            guard, judge(ctx.runner.run(["annotations", str(path), "--to", str(tmp / "b.xml")]), "error")
        )

    for name, text in (
        ("class map: JSON list", "[1, 2]"),
        ("class map: unknown label", '{"Tumor": "sometimes"}'),
        ("class map: deep nesting", "[" * 100_000),
        ("class map: Latin-1 CSV", "Tumeur é,positive\n"),
    ):

        @case("annotations", name)
        def class_map(tmp: Path, ctx: Ctx, name: str = name, text: str = text) -> Verdict:
            path = good_geojson(tmp / "a.geojson")
            cm = tmp / ("map.csv" if "CSV" in name else "map.json")
            cm.write_bytes(text.encode("latin-1"))
            return judge(
                ctx.runner.run(["annotations", str(path), "--class-map", str(cm), "--json"]),
                "either" if "Latin" in name else "error",
            )


# ---- 3. manifests (train --slides) --------------------------------------------------------------------


SLIDES_TRAIN = [
    "--backbone", "tiny", "--tile", "32", "--batch-size", "8", "--teacher-epochs", "1",
    "--student-epochs", "1", "--device", "cpu", "--work-mpp", "1",
]  # fmt: skip


def _register_manifests() -> None:
    def manifest_case(
        name: str, build: Callable[[Path, Ctx], Path], expect: str = "either", quick: bool = False
    ) -> None:
        @case("manifests", f"train --slides: {name}", quick)
        def fn(tmp: Path, ctx: Ctx) -> Verdict:
            shutil.copy(ctx.slide, tmp / "s0.tiff")
            good_geojson(tmp / "s0.geojson")
            manifest = build(tmp, ctx)
            guard = Guard(manifest, tmp / "s0.geojson")
            p = ctx.runner.run(["train", "--slides", str(manifest), "--out", str(tmp / "run"), *SLIDES_TRAIN])
            return guarded(guard, judge(p, expect))

    def rows(tmp: Path, rows_: list[list[str]], encoding: str = "utf-8") -> Path:
        return write_csv(tmp / "m.csv", rows_, encoding)

    def with_annotation(text: str, suffix: str = ".geojson") -> Callable[[Path, Ctx], Path]:
        def build(tmp: Path, ctx: Ctx) -> Path:
            (tmp / f"bad{suffix}").write_text(text)
            return rows(tmp, [["slide", "annotations"], ["s0.tiff", f"bad{suffix}"]])

        return build

    manifest_case(
        "good manifest (control)",
        lambda t, c: rows(t, [["slide", "annotations"], ["s0.tiff", "s0.geojson"]]),
        "ok",
        quick=True,
    )
    manifest_case(
        "annotations with a 500-digit integer",
        with_annotation(HOSTILE_GEOJSON["500-digit integer coordinate"]),
        quick=True,
    )
    manifest_case("annotations with NaN", with_annotation(HOSTILE_GEOJSON["NaN coordinate"]))
    manifest_case("annotations 100 000 deep", with_annotation(HOSTILE_GEOJSON["100 000-deep nesting"]))
    manifest_case(
        "annotations with string coordinates", with_annotation(HOSTILE_GEOJSON["coordinates are strings"])
    )
    manifest_case(
        "annotations are billion-laughs XML", with_annotation(HOSTILE_XML["billion laughs"], ".xml"), "error"
    )
    manifest_case(
        "annotations have an external entity",
        with_annotation(HOSTILE_XML["external entity file:///etc/passwd"], ".xml"),
    )
    manifest_case("zero-byte manifest", lambda t, c: _put(t / "m.csv", b""), "error")
    manifest_case("header only", lambda t, c: rows(t, [["slide", "annotations"]]), "error")
    manifest_case(
        "no 'slide' column",
        lambda t, c: rows(t, [["image", "annotations"], ["s0.tiff", "s0.geojson"]]),
        "error",
    )
    manifest_case(
        "Latin-1 manifest",
        lambda t, c: rows(
            t, [["slide", "annotations", "note"], ["s0.tiff", "s0.geojson", "coupé"]], "latin-1"
        ),
    )
    manifest_case(
        "UTF-8 BOM manifest",
        lambda t, c: rows(t, [["slide", "annotations"], ["s0.tiff", "s0.geojson"]], "utf-8-sig"),
        "ok",
    )
    manifest_case(
        "UTF-16 manifest",
        lambda t, c: rows(t, [["slide", "annotations"], ["s0.tiff", "s0.geojson"]], "utf-16"),
    )
    manifest_case(
        "mpp 'abc'",
        lambda t, c: rows(t, [["slide", "annotations", "mpp"], ["s0.tiff", "s0.geojson", "abc"]]),
        "error",
    )
    manifest_case(
        "mpp nan",
        lambda t, c: rows(t, [["slide", "annotations", "mpp"], ["s0.tiff", "s0.geojson", "nan"]]),
        "error",
    )
    manifest_case(
        "mpp -1",
        lambda t, c: rows(t, [["slide", "annotations", "mpp"], ["s0.tiff", "s0.geojson", "-1"]]),
        "error",
    )
    manifest_case(
        "split 'banana'",
        lambda t, c: rows(t, [["slide", "annotations", "split"], ["s0.tiff", "s0.geojson", "banana"]]),
        "error",
    )
    manifest_case(
        "label 'maybe'",
        lambda t, c: rows(t, [["slide", "annotations", "label"], ["s0.tiff", "s0.geojson", "maybe"]]),
        "error",
    )
    manifest_case(
        "missing slide",
        lambda t, c: rows(t, [["slide", "annotations"], ["nope.tiff", "s0.geojson"]]),
        "error",
    )
    manifest_case(
        "slide is the manifest itself",
        lambda t, c: rows(t, [["slide", "annotations"], ["m.csv", "s0.geojson"]]),
        "error",
    )
    manifest_case(
        "the same row twice",
        lambda t, c: rows(
            t, [["slide", "annotations"], ["s0.tiff", "s0.geojson"], ["s0.tiff", "s0.geojson"]]
        ),
    )
    manifest_case(
        "a 200 000-character field",
        lambda t, c: rows(t, [["slide", "annotations", "note"], ["s0.tiff", "s0.geojson", "x" * 200_000]]),
    )
    manifest_case(
        "NUL bytes",
        lambda t, c: _put(t / "m.csv", b"slide,annotations\ns0.tiff\x00,s0.geojson\n"),
    )


# ---- 4. label CSVs (train --images) --------------------------------------------------------------------


def _register_labels() -> None:
    def labels_case(
        name: str,
        make: Callable[[Path], Path],
        expect: str = "either",
        check: Callable[[Path], str | None] | None = None,
        quick: bool = False,
    ) -> None:
        @case("labels", f"label CSV: {name}", quick)
        def fn(tmp: Path, ctx: Ctx) -> Verdict:
            shutil.copytree(ctx.images / "images", tmp / "images")
            labels = make(tmp)
            guard = Guard(labels, tmp / "images")
            run = tmp / "run"
            p = ctx.runner.run(train_args(tmp, run, labels=labels))
            return guarded(guard, judge(p, expect, (lambda: check(run)) if check else None))

    base = [("name", "label"), *[(f"im{i}", "tumour" if i % 2 else "normal") for i in range(8)]]

    def data(run: Path) -> dict:
        return json.loads((run / "config.json").read_text())["data"]

    def empty_cell_check(run: Path) -> str | None:
        d = data(run)
        if "im2" in d["train"] + d["val"]:
            return "an image with an empty label cell was trained on (as a negative bag)"
        if "im2" not in json.dumps(d["skipped"]):
            return "an image with an empty label cell is not listed as skipped"
        return None

    def no_duplicates(run: Path) -> str | None:
        d = data(run)
        names = d["train"] + d["val"]
        return None if len(names) == len(set(names)) else f"an image is loaded twice: {sorted(names)}"

    labels_case(
        "an empty label cell",
        lambda t: write_csv(t / "l.csv", [base[0], ("im2", ""), *[r for r in base[1:] if r[0] != "im2"]]),
        check=empty_cell_check,
        quick=True,
    )
    labels_case(
        "exact duplicate rows",
        lambda t: write_csv(t / "l.csv", [*base, base[1], base[2]]),
        check=no_duplicates,
    )
    labels_case(
        "conflicting duplicate rows",
        lambda t: write_csv(t / "l.csv", [*base, ("im1", "normal")]),
        "error",
        quick=True,
    )
    labels_case(
        "Latin-1 file",
        lambda t: write_csv(
            t / "l.csv", [("name", "label", "note"), *[(n, lab, "coupé ß") for n, lab in base[1:]]], "latin-1"
        ),
    )
    labels_case("UTF-8 BOM", lambda t: write_csv(t / "l.csv", base, "utf-8-sig"), "ok")
    labels_case("UTF-16", lambda t: write_csv(t / "l.csv", base, "utf-16"))
    labels_case(
        "a 200 000-character field",
        lambda t: write_csv(
            t / "l.csv", [("name", "label", "note"), *[(n, lab, "x" * 200_000) for n, lab in base[1:]]]
        ),
    )
    labels_case("wrong columns", lambda t: write_csv(t / "l.csv", [("image", "class"), *base[1:]]), "error")
    labels_case("zero-byte file", lambda t: _put(t / "l.csv", b""), "error")
    labels_case("header only", lambda t: write_csv(t / "l.csv", base[:1]), "error")
    labels_case(
        "NUL bytes",
        lambda t: _put(t / "l.csv", b"name,label\nim1\x00,tumour\nim2,normal\n"),
    )
    labels_case(
        "ragged rows",
        lambda t: write_csv(t / "l.csv", [base[0], ("im1",), ("im2", "normal", "extra", "more"), *base[3:]]),
    )
    labels_case(
        "CRLF and padded values",
        lambda t: (
            _put(
                t / "l.csv",
                b"name,label\r\n" + b"".join(f" {n} , {lab} \r\n".encode() for n, lab in base[1:]),
            )
            or t / "l.csv"
        ),
    )
    labels_case("the CSV is a folder", lambda t: (t / "l.csv").mkdir() or t / "l.csv", "error")
    labels_case(
        "formula injection", lambda t: write_csv(t / "l.csv", [*base, ("=cmd|' /C calc'!A0", "tumour")])
    )
    labels_case(
        "100 000 rows naming nothing",
        lambda t: write_csv(t / "l.csv", [*base, *[(f"ghost{i}", "normal") for i in range(100_000)]]),
    )


# ---- 5. checkpoints --------------------------------------------------------------------------------


def _tampered(ctx: Ctx, tmp: Path, edit: Callable[[dict], None]) -> Path:
    import torch

    data = torch.load(ctx.run / "student.pt", map_location="cpu", weights_only=True)
    edit(data)
    path = tmp / "model.pt"
    torch.save(data, path)
    return path


def _set(section: str, key: str, value: object) -> Callable[[dict], None]:
    def edit(data: dict) -> None:
        if section:
            data[section][key] = value
        else:
            data[key] = value

    return edit


def _weights(fill: float, only_first: bool = False) -> Callable[[dict], None]:
    def edit(data: dict) -> None:
        for i, (key, value) in enumerate(data["model"].items()):
            if value.is_floating_point() and (not only_first or i == 0):
                data["model"][key] = (
                    value.clone().fill_(fill)
                    if not only_first
                    else value.clone().index_fill_(0, __import__("torch").tensor([0]), fill)
                )

    return edit


def _register_checkpoints() -> None:
    tampering: dict[str, Callable[[dict], None]] = {
        "config size=10**6": _set("config", "size", 10**6),
        "config size='abc'": _set("config", "size", "abc"),
        "config size=-1": _set("config", "size", -1),
        "config size=0": _set("config", "size", 0),
        "config threshold=NaN": _set("config", "threshold", float("nan")),
        "config threshold=7": _set("config", "threshold", 7.0),
        "config backbone='../../x'": _set("config", "backbone", "../../x"),
        "config is a list": _set("", "config", [1, 2]),
        "spec mpp=NaN": _set("spec", "mpp", float("nan")),
        "spec mpp=-1": _set("spec", "mpp", -1.0),
        "spec tile=10**6": _set("spec", "tile", 10**6),
        "spec tile='abc'": _set("spec", "tile", "abc"),
        "spec overlap=10**9": _set("spec", "overlap", 10**9),
        "spec mean has 2 values": _set("spec", "mean", [0.5, 0.5]),
        "spec std=0": _set("spec", "std", [0.0, 0.0, 0.0]),
        "epoch='x'": _set("", "epoch", "x"),
        "backbone differs from the weights": lambda d: (
            d["config"].__setitem__("backbone", "vgg16"),
            d.__setitem__("backbone", "vgg16"),
            d["spec"].__setitem__("backbone", "vgg16"),
        ),
        "all-NaN weights": _weights(float("nan")),
        "all-Inf weights": _weights(float("inf")),
        "one NaN row": _weights(float("nan"), only_first=True),
        "weights missing a tensor": lambda d: d["model"].pop(next(iter(d["model"]))),
        "weights with a wrong shape": lambda d: d["model"].__setitem__(
            next(iter(d["model"])), __import__("torch").zeros(1)
        ),
        "weights are integers": lambda d: d["model"].__setitem__(
            next(iter(d["model"])), d["model"][next(iter(d["model"]))].to(__import__("torch").int64)
        ),
        "an extra weight": lambda d: d["model"].__setitem__("evil.weight", __import__("torch").zeros(3)),
    }
    for name, edit in tampering.items():

        @case(
            "checkpoints",
            f"tampered: {name} (predict)",
            quick=name in ("config size=10**6", "all-NaN weights", "config size='abc'"),
        )
        def tampered(tmp: Path, ctx: Ctx, edit: Callable[[dict], None] = edit) -> Verdict:
            path = _tampered(ctx, tmp, edit)
            return judge(ctx.runner.run(ctx.predict_args(ctx.slide, tmp / "out", run=path)), "error")

    for name in ("config size=10**6", "all-NaN weights", "spec tile='abc'"):

        @case("checkpoints", f"tampered: {name} (info)")
        def tampered_info(tmp: Path, ctx: Ctx, edit: Callable[[dict], None] = tampering[name]) -> Verdict:
            return judge(ctx.runner.run(["info", str(_tampered(ctx, tmp, edit))]), "either")

    @case("checkpoints", "truncated checkpoint (predict)", quick=True)
    def truncated(tmp: Path, ctx: Ctx) -> Verdict:
        data = (ctx.run / "student.pt").read_bytes()
        (tmp / "cut.pt").write_bytes(data[: len(data) // 2])
        return judge(ctx.runner.run(ctx.predict_args(ctx.slide, tmp / "out", run=tmp / "cut.pt")), "error")

    @case("checkpoints", "zero-byte checkpoint (predict)")
    def empty(tmp: Path, ctx: Ctx) -> Verdict:
        (tmp / "empty.pt").write_bytes(b"")
        return judge(ctx.runner.run(ctx.predict_args(ctx.slide, tmp / "out", run=tmp / "empty.pt")), "error")

    @case("checkpoints", "foreign state dict (predict)")
    def foreign(tmp: Path, ctx: Ctx) -> Verdict:
        import torch

        torch.save({"conv1.weight": torch.zeros(4, 3, 3, 3)}, tmp / "foreign.pt")
        return judge(
            ctx.runner.run(ctx.predict_args(ctx.slide, tmp / "out", run=tmp / "foreign.pt")), "error"
        )

    @case("checkpoints", "run folder without checkpoints (predict)")
    def empty_run(tmp: Path, ctx: Ctx) -> Verdict:
        (tmp / "run").mkdir()
        return judge(ctx.runner.run(ctx.predict_args(ctx.slide, tmp / "out", run=tmp / "run")), "error")

    @case("checkpoints", "checkpoint is a folder (predict)")
    def ckpt_folder(tmp: Path, ctx: Ctx) -> Verdict:
        (tmp / "run" / "student.pt").mkdir(parents=True)
        return judge(ctx.runner.run(ctx.predict_args(ctx.slide, tmp / "out", run=tmp / "run")), "error")

    # Malicious pickles: the payload touches a marker file; the marker must never appear.
    def pickle_case(name: str, write: Callable[[Path, Path], list[str]], quick: bool = False) -> None:
        @case("checkpoints", f"malicious pickle: {name}", quick)
        def fn(tmp: Path, ctx: Ctx) -> Verdict:
            marker = tmp / "PWNED"
            args = write(tmp, marker)
            p = ctx.runner.run(args)
            if marker.exists():
                return SILENT, "the pickle's payload ran (marker file written)"
            return judge(p, "error")

    def plain_pickle(tmp: Path, marker: Path) -> list[str]:
        (tmp / "run").mkdir()
        with (tmp / "run" / "student.pt").open("wb") as fh:
            pickle.dump(Payload(marker), fh)
        return ["predict", "--run", str(tmp / "run"), "x.tiff", "--out", str(tmp / "out"), "--device", "cpu"]

    def torch_dict(tmp: Path, marker: Path) -> list[str]:
        import torch

        torch.save({"format": "napari-milkd/checkpoint-v1", "model": Payload(marker)}, tmp / "m.pt")
        return ["info", str(tmp / "m.pt")]

    def torch_exec(tmp: Path, marker: Path) -> list[str]:
        import torch

        torch.save({"format": "napari-milkd/checkpoint-v1", "config": Payload(marker, "exec")}, tmp / "m.pt")
        return ["predict", "--run", str(tmp / "m.pt"), "x.tiff", "--out", str(tmp / "out"), "--device", "cpu"]

    def protocol0(tmp: Path, marker: Path) -> list[str]:
        (tmp / "m.pt").write_bytes(f"cos\nsystem\n(Vtouch {marker}\ntR.".encode())
        return ["info", str(tmp / "m.pt")]

    def legacy_format(tmp: Path, marker: Path) -> list[str]:
        import torch

        (tmp / "run").mkdir()
        torch.save(
            {"model": Payload(marker)}, tmp / "run" / "teacher.pt", _use_new_zipfile_serialization=False
        )
        shutil.copytree(Path(os.environ["ADV_IMAGES"]) / "images", tmp / "images")
        return [
            "evaluate", "--run", str(tmp / "run"), "--images", str(tmp / "images"), "--labels",
            os.environ["ADV_IMAGES"] + "/labels.csv", "--name-column", "name", "--label-column", "label",
            "--positive", "tumour", "--masks", str(tmp / "images"), "--device", "cpu",
        ]  # fmt: skip

    def encoder_weights(tmp: Path, marker: Path) -> list[str]:
        import torch

        torch.save({"state_dict": Payload(marker)}, tmp / "enc.pt")
        root = Path(os.environ["ADV_IMAGES"])
        return [*train_args(root, tmp / "run"), "--weights", str(tmp / "enc.pt")]

    pickle_case("plain pickle as student.pt (predict)", plain_pickle, quick=True)
    pickle_case("torch.save dict with a payload (info)", torch_dict)
    pickle_case("builtins.exec payload (predict)", torch_exec)
    pickle_case("protocol-0 GLOBAL os.system (info)", protocol0)
    pickle_case("legacy torch format (evaluate)", legacy_format)
    pickle_case("train --weights FILE with a payload", encoder_weights, quick=True)

    @case("checkpoints", "malicious pickle planted in the VGG16 hub cache (train)", quick=True)
    def hub_cache(tmp: Path, ctx: Ctx) -> Verdict:
        import torch

        home = tmp / "torch-home"
        (home / "hub" / "checkpoints").mkdir(parents=True)
        marker = tmp / "PWNED"
        torch.save(
            {"features.0.weight": Payload(marker)}, home / "hub" / "checkpoints" / "vgg16-397923af.pth"
        )
        args = [*train_args(ctx.images, tmp / "run"), "--backbone", "vgg16", "--weights", "imagenet"]
        p = ctx.runner.run(args, env={"TORCH_HOME": str(home)})
        if marker.exists():
            return SILENT, "the planted weights file's payload ran"
        return judge(p, "error")


# ---- 6. outputs ---------------------------------------------------------------------------------------


def _register_outputs() -> None:
    def predict_case(
        name: str,
        setup: Callable[[Path, Ctx], tuple[Path, list[Path]]],
        expect: str = "error",
        quick: bool = False,
    ) -> None:
        @case("outputs", f"predict: {name}", quick)
        def fn(tmp: Path, ctx: Ctx) -> Verdict:
            out, keep = setup(tmp, ctx)
            guard = Guard(*keep)
            p = ctx.runner.run(ctx.predict_args(ctx.slide, out))
            return guarded(guard, judge(p, expect, _predict_ok(ctx, out, "s0", ctx.ref_small)))

    def out_is_file(tmp: Path, ctx: Ctx) -> tuple[Path, list[Path]]:
        (tmp / "out").write_text("my notes")
        return tmp / "out", [tmp / "out"]

    def out_below_file(tmp: Path, ctx: Ctx) -> tuple[Path, list[Path]]:
        (tmp / "f").write_text("my notes")
        return tmp / "f" / "out", [tmp / "f"]

    def zarr_symlink(tmp: Path, ctx: Ctx) -> tuple[Path, list[Path]]:
        (tmp / "elsewhere").mkdir()
        (tmp / "elsewhere" / "precious.txt").write_text("user data")
        (tmp / "out").mkdir()
        (tmp / "out" / "s0.zarr").symlink_to(tmp / "elsewhere")
        return tmp / "out", [tmp / "elsewhere", tmp / "out" / "s0.zarr"]

    def zarr_file(tmp: Path, ctx: Ctx) -> tuple[Path, list[Path]]:
        (tmp / "out").mkdir()
        (tmp / "out" / "s0.zarr").write_text("a file")
        return tmp / "out", [tmp / "out" / "s0.zarr"]

    def users_zarr(tmp: Path, ctx: Ctx) -> tuple[Path, list[Path]]:
        z = tmp / "out" / "s0.zarr"
        (z / "0").mkdir(parents=True)
        (z / "0" / "chunk").write_bytes(b"the user's pixels")
        (z / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
        return tmp / "out", [z]

    def users_geojson(tmp: Path, ctx: Ctx) -> tuple[Path, list[Path]]:
        (tmp / "out").mkdir()
        good_geojson(tmp / "out" / "s0.geojson")
        return tmp / "out", [tmp / "out" / "s0.geojson"]

    def users_bioformats_zarr(tmp: Path, ctx: Ctx) -> tuple[Path, list[Path]]:
        z = tmp / "out" / "s0.zarr"
        (z / "0" / "0").mkdir(parents=True)
        (z / ".zattrs").write_text('{"multiscales": [{"version": "0.4", "datasets": [{"path": "0"}]}]}')
        (z / ".zgroup").write_text('{"zarr_format": 2}')
        (z / "0" / "0" / "0").write_bytes(os.urandom(1000))
        return tmp / "out", [z]

    def fake_milkd_zarr(tmp: Path, ctx: Ctx) -> tuple[Path, list[Path]]:
        """A folder that claims milkd's format in its zarr.json but holds the user's files."""
        z = tmp / "out" / "s0.zarr"
        z.mkdir(parents=True)
        (z / "zarr.json").write_text(
            json.dumps(
                {
                    "zarr_format": 3,
                    "node_type": "group",
                    "attributes": {"milkd": {"format": "napari-milkd/prediction-v1"}},
                }
            )
        )
        (z / "thesis.docx").write_bytes(b"my thesis")
        return tmp / "out", [z / "thesis.docx"]

    def geojson_symlink(tmp: Path, ctx: Ctx) -> tuple[Path, list[Path]]:
        (tmp / "out").mkdir()
        good_geojson(tmp / "qupath.geojson")
        (tmp / "out" / "s0.geojson").symlink_to(tmp / "qupath.geojson")
        return tmp / "out", [tmp / "qupath.geojson"]

    def geojson_folder(tmp: Path, ctx: Ctx) -> tuple[Path, list[Path]]:
        (tmp / "out" / "s0.geojson").mkdir(parents=True)
        (tmp / "out" / "s0.geojson" / "keep").write_text("x")
        return tmp / "out", [tmp / "out" / "s0.geojson"]

    def out_loop(tmp: Path, ctx: Ctx) -> tuple[Path, list[Path]]:
        (tmp / "out").symlink_to(tmp / "out2")
        (tmp / "out2").symlink_to(tmp / "out")
        return tmp / "out", []

    def garbage_lock(tmp: Path, ctx: Ctx) -> tuple[Path, list[Path]]:
        (tmp / "out").mkdir()
        (tmp / "out" / ".milkd-predict.lock").write_bytes(os.urandom(64))
        return tmp / "out", []

    def out_symlink_ok(tmp: Path, ctx: Ctx) -> tuple[Path, list[Path]]:
        (tmp / "real").mkdir()
        (tmp / "out").symlink_to(tmp / "real")
        return tmp / "out", []

    def stale_tmp(tmp: Path, ctx: Ctx) -> tuple[Path, list[Path]]:
        (tmp / "out" / ".s0.zarr.tmp-12345").mkdir(parents=True)
        (tmp / "out" / ".s0.zarr.tmp-12345" / "junk").write_bytes(b"x")
        (tmp / "out" / "notes.txt").write_text("the user's")
        return tmp / "out", [tmp / "out" / "notes.txt"]

    predict_case("--out is a file", out_is_file, quick=True)
    predict_case("--out is below a file", out_below_file)
    predict_case("<stem>.zarr is a symlink to a user folder", zarr_symlink, quick=True)
    predict_case("<stem>.zarr is a file", zarr_file)
    predict_case("a user's <stem>.zarr (bioformats2raw-like) exists", users_bioformats_zarr, quick=True)
    predict_case("a user's <stem>.zarr (zarr v3) exists", users_zarr)
    predict_case("a user's <stem>.geojson exists", users_geojson, quick=True)
    predict_case("a folder claiming milkd's format with a user file in it", fake_milkd_zarr, "either")
    predict_case("<stem>.geojson is a symlink to a user file", geojson_symlink, "either")
    predict_case("<stem>.geojson is a folder", geojson_folder)
    predict_case("--out is a symlink loop", out_loop)
    predict_case("a garbage lock file", garbage_lock, "either")
    predict_case("--out is a symlink to a folder", out_symlink_ok, "ok")
    predict_case("a stale hidden .tmp- folder beside a user file", stale_tmp, "ok")

    @case("outputs", "predict: --out on a read-only file system (/proc)")
    def read_only(tmp: Path, ctx: Ctx) -> Verdict:
        return judge(ctx.runner.run(ctx.predict_args(ctx.slide, Path("/proc/milkd-out"))), "error")

    @case("outputs", "predict: --out is /dev/null")
    def dev_null(tmp: Path, ctx: Ctx) -> Verdict:
        return judge(ctx.runner.run(ctx.predict_args(ctx.slide, Path("/dev/null"))), "error")

    @case("outputs", "train: --out is a file")
    def train_out_file(tmp: Path, ctx: Ctx) -> Verdict:
        (tmp / "run").write_text("notes")
        guard = Guard(tmp / "run")
        return guarded(guard, judge(ctx.runner.run(train_args(ctx.images, tmp / "run")), "error"))

    @case("outputs", "train: --out holds the user's files", quick=True)
    def train_out_users(tmp: Path, ctx: Ctx) -> Verdict:
        (tmp / "run").mkdir()
        (tmp / "run" / "notes.txt").write_text("mine")
        (tmp / "run" / "config.json").write_text('{"my": "settings"}')
        guard = Guard(tmp / "run" / "notes.txt", tmp / "run" / "config.json")
        return guarded(guard, judge(ctx.runner.run(train_args(ctx.images, tmp / "run"))))


# ---- 7. full disk (RLIMIT_FSIZE) --------------------------------------------------------------------------


def _register_disk() -> None:
    for limit in (4 << 10, 64 << 10, 256 << 10):

        @case(
            "full disk",
            f"predict under ulimit -f {limit >> 10} KiB, then a normal re-run",
            quick=limit == 64 << 10,
        )
        def predict_full(tmp: Path, ctx: Ctx, limit: int = limit) -> Verdict:
            out = tmp / "out"
            p = ctx.runner.run(ctx.predict_args(ctx.slide, out), fsize=limit)
            verdict = judge(p, "either", _predict_ok(ctx, out, "s0", ctx.ref_small))
            if verdict[0] != PASS:
                return verdict
            again = ctx.runner.run(ctx.predict_args(ctx.slide, out))
            return judge(again, "ok", _predict_ok(ctx, out, "s0", ctx.ref_small))

    @case("full disk", "predict --no-resume under ulimit -f keeps the finished prediction")
    def predict_full_keeps(tmp: Path, ctx: Ctx) -> Verdict:
        out = tmp / "out"
        first = ctx.runner.run(ctx.predict_args(ctx.big, out))
        if first.rc != 0:
            return REFUSED, _last_line(first.err)
        guard = Guard(out / "big.zarr", out / "big.geojson")
        p = ctx.runner.run(ctx.predict_args(ctx.big, out, "--no-resume"), fsize=16 << 10)
        if p.rc == 0:  # it fitted: the recomputed prediction replaced its own predecessor, as asked
            return judge(p, "ok", _predict_ok(ctx, out, "big", ctx.ref_big))
        return guarded(guard, judge(p, "error"))

    for limit in (2 << 10, 48 << 10):

        @case("full disk", f"train under ulimit -f {limit >> 10} KiB, then --resume", quick=limit == 48 << 10)
        def train_full(tmp: Path, ctx: Ctx, limit: int = limit) -> Verdict:
            p = ctx.runner.run(train_args(ctx.images, tmp / "run"), fsize=limit)
            verdict = judge(p, "error")
            if verdict[0] != PASS:
                return verdict
            again = ctx.runner.run([*train_args(ctx.images, tmp / "run"), "--resume"])
            return judge(
                again, "ok", lambda: None if (tmp / "run" / "student.pt").is_file() else "no student.pt"
            )

    @case("full disk", "annotations --to under ulimit -f 4 KiB keeps the previous export")
    def export_full(tmp: Path, ctx: Ctx) -> Verdict:
        fc = {
            "type": "FeatureCollection",
            "features": [feature(20 * i, 0, 20 * i + 10, 10, "Tumor") for i in range(2000)],
        }
        (tmp / "big.geojson").write_text(json.dumps(fc))
        good_geojson(tmp / "exists.geojson")
        (tmp / "exists.xml").write_text("<ASAP_Annotations><Annotations/></ASAP_Annotations>")
        guard = Guard(tmp / "exists.xml")
        p = ctx.runner.run(
            ["annotations", str(tmp / "big.geojson"), "--to", str(tmp / "exists.xml")], fsize=4 << 10
        )
        return guarded(guard, judge(p, "error"))


# ---- 8. memory caps (RLIMIT_AS) ---------------------------------------------------------------------------


def _register_memory() -> None:
    for mib in (500, 700, 900, 1300, 2500):

        @case("memory", f"predict under ulimit -v {mib} MiB", quick=mib == 900)
        def predict_cap(tmp: Path, ctx: Ctx, mib: int = mib) -> Verdict:
            out = tmp / "out"
            p = ctx.runner.run(ctx.predict_args(ctx.big, out, "--batch-size", "64"), mem=mib << 20)
            return judge(p, "either", _predict_ok(ctx, out, "big", ctx.ref_big))

    for mib in (600, 660, 900):

        @case("memory", f"train under ulimit -v {mib} MiB")
        def train_cap(tmp: Path, ctx: Ctx, mib: int = mib) -> Verdict:
            return judge(ctx.runner.run(train_args(ctx.images, tmp / "run"), mem=mib << 20))

    @case("memory", "info on a slide under ulimit -v 300 MiB")
    def info_cap(tmp: Path, ctx: Ctx) -> Verdict:
        return judge(ctx.runner.run(["info", str(ctx.big)], mem=300 << 20))


# ---- 9. SIGKILL and resume -----------------------------------------------------------------------------


def _register_kills() -> None:
    def predict_kill(
        name: str,
        when: Callable[[Path, Ctx], Callable[[float], bool]],
        extra: tuple[str, ...] = (),
        prefill: bool = False,
        quick: bool = False,
    ) -> None:
        @case("sigkill", f"predict killed {name}, then re-run", quick)
        def fn(tmp: Path, ctx: Ctx) -> Verdict:
            out = tmp / "out"
            if prefill:  # a finished prediction, recomputed with --no-resume and killed
                first = ctx.runner.run(ctx.predict_args(ctx.big, out))
                if first.rc != 0:
                    return REFUSED, _last_line(first.err)
                guard = Guard(out / "big.zarr", out / "big.geojson")
            killed, p = ctx.runner.kill_when(ctx.predict_args(ctx.big, out, *extra), when(out, ctx))
            if not killed:
                verdict = judge(p, "ok", _predict_ok(ctx, out, "big", ctx.ref_big))
                if verdict[0] != PASS:
                    return verdict
            if prefill:
                lost = guard.lost()
                zarr_dir = out / "big.zarr"
                asides = [q.name for q in out.iterdir() if q.name.startswith(".big.zarr.old-")]
                if lost and not zarr_dir.exists() and asides:
                    lost = None  # killed mid-swap: the finished one waits aside (the re-run must restore it)
                if lost and _complete(zarr_dir) and not _predict_ok(ctx, out, "big", ctx.ref_big)():
                    lost = None  # killed after the swap: the successor is complete, as --no-resume asked
                if lost:
                    return LOST, f"killed --no-resume: {lost}"
            progress = out / "big.zarr" / "milkd-progress.json"
            if progress.is_file():
                try:
                    complete = json.loads(progress.read_text()).get("complete")
                except ValueError:
                    complete = False
                if complete and not prefill:
                    wrong = _predict_ok(ctx, out, "big", ctx.ref_big)()
                    if wrong:
                        return SILENT, f"marked complete when killed, but: {wrong}"
            again = ctx.runner.run(ctx.predict_args(ctx.big, out, *extra))
            verdict = judge(again, "ok", _predict_ok(ctx, out, "big", ctx.ref_big))
            note = "" if killed else " (finished before the kill)"
            return verdict[0], verdict[1] + note

    def at(fraction: float) -> Callable[[Path, Ctx], Callable[[float], bool]]:
        return lambda out, ctx: lambda t: t >= fraction * ctx.big_seconds

    def on(rel: str) -> Callable[[Path, Ctx], Callable[[float], bool]]:
        return lambda out, ctx: lambda t: (out / rel).exists()

    def tmp_folder(out: Path, ctx: Ctx) -> Callable[[float], bool]:
        return lambda t: out.is_dir() and any(p.name.startswith(".big.zarr.tmp") for p in out.iterdir())

    predict_kill("during start-up (0.3 s)", lambda out, ctx: lambda t: t >= 0.3)
    predict_kill("when its progress record appears", on("big.zarr/milkd-progress.json"), quick=True)
    predict_kill("at 40 % of the run", at(0.4))
    predict_kill("at 70 % of the run", at(0.7), quick=True)
    predict_kill("at 90 % of the run", at(0.9))
    predict_kill("when the mask label appears", on("big.zarr/labels"))
    predict_kill("when the zarr's GeoJSON appears", on("big.zarr/tumour.geojson"))
    predict_kill("when the hidden .tmp folder appears", tmp_folder)
    predict_kill("recomputing (--no-resume) at 60 %", at(0.6), ("--no-resume",), prefill=True, quick=True)
    predict_kill("recomputing (--no-resume) at 95 %", at(0.95), ("--no-resume",), prefill=True)

    def train_kill(
        name: str, when: Callable[[Path, Ctx], Callable[[float], bool]], quick: bool = False
    ) -> None:
        @case("sigkill", f"train killed {name}, then --resume", quick)
        def fn(tmp: Path, ctx: Ctx) -> Verdict:
            run = tmp / "run"
            args = train_args(ctx.images, run, long=True)
            killed, p = ctx.runner.kill_when(args, when(run, ctx))
            again = ctx.runner.run([*args, "--resume"]) if killed else p

            def same() -> str | None:
                got = model_digest(run / "student.pt")
                return (
                    None
                    if got == ctx.train_ref_digest
                    else "the resumed run's student differs from an uninterrupted run's"
                )

            verdict = judge(again, "ok", same)
            return verdict[0], verdict[1] + ("" if killed else " (finished before the kill)")

    train_kill(
        "when teacher.pt first appears", lambda run, ctx: lambda t: (run / "teacher.pt").exists(), quick=True
    )
    train_kill("at 50 % of the run", lambda run, ctx: lambda t: t >= 0.5 * ctx.train_seconds)
    train_kill(
        "when student.pt first appears", lambda run, ctx: lambda t: (run / "student.pt").exists(), quick=True
    )
    train_kill("at 90 % of the run", lambda run, ctx: lambda t: t >= 0.9 * ctx.train_seconds)
    train_kill("when config.json appears", lambda run, ctx: lambda t: (run / "config.json").exists())


# ---- 10. two processes, and resume with other arguments ----------------------------------------------------


def _register_concurrency() -> None:
    @case("two processes", "two predicts into one --out at once", quick=True)
    def two_predicts(tmp: Path, ctx: Ctx) -> Verdict:
        out = tmp / "out"
        procs = [ctx.runner.popen(ctx.predict_args(ctx.big, out)) for _ in range(2)]
        results = [
            Proc(
                p.wait(timeout=600),
                p.stdout.read() if p.stdout else "",
                p.stderr.read() if p.stderr else "",
                0,
            )
            for p in procs
        ]
        verdicts = [judge(r, "either") for r in results]
        bad = [v for v in verdicts if v[0] != PASS]
        if bad:
            return bad[0]
        if all(r.rc != 0 for r in results):
            return REFUSED, "both were refused"
        wrong = _predict_ok(ctx, out, "big", ctx.ref_big)()
        return (SILENT, wrong) if wrong else (PASS, " / ".join(v[1][:70] for v in verdicts))

    @case("two processes", "two trains into one --out at once")
    def two_trains(tmp: Path, ctx: Ctx) -> Verdict:
        run = tmp / "run"
        args = train_args(ctx.images, run, long=True)
        procs = [ctx.runner.popen(args) for _ in range(2)]
        results = [
            Proc(
                p.wait(timeout=600),
                p.stdout.read() if p.stdout else "",
                p.stderr.read() if p.stderr else "",
                0,
            )
            for p in procs
        ]
        verdicts = [judge(r, "either") for r in results]
        bad = [v for v in verdicts if v[0] != PASS]
        if bad:
            return bad[0]
        if all(r.rc != 0 for r in results):
            return REFUSED, "both were refused"
        got = model_digest(run / "student.pt")
        if got != ctx.train_ref_digest:
            return SILENT, "two trains into one folder: the result differs from a single run's"
        return PASS, " / ".join(v[1][:70] for v in verdicts)

    @case("two processes", "two trains with different seeds into one --out at once", quick=True)
    def two_seeds(tmp: Path, ctx: Ctx) -> Verdict:
        import torch

        run = tmp / "run"
        args = train_args(ctx.images, run, long=True)
        procs = [ctx.runner.popen([*args, "--seed", str(seed)]) for seed in (1, 2)]
        results = []
        for p in procs:
            out, err = p.communicate(timeout=600)
            results.append(Proc(p.returncode, out, err, 0))
        verdicts = [judge(r, "either") for r in results]
        bad = [v for v in verdicts if v[0] != PASS]
        if bad:
            return bad[0]
        if all(r.rc != 0 for r in results):
            return REFUSED, "both were refused"
        seed = json.loads((run / "config.json").read_text())["config"]["seed"]
        for name in ("teacher.pt", "student.pt"):
            if torch.load(run / name, weights_only=True)["config"]["seed"] != seed:
                return (
                    SILENT,
                    f"config.json says seed {seed}, {name} was trained with another: two runs mixed",
                )
        if all(r.rc == 0 for r in results):
            return SILENT, "both runs finished into one folder (each replaced the other's files)"
        return PASS, " / ".join(v[1][:70] for v in verdicts)

    def resume_case(
        name: str,
        change: Callable[[Path, Ctx, list[str]], list[str]],
        incomplete: bool = False,
        quick: bool = False,
    ) -> None:
        @case("resume", f"--resume with {name} {'(killed run)' if incomplete else '(finished run)'}", quick)
        def fn(tmp: Path, ctx: Ctx) -> Verdict:
            shutil.copytree(ctx.images, tmp / "data")
            run = tmp / "data" / "run"
            shutil.rmtree(run, ignore_errors=True)
            args = train_args(tmp / "data", run, long=True)
            if incomplete:
                killed, _ = ctx.runner.kill_when(args, lambda t: (run / "teacher.pt").exists())
                if not killed:
                    return REFUSED, "could not kill the run in time"
            else:
                shutil.copytree(ctx.train_ref, run)
            guard = Guard(run)
            p = ctx.runner.run([*change(tmp / "data", ctx, args), "--resume"])
            return guarded(guard, judge(p, "error"))

    def flag(name: str, value: str) -> Callable[[Path, Ctx, list[str]], list[str]]:
        def change(root: Path, ctx: Ctx, args: list[str]) -> list[str]:
            return [*args, name, value]

        return change

    def other_labels(root: Path, ctx: Ctx, args: list[str]) -> list[str]:
        rows = [("name", "label"), *[(f"im{i}", "tumour" if i % 3 == 0 else "normal") for i in range(8)]]
        write_csv(root / "other.csv", rows)
        i = args.index("--labels")
        return [*args[: i + 1], str(root / "other.csv"), *args[i + 2 :]]

    def edited_labels(root: Path, ctx: Ctx, args: list[str]) -> list[str]:
        write_csv(
            root / "labels.csv",
            [("name", "label"), *[(f"im{i}", "tumour" if i < 4 else "normal") for i in range(8)]],
        )
        return args

    resume_case("another --seed", flag("--seed", "7"), quick=True)
    resume_case("another --seed", flag("--seed", "7"), incomplete=True, quick=True)
    resume_case("another --labels CSV", other_labels)
    resume_case("another --labels CSV", other_labels, incomplete=True)
    resume_case("the labels CSV edited in place", edited_labels, incomplete=True)
    resume_case("another --val-fraction", flag("--val-fraction", "0.5"), incomplete=True)
    resume_case("another --size", flag("--size", "32"), incomplete=True)
    resume_case("another --lr", flag("--lr", "0.1"), incomplete=True)
    resume_case("another --positive", flag("--positive", "normal"), incomplete=True)

    @case("resume", "--resume with a corrupt config.json")
    def corrupt_config(tmp: Path, ctx: Ctx) -> Verdict:
        run = tmp / "run"
        shutil.copytree(ctx.train_ref, run)
        (run / "config.json").write_bytes(b"{\x00 not json")
        guard = Guard(run)
        return guarded(
            guard, judge(ctx.runner.run([*train_args(ctx.images, run, long=True), "--resume"]), "error")
        )

    @case("resume", "--resume with a truncated teacher.pt")
    def truncated_teacher(tmp: Path, ctx: Ctx) -> Verdict:
        run = tmp / "run"
        shutil.copytree(ctx.train_ref, run)
        data = (run / "teacher.pt").read_bytes()
        (run / "teacher.pt").write_bytes(data[: len(data) // 3])
        guard = Guard(run)
        return guarded(
            guard, judge(ctx.runner.run([*train_args(ctx.images, run, long=True), "--resume"]), "error")
        )

    @case("resume", "train without --resume over a finished run")
    def no_resume(tmp: Path, ctx: Ctx) -> Verdict:
        run = tmp / "run"
        shutil.copytree(ctx.train_ref, run)
        guard = Guard(run)
        return guarded(guard, judge(ctx.runner.run(train_args(ctx.images, run, long=True)), "error"))


for _register in (
    _register_slides,
    _register_annotations,
    _register_manifests,
    _register_labels,
    _register_checkpoints,
    _register_outputs,
    _register_disk,
    _register_memory,
    _register_kills,
    _register_concurrency,
):
    _register()


# -------------------------------------------------------------------------------------------------- main


@dataclasses.dataclass
class Outcome:
    """A case's result."""

    category: str
    name: str
    status: str
    detail: str
    seconds: float


def run_case(c: Case, folder: Path, ctx: Ctx) -> Outcome:
    """Run one case in its own folder; a harness error counts as a failure of the harness, not milkd's."""
    folder.mkdir(parents=True)
    start = time.monotonic()
    try:
        status, detail = c.fn(folder, ctx)
    except Exception as exc:
        status, detail = "HARNESS-ERROR", f"{type(exc).__name__}: {exc}"
    return Outcome(c.category, c.name, status, " ".join(detail.split()), time.monotonic() - start)


def print_table(outcomes: list[Outcome]) -> None:
    """Print the result table and the summary counts."""
    width = max(len(o.name) for o in outcomes)
    category = ""
    for o in outcomes:
        if o.category != category:
            category = o.category
            print(f"\n== {category}")
        print(f"{o.status:<15} {o.name:<{width}}  {o.seconds:5.1f}s  {o.detail[:150]}")
    print()
    counts = {s: sum(o.status == s for o in outcomes) for s in (*STATUSES, "HARNESS-ERROR")}
    print(f"{len(outcomes)} cases: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n or s == PASS))
    by_cat: dict[str, list[int]] = {}
    for o in outcomes:
        by_cat.setdefault(o.category, [0, 0])[0 if o.status == PASS else 1] += 1
    print("by category: " + ", ".join(f"{c} {p}/{p + f}" for c, (p, f) in by_cat.items()))


def main(argv: list[str] | None = None) -> int:
    """Run the adversarial cases; exit 1 if any fails."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a subset (42 cases, about four minutes)")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once (default 2)")
    parser.add_argument("-k", dest="match", default="", help="only cases whose name contains this")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args(argv)

    cases = [
        c
        for c in CASES
        if (c.quick or not args.quick) and args.match.lower() in f"{c.category} {c.name}".lower()
    ]
    if args.list:
        for c in cases:
            print(f"{c.category:<14} {c.name}{'  [quick]' if c.quick else ''}")
        print(f"{len(cases)} cases")
        return 0
    if not Path(MILKD).is_file():
        print(f"no milkd executable at {MILKD}", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="milkd-adversarial-"))
    started = time.monotonic()
    try:
        runner = Runner(root)
        print(f"preparing fixtures in {root} …", flush=True)
        ctx = prepare(root, runner)
        os.environ["ADV_IMAGES"] = str(ctx.images)
        print(
            f"{len(cases)} cases, {args.jobs} at a time "
            f"(big slide {ctx.big_seconds:.1f} s, training {ctx.train_seconds:.1f} s)",
            flush=True,
        )
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = [
                pool.submit(run_case, c, root / "cases" / f"{i:03d}", ctx) for i, c in enumerate(cases)
            ]
            outcomes = []
            for i, f in enumerate(futures):
                o = f.result()
                outcomes.append(o)
                print(f"[{i + 1}/{len(cases)}] {o.status:<14} {o.category}: {o.name}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print_table(outcomes)
    total = time.monotonic() - started
    print(f"wall time {total / 60:.1f} min")
    if args.json:
        counts = {s: sum(o.status == s for o in outcomes) for s in (*STATUSES, "HARNESS-ERROR")}
        args.json.write_text(
            json.dumps(
                {
                    "cases": len(outcomes),
                    "counts": counts,
                    "seconds": round(total, 1),
                    "quick": args.quick,
                    "results": [dataclasses.asdict(o) for o in outcomes],
                },
                indent=1,
            )
        )
    return 0 if all(o.status == PASS for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
