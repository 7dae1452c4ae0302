"""Losses of the MIL teacher, the IFKD student and the fully supervised net.

Owns the loss formulas (see ``docs/engine.md``). May import torch only. Every function is vectorised over
the batch (no per-sample Python loops) and computes in float32.

Shapes: logits and probabilities (N, 1, H, W) float; bag labels (N,) float/bool in {0, 1}; hard labels
(N, 1, H, W) uint8 with 0 = background, 1 = tumour, :data:`IGNORE` = no opinion.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from napari_milkd.core.engine.models.dws_mil import SegOutput

#: Hard-label value meaning "no human opinion here": the teacher's target is used.
IGNORE = 255


def soft_dice_loss(prob: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Per-image soft Dice loss (N,) of ``prob`` against ``target`` (both (N, 1, H, W) in [0, 1]).

    Dice of the tumour class where the target has tumour, of the background class where the target is
    empty (``Σ target < 0.5``): a tumour-class Dice against an empty target is ``1 − ε/(Σp + ε)``,
    whose gradient vanishes, so negative bags would barely be trained.
    """
    p = prob.float().flatten(1)
    t = target.float().flatten(1)
    empty = (t.sum(1) < 0.5).unsqueeze(1)
    p = torch.where(empty, 1 - p, p)
    t = torch.where(empty, 1 - t, t)
    inter = (p * t).sum(1)
    return 1 - (2 * inter + eps) / (p.sum(1) + t.sum(1) + eps)


def bag_targets(labels: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """All-ones maps for positive bags, all-zeros for negative, shaped like ``like`` (N, 1, H, W)."""
    return labels.float().view(-1, 1, 1, 1).expand_as(like)


def mil_dice_loss(out: SegOutput, labels: torch.Tensor) -> torch.Tensor:
    """The paper's teacher loss: mean per-image Dice on every side output and the fusion vs bag targets."""
    target = bag_targets(labels, out.fused_prob)
    probs = [torch.sigmoid(s) for s in out.sides] + [out.fused_prob]
    return torch.stack([soft_dice_loss(p, target) for p in probs]).mean()


def gm_pool(prob: torch.Tensor, r: float = 4.0) -> torch.Tensor:
    """Generalized-mean pooling ``(mean p^r)^(1/r)`` of (N, 1, H, W) probabilities to (N,) bag scores."""
    return prob.float().clamp_min(1e-6).pow(r).flatten(1).mean(1).pow(1.0 / r)


def mil_gm_bce_loss(out: SegOutput, labels: torch.Tensor, r: float = 4.0) -> torch.Tensor:
    """DWS-MIL/SA-MIL style loss: BCE of GM-pooled bag scores vs bag labels, on every output."""
    probs = [torch.sigmoid(s) for s in out.sides] + [out.fused_prob]
    y = labels.float()
    losses = [F.binary_cross_entropy(gm_pool(p, r).clamp(1e-6, 1 - 1e-6), y) for p in probs]
    return torch.stack(losses).mean()


def distill_targets(
    teacher_prob: torch.Tensor,
    labels: torch.Tensor,
    hard_labels: torch.Tensor | None = None,
    threshold: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Targets of the student: ``(soft, hard, human)``, each (N, 1, H, W).

    ``soft``: the teacher's fused probability on positive bags, 0 on negative bags (Dice target).
    ``hard``: the teacher's map thresholded at ``threshold`` (``p ≥ threshold`` → 1) on positives, 0 on
    negatives (cross-entropy target) — a float 0/1 map, never the soft map cast to int.
    ``human``: bool, True where a hard label overrides both targets.
    """
    pos = labels.float().view(-1, 1, 1, 1) > 0.5
    q = teacher_prob.detach().float()
    soft = torch.where(pos, q, torch.zeros_like(q))
    hard = torch.where(pos, (q >= threshold).float(), torch.zeros_like(q))
    if hard_labels is None:
        human = torch.zeros_like(q, dtype=torch.bool)
    else:
        human = hard_labels != IGNORE
        value = (hard_labels == 1).float()
        soft = torch.where(human, value, soft)
        hard = torch.where(human, value, hard)
    return soft, hard, human


def oeem_weights(pixel_loss: torch.Tensor, hard: torch.Tensor, human: torch.Tensor) -> torch.Tensor:
    """OEEM pixel weights (N, 1, H, W), detached.

    Per image, over the pixels whose target comes from the teacher: ``softmax(−loss)`` normalised to mean 1
    (pixels the student finds hard — likely teacher errors — count less). Weight 1 on human-labelled pixels
    and on every pixel of an image whose target is a single class.
    """
    n = pixel_loss.shape[0]
    loss = pixel_loss.detach().float().flatten(1)
    teach = ~human.flatten(1)
    t = hard.flatten(1)
    n_teach = teach.sum(1, keepdim=True)
    fg = (t * teach).sum(1, keepdim=True)
    mixed = (fg > 0) & (fg < n_teach)  # (N, 1): both classes among the teacher's pixels
    logits = torch.where(teach, -loss, torch.full_like(loss, float("-inf")))
    all_masked = n_teach == 0
    logits = torch.where(all_masked, torch.zeros_like(logits), logits)
    w = torch.softmax(logits, dim=1) * n_teach.clamp_min(1)
    w = torch.where(mixed & teach, w, torch.ones_like(w))
    return w.view(n, *pixel_loss.shape[1:])


def oeem_bce_loss(
    logit: torch.Tensor, hard: torch.Tensor, human: torch.Tensor, target: torch.Tensor | None = None
) -> torch.Tensor:
    """OEEM-weighted BCE **on logits**; mean over pixels and images (scalar).

    The target is ``hard`` (0/1) unless ``target`` (soft, in [0, 1]) is given; the OEEM weights group
    pixels by ``hard`` either way.
    """
    pixel = F.binary_cross_entropy_with_logits(
        logit.float(), hard if target is None else target, reduction="none"
    )
    return (oeem_weights(pixel, hard, human) * pixel).mean()


def student_loss(
    out: SegOutput,
    teacher_prob: torch.Tensor,
    labels: torch.Tensor,
    hard_labels: torch.Tensor | None = None,
    threshold: float = 0.5,
    ce_weight: float = 1.0,
    soft_ce: bool = False,
) -> torch.Tensor:
    """IFKD student loss, averaged over the three side outputs and the fusion.

    Per output: Dice to the soft target + ``ce_weight`` × OEEM-weighted BCE-with-logits to the
    thresholded target (the paper's), or to the soft target when ``soft_ce`` (see
    :func:`distill_targets`).
    """
    soft, hard, human = distill_targets(teacher_prob, labels, hard_labels, threshold)
    probs = [torch.sigmoid(s) for s in out.sides] + [out.fused_prob]
    ce_target = soft if soft_ce else None
    terms = [
        soft_dice_loss(p, soft).mean() + ce_weight * oeem_bce_loss(z, hard, human, ce_target)
        for p, z in zip(probs, out.logits, strict=True)
    ]
    return torch.stack(terms).mean()


def supervised_loss(out: SegOutput, masks: torch.Tensor, ce_weight: float = 1.0) -> torch.Tensor:
    """Fully supervised loss: Dice + plain BCE-with-logits to pixel masks (N, 1, H, W) {0, 1}, every output.

    It is :func:`student_loss` with every pixel human-labelled (so OEEM weights are all 1).
    """
    hard_labels = masks.to(torch.uint8)
    labels = torch.ones(masks.shape[0], device=masks.device)
    return student_loss(out, masks.float(), labels, hard_labels, ce_weight=ce_weight)
