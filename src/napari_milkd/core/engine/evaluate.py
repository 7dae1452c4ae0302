"""Evaluation of trained checkpoints on a labelled image set.

Owns prediction at the model's input size (its checkpoint's spec ``tile``, else its config's ``size``),
resampling to each ground-truth mask's full resolution,
and scoring with :mod:`napari_milkd.core.engine.metrics`. May import torch, numpy and core modules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from napari_milkd.core.engine.checkpoint import load_checkpoint
from napari_milkd.core.engine.config import TrainConfig
from napari_milkd.core.engine.datasets import BagSet
from napari_milkd.core.engine.metrics import ImageMetrics, Summary, evaluate_masks
from napari_milkd.core.engine.spec import checkpoint_spec
from napari_milkd.core.engine.train import load_model, predict_probs
from napari_milkd.core.errors import InputError


def upsample_probs(probs: np.ndarray, shapes: list[tuple[int, int]]) -> list[np.ndarray]:
    """Bilinearly resample probability maps (N, S, S) to per-image shapes (H_i, W_i)."""
    out = []
    for prob, shape in zip(probs, shapes, strict=True):
        t = torch.from_numpy(np.ascontiguousarray(prob))[None, None]
        out.append(F.interpolate(t, size=shape, mode="bilinear", align_corners=False)[0, 0].numpy())
    return out


def input_size(state: dict[str, Any]) -> int:
    """The side in px a loaded checkpoint's model takes: its spec's ``tile``, else its config's ``size``."""
    spec = checkpoint_spec(state)
    return spec.tile if spec is not None else TrainConfig.from_dict(state["config"]).size


def evaluate_checkpoint(
    checkpoint: str | Path,
    bags: BagSet,
    sigma: float = 3.0,
    threshold: float = 0.5,
    device: str = "auto",
    batch_size: int = 16,
) -> tuple[Summary, list[ImageMetrics]]:
    """Score a checkpoint's selected model on ``bags`` (with full-resolution ``eval_masks``).

    Positive bags are scored against their mask, negative bags against all-background; the probability
    map is resampled to the mask's resolution, smoothed (Gaussian σ px) and thresholded.
    """
    if bags.eval_masks is None:
        raise InputError("evaluation needs ground-truth masks (--masks)")
    size = input_size(load_checkpoint(checkpoint))
    if bags.images.shape[1] != size:
        raise InputError(f"bags are {bags.images.shape[1]} px but the model was trained at {size} px")
    model, _ = load_model(checkpoint, device)
    probs = predict_probs(model, bags.images, batch_size, device)
    full = upsample_probs(probs, [m.shape for m in bags.eval_masks])
    return evaluate_masks(full, bags.eval_masks, bags.labels.tolist(), sigma, threshold)
