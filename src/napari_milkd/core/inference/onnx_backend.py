"""The optional ONNX Runtime backend for CPU inference: the model's forward exported once, run by onnxruntime.

Owns exporting a segmentation model's fused-probability forward (``x (N, 3, H, W) float in [0, 1] →
fused_prob[:, 0] (N, H, W)``, exactly what :meth:`~.stream.InferenceRuntime.prepare` returns for the torch
backend) to an ONNX file, caching that file, and running it in an ``onnxruntime.InferenceSession`` on the
CPU with all graph optimisations. May import the standard library, numpy, torch and onnxruntime (both
lazily, inside functions: importing this module loads neither), :mod:`napari_milkd.core.errors`,
:mod:`napari_milkd.core.atomic` and :mod:`.stream` (for :func:`~.stream.model_fingerprint`, lazily); never
napari or Qt. onnxruntime and onnx (torch's exporter writes the file with it) are an optional extra
(``pip install napari-milkd[onnx]``); without them :func:`prepare_onnx` raises a one-line
:class:`InputError`.

Why. On a 2-core AVX2 CPU ONNX Runtime ran efficientnet_lite0's forward 3.2–3.6× as fast as torch's
eager channels_last forward (4.0–5.7× the NCHW one), with identical masks (``benchmarks/bench_cpu_infer.py``,
three runs on a heavily shared machine, 2026-12-04).

Export. The legacy TorchScript exporter (``dynamo=False``: the dynamo exporter needs ``onnxscript``,
which is not a dependency) traces the forward at the tile size of the first batch it sees, with a dynamic
batch axis. The traced graph is valid for that height and width only (the encoders' "SAME" padding is
computed from the input size at trace time), so a batch of another size gets its own export. The
wrapper is put in eval mode before exporting: the exporter restores the wrapper's training flag after
tracing, which would otherwise switch the model's BatchNorm layers to training mode.

Cache. ``<cache>/<fingerprint>-<H>x<W>-opset<N>.onnx``, where the fingerprint is the SHA-1 of the model's
weights (:func:`~.stream.model_fingerprint`) together with the torch version and the model's class, and
``<cache>`` is ``cache_dir``, else ``$MILKD_CACHE_DIR/onnx``, else the user cache folder's ``onnx``. The
file is written atomically, so concurrent workers at worst export twice, never read half a file. After
each export the cache keeps at most :data:`CACHE_MAX_BYTES` of graphs, the most recent exports first
(:func:`prune_cache`); a graph removed is exported again when it is next needed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_milkd.core.errors import InputError

if TYPE_CHECKING:
    import torch

#: ONNX opset of the exported graphs (supported by onnxruntime ≥ 1.17, the extra's lower bound).
OPSET = 17
#: Name of the cache subfolder (under ``$MILKD_CACHE_DIR`` or the user cache folder).
CACHE_SUBDIR = "onnx"
#: Most bytes of exported graphs the cache keeps (efficientnet_lite0 ≈ 14 MB a graph, vgg16 ≈ 60 MB).
CACHE_MAX_BYTES = 1 << 30


def _importable(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken install, or an import blocked in sys.modules
        return False


def onnxruntime_available() -> bool:
    """Whether the backend's packages (onnxruntime, and onnx for the export) can be imported; imports
    neither."""
    return _importable("onnxruntime") and _importable("onnx")


def require_onnxruntime() -> Any:
    """The ``onnxruntime`` module, once onnxruntime and onnx (torch's exporter needs it) are known to be
    importable; else a one-line :class:`InputError` saying how to install them."""
    missing = [name for name in ("onnxruntime", "onnx") if not _importable(name)]
    if not missing:
        try:
            import onnxruntime
        except ImportError:
            missing = ["onnxruntime"]
        else:
            return onnxruntime
    raise InputError(
        f"the 'onnx' inference backend needs {' and '.join(missing)}: pip install 'napari-milkd[onnx]', "
        "or use the torch backend"
    )


def default_cache_dir() -> Path:
    """Where exported graphs live: ``$MILKD_CACHE_DIR/onnx`` or the user cache folder's ``onnx``."""
    env = os.environ.get("MILKD_CACHE_DIR")
    if env:
        return Path(env).expanduser() / CACHE_SUBDIR
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("napari-milkd", appauthor=False)) / CACHE_SUBDIR


def export_key(model: torch.nn.Module) -> str:
    """The cache key of ``model``'s export: weights fingerprint + model class + torch version (SHA-1)."""
    import torch

    from napari_milkd.core.inference.stream import model_fingerprint

    digest = hashlib.sha1()
    for part in (model_fingerprint(model), type(model).__qualname__, torch.__version__, str(OPSET)):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def cache_path(folder: str | os.PathLike[str], key: str, height: int, width: int) -> Path:
    """The cached graph of the model with :func:`export_key` ``key`` for ``height`` × ``width`` inputs."""
    return Path(folder) / f"{key}-{int(height)}x{int(width)}-opset{OPSET}.onnx"


