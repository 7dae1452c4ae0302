"""The SA-MIL-style segmentation net: DWS-MIL with self-attention on its deepest features.

Owns the attention block. May import torch and :mod:`.dws_mil`; nothing else.

SA-MIL (Li et al., *Medical Image Analysis* 2023) adds self-attention to a deeply supervised MIL net, so a
pixel's score can draw on distant pixels of the same tissue (a gland's lumen on its epithelium). Here one
block refines the deepest encoder features before their side output: ``x + γ · softmax(QKᵀ/√d) V``, with
the value projection initialised to zero and ``γ`` to 1 (the net starts as DWS-MIL, yet the attention
learns from the first step: SAGAN's ``γ = 0`` start moved γ by one Adam step per batch and left it at
~10⁻³ after the quick schedule, docs/benchmarks.md), queries at every position and keys/values average-
pooled to at most :data:`KV_SIDE` × :data:`KV_SIDE` positions (bounded memory: VGG16's deepest map at
256² input has 4 096 positions). Inputs, outputs and fusion are :class:`~.dws_mil.DWSMILNet`'s, so every
loss, the distillation and prediction take either net.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from napari_milkd.core.engine.models.dws_mil import DWSMILNet, SegOutput, fuse_logits

#: Keys and values are pooled to at most this many positions per side.
KV_SIDE = 32


class SelfAttention2d(nn.Module):
    """Self-attention over the positions of a (N, C, H, W) map, residual, gated by a learnt ``gamma``.

    Starts as the identity: the value projection is zero, ``gamma`` is 1 so its gradient is not.
    """

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        inner = max(1, channels // reduction)
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.value.weight)
        nn.init.zeros_(self.value.bias)  # type: ignore[arg-type]
        self.gamma = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` plus ``gamma`` times what each position attends to."""
        n, c, h, w = x.shape
        pooled = x if max(h, w) <= KV_SIDE else F.adaptive_avg_pool2d(x, (min(h, KV_SIDE), min(w, KV_SIDE)))
        q = self.query(x).flatten(2).transpose(1, 2)  # (N, HW, d)
        k = self.key(pooled).flatten(2)  # (N, d, hw)
        v = self.value(pooled).flatten(2)  # (N, C, hw)
        attention = torch.softmax(q @ k / math.sqrt(q.shape[-1]), dim=-1)  # (N, HW, hw)
        out = (v @ attention.transpose(1, 2)).view(n, c, h, w)
        return x + self.gamma * out


class SAMILNet(DWSMILNet):
    """:class:`DWSMILNet` whose deepest features pass a :class:`SelfAttention2d` before their side output."""

    def __init__(self, encoder: nn.Module, fusion_weights: tuple[float, float, float] = (0.3, 0.3, 0.4)):
        super().__init__(encoder, fusion_weights)
        self.attention = SelfAttention2d(encoder.channels[-1])

    def forward(self, x: torch.Tensor) -> SegOutput:
        """Segment ``x`` (N, 3, H, W) float in [0, 1]."""
        size = x.shape[-2:]
        feats = list(self.encoder((x - self.mean) / self.std))
        feats[-1] = self.attention(feats[-1])
        sides = tuple(
            F.interpolate(conv(f), size=size, mode="bilinear", align_corners=False).float()
            for conv, f in zip(self.side, feats, strict=True)
        )
        fused_logit, fused_prob = fuse_logits(sides, self.fusion_weights)
        return SegOutput(sides, fused_logit, fused_prob)  # type: ignore[arg-type]
