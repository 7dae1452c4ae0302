"""Segmentation metrics as the paper reports them: F1 (= Dice), IoU, Hausdorff, HD95, background F1.

Owns the metric definitions and their edge cases. May import numpy and scipy; never torch.

Inputs are per image: a probability map (H, W) float in [0, 1] (or a binary prediction) and a ground-truth
mask (H, W) {0, 1}; distances are in pixels of that array.

Edge cases (documented in ``docs/engine.md``):

* F1 and IoU: both prediction and ground truth empty → 1.0.
* Hausdorff (HD) and HD95 use the distances between the two foreground *boundaries* (pixels of the mask
  with a background 4-neighbour or on the image edge), pooled over both directions: HD is their maximum,
  HD95 their 95th percentile (medpy's and MONAI's definition), so HD95 ≤ HD.
* HD and HD95: both empty → 0; exactly one empty → the image diagonal (the largest distance possible in
  the image), so a missed or hallucinated tumour is penalised, not skipped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class ImageMetrics:
    """Metrics of one image; ``positive`` says which set it counts in (HD etc. are NaN on negatives)."""

    positive: bool
    f1: float
    iou: float
    hd: float
    hd95: float
    f1_background: float


@dataclass(frozen=True)
class Summary:
    """Aggregated metrics: means over positive images (``*_pos``) and negative images (``f1_neg``)."""

    f1_pos: float
    iou_pos: float
    hd_pos: float
    hd95_pos: float
    f1_neg: float
    n_pos: int
    n_neg: int

    def to_dict(self) -> dict[str, float | int | None]:
        """JSON-ready dict; NaN (no image of that kind) becomes ``None``."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def binarize(prob: np.ndarray, sigma: float = 0.0, threshold: float = 0.5) -> np.ndarray:
    """Threshold a probability map (H, W) at ``threshold`` after optional Gaussian smoothing (σ px)."""
    p = np.asarray(prob, dtype=np.float32)
    if sigma > 0:
        p = ndimage.gaussian_filter(p, sigma=sigma)
    return p >= threshold


def f1_score(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice / F1 of the foreground; 1.0 when both are empty."""
    pred, gt = pred.astype(bool), gt.astype(bool)
    denom = pred.sum() + gt.sum()
    return 1.0 if denom == 0 else float(2 * np.logical_and(pred, gt).sum() / denom)


def iou_score(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union of the foreground; 1.0 when both are empty."""
    pred, gt = pred.astype(bool), gt.astype(bool)
    union = np.logical_or(pred, gt).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, gt).sum() / union)


def _boundary(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hausdorff(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """``(HD, HD95)`` in pixels between binary masks (see the module docstring for empty masks)."""
    pred, gt = pred.astype(bool), gt.astype(bool)
    if not pred.any() and not gt.any():
        return 0.0, 0.0
    if not pred.any() or not gt.any():
        diag = float(math.hypot(*pred.shape))
        return diag, diag
    d = boundary_distances(pred, gt)
    return float(d.max()), float(np.percentile(d, 95))


def boundary_distances(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Symmetric boundary distances in pixels between two non-empty binary masks (float64, 1-D).

    A mask's boundary is its pixels with a 4-neighbour outside it (the image edge counts as outside).
    Returns, for every boundary pixel of ``pred``, the Euclidean distance to the nearest boundary pixel
    of ``gt``, followed by the same from ``gt`` to ``pred``: the values HD (max) and HD95 (95th
    percentile) are taken over. Raises :class:`ValueError` when either mask is empty.
    """
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if not pred.any() or not gt.any():
        raise ValueError("boundary distances need two non-empty masks")
    bp, bg = _boundary(pred), _boundary(gt)
    return np.concatenate(
        [ndimage.distance_transform_edt(~bg)[bp], ndimage.distance_transform_edt(~bp)[bg]]
    ).astype(np.float64)


def image_metrics(pred: np.ndarray, gt: np.ndarray, positive: bool) -> ImageMetrics:
    """Metrics of one binary prediction (H, W) against its ground truth (H, W)."""
    pred, gt = pred.astype(bool), gt.astype(bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    f1_bg = f1_score(~pred, ~gt)
    if not positive:
        nan = float("nan")
        return ImageMetrics(False, f1_score(pred, gt), iou_score(pred, gt), nan, nan, f1_bg)
    hd, hd95 = hausdorff(pred, gt)
    return ImageMetrics(True, f1_score(pred, gt), iou_score(pred, gt), hd, hd95, f1_bg)


def summarize(per_image: Sequence[ImageMetrics]) -> Summary:
    """Mean F1/IoU/HD/HD95 over positive images and background F1 over negative images (NaN if none)."""
    pos = [m for m in per_image if m.positive]
    neg = [m for m in per_image if not m.positive]

    def mean(values: list[float]) -> float:
        return float(np.mean(values)) if values else float("nan")

    return Summary(
        f1_pos=mean([m.f1 for m in pos]),
        iou_pos=mean([m.iou for m in pos]),
        hd_pos=mean([m.hd for m in pos]),
        hd95_pos=mean([m.hd95 for m in pos]),
        f1_neg=mean([m.f1_background for m in neg]),
        n_pos=len(pos),
        n_neg=len(neg),
    )


def evaluate_masks(
    probs: Sequence[np.ndarray],
    gts: Sequence[np.ndarray],
    labels: Sequence[int],
    sigma: float = 3.0,
    threshold: float = 0.5,
) -> tuple[Summary, list[ImageMetrics]]:
    """Metrics of probability maps vs ground truth; negatives are scored against all-background."""
    per = []
    for prob, gt, label in zip(probs, gts, labels, strict=True):
        pred = binarize(prob, sigma, threshold)
        target = np.asarray(gt, dtype=bool) if label else np.zeros(pred.shape, dtype=bool)
        per.append(image_metrics(pred, target, bool(label)))
    return summarize(per), per