def prune_cache(
    folder: str | os.PathLike[str], keep: str | os.PathLike[str], max_bytes: int | None = None
) -> list[Path]:
    """Delete the oldest exported graphs (``*.onnx``, by modification time) in ``folder`` until the rest
    take at most ``max_bytes`` (default :data:`CACHE_MAX_BYTES`); ``keep`` (the graph just exported)
    always stays. Returns what was deleted.
    Files another process removes meanwhile are skipped (a session already open keeps its graph in
    memory)."""
    stamped = []
    for path in Path(folder).glob("*.onnx"):
        try:
            info = path.stat()
        except FileNotFoundError:
            continue
        stamped.append((info.st_mtime_ns, info.st_size, path))
    stamped.sort(reverse=True)
    limit = CACHE_MAX_BYTES if max_bytes is None else max_bytes
    total, removed = 0, []
    for _, size, path in stamped:
        total += size
        if total > limit and path != Path(keep):
            path.unlink(missing_ok=True)
            removed.append(path)
            total -= size
    return removed


def fused_prob_module(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` wrapped so its forward returns ``fused_prob[:, 0]`` as float32 (what the runtime uses)."""
    import torch

    class FusedProb(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x).fused_prob[:, 0].float()

    # eval before export: the exporter restores the wrapper's mode afterwards, and a fresh module is in
    # training mode, which would leave the model's BatchNorm layers training after the export.
    return FusedProb(model).eval()


def export_onnx(
    model: torch.nn.Module,
    path: str | os.PathLike[str],
    *,
    height: int,
    width: int,
    opset: int = OPSET,
) -> Path:
    """Export ``model``'s fused-probability forward at ``height`` × ``width`` (dynamic batch) to ``path``.

    The file is written atomically. ``model`` is moved to the CPU and left in eval mode.
    """
    import warnings

    import torch

    from napari_milkd.core.atomic import atomic_path

    if height < 1 or width < 1:
        raise InputError(f"cannot export for an input of {height} × {width} px")
    model.eval().to("cpu")
    wrapper = fused_prob_module(model)
    example = torch.rand(2, 3, int(height), int(width))
    target = Path(path)
    with atomic_path(target) as tmp, warnings.catch_warnings(), torch.no_grad():
        # The tracer warns about every Python int taken from a shape (the "SAME" padding): expected, as
        # each graph is for one tile size.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (example,),
            os.fspath(tmp),
            dynamo=False,
            opset_version=opset,
            input_names=["x"],
            output_names=["prob"],
            dynamic_axes={"x": {0: "batch"}, "prob": {0: "batch"}},
            do_constant_folding=True,
        )
    model.eval()
    return target


def session_options(threads: int | None = None) -> Any:
    """ORT session options: all graph optimisations, ``threads`` intra-op threads (default: torch's
    thread count, which the cohort workers set per worker), sequential execution."""
    ort = require_onnxruntime()
    import torch

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = max(1, int(threads if threads is not None else torch.get_num_threads()))
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return opts


def prepare_onnx(
    model: torch.nn.Module,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    threads: int | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model`` as an ONNX Runtime forward: ``x (N, 3, H, W) float in [0, 1] → fused prob (N, H, W)``
    float32 on the CPU, the contract of :meth:`~.stream.InferenceRuntime.prepare`.

    The graph for each input size is exported on first use (or taken from the cache, see the module
    docstring) and run in one ``InferenceSession`` per size. ``model`` is moved to the CPU in eval mode;
    later changes to its weights are not seen (prepare again). Raises :class:`InputError` when
    onnxruntime is not installed.
    """
    ort = require_onnxruntime()
    import numpy as np
    import torch

    model.eval().to("cpu")
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = export_key(model)
    options = session_options(threads)
    sessions: dict[tuple[int, int], Any] = {}

    def session_for(height: int, width: int) -> Any:
        session = sessions.get((height, width))
        if session is None:
            path = cache_path(folder, key, height, width)
            if not path.is_file():
                export_onnx(model, path, height=height, width=width)
                prune_cache(folder, path)
            try:
                session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
            except Exception:  # a damaged cache file (ORT raises its own types): export it again, once
                export_onnx(model, path, height=height, width=width)
                session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
            sessions[(height, width)] = session
        return session

    def fused(x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise InputError(f"expected a (N, 3, H, W) batch, got {tuple(x.shape)}")
        session = session_for(int(x.shape[2]), int(x.shape[3]))
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        (prob,) = session.run(["prob"], {"x": arr})
        return torch.from_numpy(prob)

    return fused
