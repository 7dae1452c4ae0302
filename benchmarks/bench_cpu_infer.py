"""CPU inference fast paths, as ratios against today's eager fp32 forward on the same tiles in one run.

Reads the tissue tiles of the sample slide (or ``--slide``) at the checkpoint's µm/px, at ``--tile`` px
(the model is fully convolutional), then times each variant of the forward pass on exactly those tiles,
round-robin over ``--repeats`` rounds so that the machine's load falls on every variant alike:

* ``fp32`` (the reference: what ``predict_slide`` does on CPU today: ``no_grad``, NCHW, float32);
* ``inference_mode`` instead of ``no_grad``;
* ``channels_last`` (NHWC memory format, oneDNN's preferred layout for depthwise convolutions);
* ``bf16`` autocast on CPU (fast only where the CPU has AVX-512 BF16 or AMX; said in the output);
* ``threads=1`` (one intra-op thread instead of all cores: what each of several cohort workers gets);
* ``compile`` (``torch.compile``, inductor, with ``--compile``: the first call compiles, not timed);
* with ``--onnx`` (needs ``onnxruntime`` and ``onnx``): ``onnx_fp32``, the library's ONNX Runtime backend
  (``core.inference.onnx_backend.prepare_onnx``: the forward as ``InferenceRuntime`` calls it, exported
  once with the TorchScript exporter, graph optimisation level "all", intra-op threads = cores);
  ``onnx_int8_dynamic`` (``onnxruntime.quantization.quantize_dynamic``, int8 weights: ConvInteger) and
  ``onnx_int8_qdq`` (``quantize_static``, QDQ, per-channel int8 weights, uint8 activations with reduced
  range, convolutions only, the stem and the three 1×1 side convolutions kept in float; calibrated on
  ``--calib-tiles`` of the measured tiles, which can only flatter it);
* with ``--openvino`` (needs ``openvino``): ``openvino_fp32``, the torch module converted by
  ``openvino.convert_model`` and compiled for the CPU (latency hint, threads = cores). (OpenVINO's ONNX
  reader refuses the exported graph: a Gather on the rank-0 output of the fusion's Exp.)

Export, quantisation and conversion are timed apart (``setup_s``), not in tiles/s.

For each: tiles/s, the ratio to ``fp32`` (> 1 is faster) and the Dice of its tumour mask (probability ≥
0.5) against ``fp32``'s, over all tiles' pixels. Prints one JSON object.

    .venv/bin/python benchmarks/bench_cpu_infer.py --checkpoint RUN/student.pt [--tile 256 --repeats 3]
    .venv/bin/python benchmarks/bench_cpu_infer.py --checkpoint RUN/student.pt --onnx --openvino
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _tiles(slide: Path | None, mpp: float, tile: int, limit: int) -> np.ndarray:
    """Up to ``limit`` tissue tiles ``(N, tile, tile, 3)`` uint8 of ``slide`` (default: the sample)."""
    from napari_milkd.core.slides.geometry import plan_work, read_tiles
    from napari_milkd.core.slides.sample import ensure_sample_slide
    from napari_milkd.core.slides.slide import open_slide

    source = open_slide(slide if slide is not None else ensure_sample_slide().path)
    try:
        work = plan_work(source, work_mpp=mpp, tile=tile)
        index = np.arange(min(limit, len(work.grid)))
        return read_tiles(source, work.grid, index)
    finally:
        source.close()


def _batches(x: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(x), batch_size):
        yield x[start : start + batch_size]


def _variants(model: torch.nn.Module, use_compile: bool) -> dict[str, tuple[Callable[..., Any], Any]]:
    """name → (forward of an NCHW float batch giving (N, H, W) probabilities, context factory)."""
    import copy

    def plain(net: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda x: net(x).fused_prob[:, 0].float()

    nhwc = copy.deepcopy(model).to(memory_format=torch.channels_last)
    out: dict[str, tuple[Callable[..., Any], Any]] = {
        "fp32": (plain(model), torch.no_grad),
        "inference_mode": (plain(model), torch.inference_mode),
        "channels_last": (
            lambda x: nhwc(x.contiguous(memory_format=torch.channels_last)).fused_prob[:, 0].float(),
            torch.inference_mode,
        ),
        "bf16": (plain(model), lambda: _stack(torch.inference_mode(), torch.autocast("cpu", torch.bfloat16))),
        "threads=1": (plain(model), lambda: _stack(torch.inference_mode(), _threads(1))),
    }
    if use_compile:
        compiled = torch.compile(model, dynamic=False)
        out["compile"] = (plain(compiled), torch.inference_mode)
    return out


def _onnx_variants(
    model: torch.nn.Module, x: torch.Tensor, args: argparse.Namespace, work: Path
) -> tuple[dict[str, tuple[Callable[..., Any], Any]], dict[str, float]]:
    """ONNX Runtime (and OpenVINO) variants, and the seconds each took to set up (export, quantise)."""
    import copy

    out: dict[str, tuple[Callable[..., Any], Any]] = {}
    setup: dict[str, float] = {}
    cores = os.cpu_count() or 1
    tile = (int(x.shape[2]), int(x.shape[3]))
    net = copy.deepcopy(model).eval()
    if args.onnx:
        import onnxruntime as ort
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_dynamic,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process

        from napari_milkd.core.inference.onnx_backend import export_onnx, prepare_onnx, session_options

        t0 = time.perf_counter()
        forward = prepare_onnx(net, cache_dir=work, threads=cores)
        forward(x[:1])  # exports on first use
        setup["onnx_fp32"] = time.perf_counter() - t0
        out["onnx_fp32"] = (forward, contextlib.nullcontext)

        fp32 = work / "model.onnx"
        export_onnx(net, fp32, height=tile[0], width=tile[1])
        pre = work / "model.pre.onnx"
        t0 = time.perf_counter()
        quant_pre_process(str(fp32), str(pre))
        pre_s = time.perf_counter() - t0

        def session(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
            sess = ort.InferenceSession(str(path), session_options(cores), providers=["CPUExecutionProvider"])
            return lambda b: torch.from_numpy(sess.run(["prob"], {"x": b.numpy()})[0])

        t0 = time.perf_counter()
        quantize_dynamic(str(pre), str(work / "dynamic.onnx"), weight_type=QuantType.QInt8)
        setup["onnx_int8_dynamic"] = pre_s + time.perf_counter() - t0
        out["onnx_int8_dynamic"] = (session(work / "dynamic.onnx"), contextlib.nullcontext)

        step = max(1, len(x) // max(1, args.calib_tiles))
        calib = x[::step][: args.calib_tiles].numpy()

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.batches = iter([{"x": calib[i : i + 4]} for i in range(0, len(calib), 4)])

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self.batches, None)

        import onnx

        convs = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Conv"]
        keep_float = [c for c in convs if "/side" in c or "_conv_stem" in c]
        t0 = time.perf_counter()
        quantize_static(
            str(pre),
            str(work / "qdq.onnx"),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=True,  # AVX2 without VNNI: u8×s8 pairs can saturate at full range
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["Conv"],
            nodes_to_exclude=keep_float,
        )
        setup["onnx_int8_qdq"] = pre_s + time.perf_counter() - t0
        out["onnx_int8_qdq"] = (session(work / "qdq.onnx"), contextlib.nullcontext)
    if args.openvino:
        import openvino as ov

        from napari_milkd.core.inference.onnx_backend import fused_prob_module

        t0 = time.perf_counter()
        converted = ov.convert_model(fused_prob_module(copy.deepcopy(model)), example_input=x[:2])
        compiled = ov.Core().compile_model(
            converted, "CPU", {"INFERENCE_NUM_THREADS": cores, "PERFORMANCE_HINT": "LATENCY"}
        )
        setup["openvino_fp32"] = time.perf_counter() - t0
        out["openvino_fp32"] = (lambda b: torch.from_numpy(compiled(b.numpy())[0]), contextlib.nullcontext)
    return out, {k: round(v, 2) for k, v in setup.items()}


@contextlib.contextmanager
def _stack(*contexts: Any) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for c in contexts:
            stack.enter_context(c)
        yield


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    was = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(was)


def _run(forward: Callable[..., Any], context: Any, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    with context():
        return torch.cat([forward(b) for b in _batches(x, batch_size)])


def _dice(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a >= 0.5, b >= 0.5
    denom = int(a.sum() + b.sum())
    return 1.0 if denom == 0 else 2.0 * int((a & b).sum()) / denom


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, required=True, help="a teacher.pt / student.pt")
    ap.add_argument("--slide", type=Path, default=None, help="default: the built-in sample slide")
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--tiles", type=int, default=48, help="how many tissue tiles")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--onnx", action="store_true", help="ONNX Runtime fp32 and int8 rows (onnxruntime, onnx)")
    ap.add_argument("--openvino", action="store_true", help="an OpenVINO fp32 row (openvino)")
    ap.add_argument("--calib-tiles", type=int, default=8, help="tiles calibrating the static int8 model")
    ap.add_argument("--skip", default="", help="comma-separated variants not to run (never fp32)")
    args = ap.parse_args()

    from napari_milkd.core.engine.checkpoint import load_checkpoint
    from napari_milkd.core.engine.spec import checkpoint_spec
    from napari_milkd.core.engine.train import load_model

    spec = checkpoint_spec(load_checkpoint(args.checkpoint))
    mpp = spec.mpp if spec is not None and spec.mpp else 1.0
    model, _ = load_model(args.checkpoint, device="cpu")
    model.eval()
    tiles = _tiles(args.slide, mpp, args.tile, args.tiles)
    x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float().div_(255).contiguous()
    variants = _variants(model, args.compile)
    setup: dict[str, float] = {}
    scratch = tempfile.TemporaryDirectory(prefix="bench_cpu_infer-")
    if args.onnx or args.openvino:
        extra, setup = _onnx_variants(model, x, args, Path(scratch.name))
        variants.update(extra)
    for name in filter(None, args.skip.split(",")):
        if name != "fp32":
            variants.pop(name, None)
    outputs: dict[str, torch.Tensor] = {}
    for name, (forward, context) in variants.items():  # warm-up (and compilation), not timed
        outputs[name] = _run(forward, context, x[: args.batch_size], args.batch_size)
    seconds = dict.fromkeys(variants, 0.0)
    for _ in range(args.repeats):
        for name, (forward, context) in variants.items():
            t0 = time.perf_counter()
            outputs[name] = _run(forward, context, x, args.batch_size)
            seconds[name] += time.perf_counter() - t0
    n = len(x) * args.repeats
    reference = outputs["fp32"]
    rows = {
        name: {
            "tiles_per_s": round(n / seconds[name], 2),
            "ratio_vs_fp32": round(seconds["fp32"] / seconds[name], 3),
            "dice_vs_fp32": round(_dice(outputs[name], reference), 4),
        }
        for name in variants
    }
    print(
        json.dumps(
            {
                "checkpoint": str(args.checkpoint),
                "backbone": getattr(spec, "backbone", None),
                "mpp": mpp,
                "tile": args.tile,
                "tiles": len(x),
                "batch_size": args.batch_size,
                "repeats": args.repeats,
                "variants": rows,
                "setup_s": setup,
                "versions": _versions(),
                "threads": torch.get_num_threads(),
                "cpus": os.cpu_count(),
                "cpu_bf16": bool(getattr(torch.backends.mkldnn, "is_available", lambda: False)())
                and _has_bf16(),
                "torch": torch.__version__,
                "machine": platform.machine(),
                "date": date.today().isoformat(),
            },
            indent=1,
        )
    )


def _versions() -> dict[str, str]:
    """Versions of the optional runtimes that are installed."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("onnxruntime", "onnx", "openvino"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def _has_bf16() -> bool:
    """Whether the CPU has native bf16 arithmetic (AVX-512 BF16 or AMX), from /proc/cpuinfo on Linux."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


if __name__ == "__main__":
    main()
