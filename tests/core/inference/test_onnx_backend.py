"""The optional ONNX Runtime inference backend: same output as torch, cached export, clear errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from napari_milkd.core.engine.models import build_model
from napari_milkd.core.errors import InputError
from napari_milkd.core.inference.stream import InferenceRuntime


def _need_onnx() -> None:
    """Skip unless the optional backend's packages are installed (``napari-milkd[onnx]``)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")


def _model(backbone: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(backbone, "random")
    # random BatchNorm statistics, so a BatchNorm left in training mode would change the output
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _reference(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).fused_prob[:, 0].float()


@pytest.mark.parametrize(("backbone", "size"), [("tiny", 48), ("efficientnet_lite0", 64)])
def test_onnx_output_equals_torch(tmp_path, backbone, size):
    _need_onnx()
    from napari_milkd.core.inference.onnx_backend import prepare_onnx

    model = _model(backbone)
    x = torch.rand(5, 3, size, size, generator=torch.Generator().manual_seed(1))
    want = _reference(model, x)
    forward = prepare_onnx(model, cache_dir=tmp_path, threads=1)
    assert not any(m.training for m in model.modules())  # the export left the model in eval mode
    for a, b in ((0, 1), (1, 4), (0, 5)):  # dynamic batch axis: any batch size runs on one graph
        got = forward(x[a:b])
        assert got.dtype == torch.float32 and got.shape == (b - a, size, size)
        torch.testing.assert_close(got, want[a:b], atol=1e-4, rtol=1e-4)
    # torch's own output is unchanged by the export (BatchNorm not switched to training statistics)
    torch.testing.assert_close(_reference(model, x), want)
    assert len(list(tmp_path.glob("*.onnx"))) == 1


def test_onnx_channels_last_input_and_other_size(tmp_path):
    _need_onnx()
    from napari_milkd.core.inference.onnx_backend import prepare_onnx

    model = _model("tiny")
    forward = prepare_onnx(model, cache_dir=tmp_path, threads=1)
    for size in (32, 40):  # each input size gets its own export
        x = torch.rand(2, 3, size, size).contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(forward(x), _reference(model, x), atol=1e-4, rtol=1e-4)
    assert len(list(tmp_path.glob("*.onnx"))) == 2


def test_onnx_export_is_cached_by_weights(tmp_path):
    _need_onnx()
    from napari_milkd.core.inference.onnx_backend import prepare_onnx

    model = _model("tiny")
    x = torch.rand(2, 3, 32, 32)
    prepare_onnx(model, cache_dir=tmp_path, threads=1)(x)
    (path,) = tmp_path.glob("*.onnx")
    stamp = path.stat().st_mtime_ns
    prepare_onnx(model, cache_dir=tmp_path, threads=1)(x)  # same weights: the cached file is reused
    assert path.stat().st_mtime_ns == stamp
    assert len(list(tmp_path.glob("*.onnx"))) == 1
    other = _model("tiny", seed=1)
    got = prepare_onnx(other, cache_dir=tmp_path, threads=1)(x)  # other weights: a new export
    assert len(list(tmp_path.glob("*.onnx"))) == 2
    torch.testing.assert_close(got, _reference(other, x), atol=1e-4, rtol=1e-4)


def test_damaged_cache_file_is_exported_again(tmp_path):
    _need_onnx()
    from napari_milkd.core.inference.onnx_backend import cache_path, export_key, prepare_onnx

    model = _model("tiny")
    path = cache_path(tmp_path, export_key(model), 32, 32)
    path.write_bytes(b"not an onnx file")
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(
        prepare_onnx(model, cache_dir=tmp_path)(x), _reference(model, x), atol=1e-4, rtol=1e-4
    )
    assert path.stat().st_size > 1000


def test_runtime_onnx_backend_matches_torch_backend(tmp_path, monkeypatch):
    _need_onnx()
    monkeypatch.setenv("MILKD_CACHE_DIR", str(tmp_path))
    model = _model("tiny")
    host = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    rt_torch = InferenceRuntime("cpu")
    rt_onnx = InferenceRuntime("auto", backend="onnx")
    assert rt_onnx.device.type == "cpu" and not rt_onnx.channels_last
    with torch.no_grad():
        want = rt_torch.prepare(_model("tiny"))(rt_torch.to_input(host))
        got = rt_onnx.prepare(model)(rt_onnx.to_input(host))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert list((tmp_path / "onnx").glob("*.onnx"))


def test_runtime_onnx_backend_refuses_gpu_and_compile():
    _need_onnx()
    with pytest.raises(InputError, match="runs on the CPU"):
        InferenceRuntime("cuda", backend="onnx")
    with pytest.raises(InputError, match=r"torch\.compile"):
        InferenceRuntime("cpu", backend="onnx", compile=True)


def test_unknown_backend_is_an_input_error():
    with pytest.raises(InputError, match="unknown inference backend 'tensorrt'"):
        InferenceRuntime("cpu", backend="tensorrt")


@pytest.mark.parametrize("missing", ["onnxruntime", "onnx"])
def test_missing_package_is_a_clear_input_error(monkeypatch, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # import <missing> → ImportError
    from napari_milkd.core.inference.onnx_backend import onnxruntime_available, prepare_onnx

    with pytest.raises(InputError, match=r"pip install 'napari-milkd\[onnx\]'"):
        InferenceRuntime("cpu", backend="onnx")
    with pytest.raises(InputError, match=rf"needs (\w+ and )?{missing}:"):
        prepare_onnx(_model("tiny"))
    assert not onnxruntime_available()
    assert InferenceRuntime("cpu").backend == "torch"  # the torch backend does not need it


def test_streamed_map_with_onnx_backend_equals_torch(tmp_path, monkeypatch):
    """The whole read → model → blend loop gives the same map with either backend."""
    _need_onnx()
    from napari_milkd.core.inference.stream import _Band, _stream_bands, _StreamStats
    from napari_milkd.core.slides.geometry import map_geometry
    from napari_milkd.core.slides.slide import ArraySlideSource
    from napari_milkd.core.slides.tiling import tile_grid

    monkeypatch.setenv("MILKD_CACHE_DIR", str(tmp_path))
    image = np.random.default_rng(0).integers(0, 256, (300, 260, 3), dtype=np.uint8)
    source = ArraySlideSource(image, mpp=0.5)
    grid = tile_grid(source.info, mpp=0.5, tile=64, overlap=16)
    _, shape = map_geometry(source, grid)
    maps = []
    for backend in ("torch", "onnx"):
        rt = InferenceRuntime("cpu", backend=backend)
        out = np.zeros(shape, np.float32)
        for item in _stream_bands(
            _model("tiny"), source, grid, rt, band_rows=64, bands_done=0, batch_size=7, workers=1,
            prefetch=1, stage="predict", stats=_StreamStats(),
        ):  # fmt: skip
            if isinstance(item, _Band) and item.prob is not None:
                out[item.row0 : item.row0 + item.rows] = item.prob
        maps.append(out)
    assert maps[0].max() > 0
    np.testing.assert_allclose(maps[1], maps[0], atol=1e-4)


def test_the_cache_keeps_the_newest_exports_within_its_size(tmp_path, monkeypatch):
    import os

    from napari_milkd.core.inference import onnx_backend
    from napari_milkd.core.inference.onnx_backend import prune_cache

    graphs = []
    for age in range(5):  # five 100-byte graphs, the first the newest
        path = tmp_path / f"g{age}.onnx"
        path.write_bytes(b"x" * 100)
        os.utime(path, ns=(10**18 - age * 10**9, 10**18 - age * 10**9))
        graphs.append(path)
    (tmp_path / "notes.txt").write_text("not a graph")
    assert prune_cache(tmp_path, keep=graphs[0], max_bytes=250) == graphs[2:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g0.onnx", "g1.onnx", "notes.txt"]
    # the graph just exported stays even when it alone is over the budget
    assert prune_cache(tmp_path, keep=graphs[1], max_bytes=50) == [graphs[0]]
    assert [p.name for p in tmp_path.glob("*.onnx")] == ["g1.onnx"]

    # prepare_onnx prunes after an export: with room for one graph, a second model's export replaces it
    _need_onnx()
    monkeypatch.setattr(onnx_backend, "CACHE_MAX_BYTES", 1)
    cache = tmp_path / "cache"
    x = torch.rand(2, 3, 32, 32)
    onnx_backend.prepare_onnx(_model("tiny"), cache_dir=cache, threads=1)(x)
    (first,) = cache.glob("*.onnx")
    got = onnx_backend.prepare_onnx(_model("tiny", seed=1), cache_dir=cache, threads=1)(x)
    (second,) = cache.glob("*.onnx")
    assert second != first
    torch.testing.assert_close(got, _reference(_model("tiny", seed=1), x), atol=1e-4, rtol=1e-4)
