"""The DWS-MIL segmentation net: encoder stages, three side outputs, fixed-weight fusion.

Owns the network head and its output convention. May import torch and the encoders; nothing else.

Input: float (N, 3, H, W) in [0, 1] (ImageNet normalisation happens inside). Output: :class:`SegOutput`
with one-channel maps (N, 1, H, W) at the input size.

Fusion is on **probabilities**, as in the paper: ``p_fused = Σ w_i σ(z_i)`` with fixed weights
(0.3, 0.3, 0.4). Its logit ``log p_fused − log(1 − p_fused)`` is computed in log space
(``logsumexp(log w_i + logσ(±z_i))``), so it is finite and exact even when the side outputs saturate, and
losses can use ``binary_cross_entropy_with_logits`` on every output including the fusion.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SegOutput(NamedTuple):
    """Outputs of :class:`DWSMILNet`, all (N, 1, H, W) float32.

    ``sides``: the three side-output logits; ``fused_logit``: the logit of ``fused_prob``;
    ``fused_prob``: the weighted mean of the side probabilities (the pseudo-mask).
    """

    sides: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    fused_logit: torch.Tensor
    fused_prob: torch.Tensor

    @property
    def logits(self) -> tuple[torch.Tensor, ...]:
        """Every output's logit: the three sides, then the fusion."""
        return (*self.sides, self.fused_logit)


def fuse_logits(
    sides: tuple[torch.Tensor, ...] | list[torch.Tensor], weights: tuple[float, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fuse side logits on the probability scale; return ``(fused_logit, fused_prob)`` in float32.

    ``weights`` must be positive and sum to 1 (so the fusion is a probability).
    """
    z = torch.stack([s.float() for s in sides], dim=0)  # (S, N, 1, H, W)
    logw = torch.log(torch.tensor(weights, dtype=z.dtype, device=z.device)).view(-1, 1, 1, 1, 1)
    log_p = torch.logsumexp(logw + F.logsigmoid(z), dim=0)
    log_q = torch.logsumexp(logw + F.logsigmoid(-z), dim=0)
    return log_p - log_q, log_p.exp()


class DWSMILNet(nn.Module):
    """Encoder + three side outputs (1×1 conv → bilinear upsampling to the input size) + fusion."""

    def __init__(self, encoder: nn.Module, fusion_weights: tuple[float, float, float] = (0.3, 0.3, 0.4)):
        super().__init__()
        if len(fusion_weights) != 3 or min(fusion_weights) <= 0 or abs(sum(fusion_weights) - 1) > 1e-6:
            raise ValueError(f"fusion weights must be 3 positive numbers summing to 1, got {fusion_weights}")
        self.encoder = encoder
        self.fusion_weights = tuple(float(w) for w in fusion_weights)
        self.side = nn.ModuleList(nn.Conv2d(c, 1, 1) for c in encoder.channels)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> SegOutput:
        """Segment ``x`` (N, 3, H, W) float in [0, 1]."""
        size = x.shape[-2:]
        feats = self.encoder((x - self.mean) / self.std)
        sides = tuple(
            F.interpolate(conv(f), size=size, mode="bilinear", align_corners=False).float()
            for conv, f in zip(self.side, feats, strict=True)
        )
        fused_logit, fused_prob = fuse_logits(sides, self.fusion_weights)
        return SegOutput(sides, fused_logit, fused_prob)  # type: ignore[arg-type]
