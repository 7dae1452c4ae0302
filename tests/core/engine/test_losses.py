"""Losses: each test pins down one property the authors' released code got wrong or the paper specifies."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from napari_milkd.core.engine import losses
from napari_milkd.core.engine.models import SegOutput, fuse_logits

W = (0.3, 0.3, 0.4)


def _out(z: torch.Tensor) -> SegOutput:
    """A SegOutput whose three sides all equal ``z``."""
    fl, fp = fuse_logits([z, z, z], W)
    return SegOutput((z, z, z), fl, fp)


def test_ce_target_is_thresholded_not_int_cast() -> None:
    q = torch.full((1, 1, 4, 4), 0.7)
    _, hard, _ = losses.distill_targets(q, torch.tensor([1.0]))
    assert torch.equal(hard, torch.ones_like(q))  # the buggy q.long() would give all zeros
    assert q.long().sum() == 0
    _, hard_low, _ = losses.distill_targets(torch.full_like(q, 0.3), torch.tensor([1.0]))
    assert hard_low.sum() == 0
    human = torch.zeros_like(q, dtype=torch.bool)
    agree = losses.oeem_bce_loss(torch.full_like(q, 3.0), hard, human)
    disagree = losses.oeem_bce_loss(torch.full_like(q, -3.0), hard, human)
    assert agree < disagree


def test_negative_bag_ce_target_is_background_even_if_teacher_says_tumour() -> None:
    q = torch.full((1, 1, 4, 4), 0.9)
    soft, hard, _ = losses.distill_targets(q, torch.tensor([0.0]))
    assert soft.sum() == 0 and hard.sum() == 0


def test_bce_is_on_logits_with_known_values_and_gradient() -> None:
    z = torch.tensor([0.0, 2.0, -1.0, 4.0]).view(1, 1, 2, 2).requires_grad_(True)
    target = torch.ones(1, 1, 2, 2)  # single-class target: OEEM weights are 1
    loss = losses.oeem_bce_loss(z, target, torch.zeros_like(target, dtype=torch.bool))
    expected = sum(math.log1p(math.exp(-v)) for v in (0.0, 2.0, -1.0, 4.0)) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert loss.item() == pytest.approx(F.binary_cross_entropy_with_logits(z, target).item(), rel=1e-6)
    # feeding probabilities as logits (the bug) gives a different value
    wrong = F.binary_cross_entropy_with_logits(torch.sigmoid(z), target).item()
    assert abs(wrong - expected) > 0.05
    loss.backward()
    assert torch.allclose(z.grad, (torch.sigmoid(z.detach()) - 1) / 4, atol=1e-6)


def test_fused_logit_is_logit_of_weighted_probability_and_finite() -> None:
    z1 = torch.tensor([[[[-100.0, 0.0, 3.0, 100.0]]]])
    z2 = torch.tensor([[[[-100.0, 1.0, -2.0, 100.0]]]])
    z3 = torch.tensor([[[[-100.0, -1.0, 0.5, 100.0]]]])
    logit, prob = fuse_logits([z1, z2, z3], W)
    expected = 0.3 * torch.sigmoid(z1) + 0.3 * torch.sigmoid(z2) + 0.4 * torch.sigmoid(z3)
    assert torch.allclose(prob, expected, atol=1e-6)
    assert torch.isfinite(logit).all()
    assert torch.allclose(torch.sigmoid(logit[..., 1:3]), expected[..., 1:3], atol=1e-6)
    assert logit[..., 0] < -50 and logit[..., 3] > 50


def test_soft_dice_perfect_zero_and_negatives_have_a_gradient() -> None:
    ones = torch.ones(2, 1, 8, 8)
    assert torch.allclose(losses.soft_dice_loss(ones, ones), torch.zeros(2), atol=1e-6)
    p = torch.full((1, 1, 8, 8), 0.5, requires_grad=True)
    loss = losses.soft_dice_loss(p, torch.zeros_like(p))
    assert loss.item() == pytest.approx(1 - (64 + 1) / (32 + 64 + 1), rel=1e-5)
    loss.backward()
    assert p.grad.abs().sum() > 1e-3  # a foreground Dice vs an empty target would be ~flat here


def test_mil_losses_prefer_bag_consistent_predictions() -> None:
    labels = torch.tensor([1.0, 0.0])
    good = torch.cat([torch.full((1, 1, 8, 8), 5.0), torch.full((1, 1, 8, 8), -5.0)])
    assert losses.mil_dice_loss(_out(good), labels) < losses.mil_dice_loss(_out(-good), labels)
    assert losses.mil_gm_bce_loss(_out(good), labels) < losses.mil_gm_bce_loss(_out(-good), labels)
    assert losses.mil_dice_loss(_out(good), labels) < 0.05


def test_oeem_weights_mean_one_downweight_hard_pixels_and_detach() -> None:
    hard = torch.zeros(2, 1, 4, 4)
    hard[0, 0, :2] = 1  # image 0 mixed, image 1 single-class
    pixel = torch.rand(2, 1, 4, 4, requires_grad=True)
    human = torch.zeros_like(hard, dtype=torch.bool)
    w = losses.oeem_weights(pixel, hard, human)
    assert not w.requires_grad
    assert w[0].mean().item() == pytest.approx(1.0, rel=1e-5)
    assert torch.equal(w[1], torch.ones_like(w[1]))
    flat_w, flat_l = w[0].flatten(), pixel[0].detach().flatten()
    assert flat_w[flat_l.argmax()] == flat_w.min() and flat_w[flat_l.argmin()] == flat_w.max()
    expected = torch.softmax(-flat_l, 0) * 16
    assert torch.allclose(flat_w, expected, atol=1e-6)


def test_hard_labels_override_teacher_targets_with_full_weight() -> None:
    q = torch.full((1, 1, 4, 4), 0.9)
    q[..., 2:, :] = 0.1
    hard_labels = torch.full((1, 1, 4, 4), losses.IGNORE, dtype=torch.uint8)
    hard_labels[0, 0, 0, 0] = 0  # human: background where the teacher says tumour
    hard_labels[0, 0, 3, 3] = 1  # human: tumour where the teacher says background
    soft, hard, human = losses.distill_targets(q, torch.tensor([1.0]), hard_labels)
    assert soft[0, 0, 0, 0] == 0 and hard[0, 0, 0, 0] == 0
    assert soft[0, 0, 3, 3] == 1 and hard[0, 0, 3, 3] == 1
    assert human.sum() == 2
    pixel = torch.rand(1, 1, 4, 4) * 3
    w = losses.oeem_weights(pixel, hard, human)
    assert w[0, 0, 0, 0] == 1 and w[0, 0, 3, 3] == 1
    assert w[~human].mean().item() == pytest.approx(1.0, rel=1e-5)
    # human labels apply on negative bags too, and to the student loss
    soft_n, _, _ = losses.distill_targets(q, torch.tensor([0.0]), hard_labels)
    assert soft_n[0, 0, 3, 3] == 1 and soft_n.sum() == 1
    z = torch.zeros(1, 1, 4, 4)
    z[0, 0, 3, 3] = 6.0
    with_h = losses.student_loss(_out(z), torch.zeros_like(q), torch.tensor([0.0]), hard_labels)
    without = losses.student_loss(_out(z), torch.zeros_like(q), torch.tensor([0.0]))
    assert with_h < without


def test_student_loss_is_vectorised_per_image() -> None:
    torch.manual_seed(0)
    z = torch.randn(3, 1, 8, 8)
    q = torch.rand(3, 1, 8, 8)
    labels = torch.tensor([1.0, 0.0, 1.0])
    batch = losses.student_loss(_out(z), q, labels)
    single = torch.stack(
        [losses.student_loss(_out(z[i : i + 1]), q[i : i + 1], labels[i : i + 1]) for i in range(3)]
    )
    assert batch.item() == pytest.approx(single.mean().item(), rel=1e-5)


def test_supervised_loss_low_for_correct_masks() -> None:
    masks = torch.zeros(2, 1, 8, 8)
    masks[0, 0, 2:6, 2:6] = 1
    good = (masks * 2 - 1) * 8
    assert losses.supervised_loss(_out(good), masks) < 0.05 < losses.supervised_loss(_out(-good), masks)


def test_soft_ce_targets_the_teacher_probability_and_keeps_oeem_groups() -> None:
    teacher = torch.full((2, 1, 4, 4), 0.7)
    labels = torch.tensor([1.0, 0.0])
    z = torch.zeros(2, 1, 4, 4)
    out = _out(z)
    hard = losses.student_loss(out, teacher, labels, ce_weight=1.0)
    soft = losses.student_loss(out, teacher, labels, ce_weight=1.0, soft_ce=True)
    dice_only = losses.student_loss(out, teacher, labels, ce_weight=0.0)
    # logit 0 against target 1 or 0.7 gives the same BCE (log 2) per pixel: z = 0 cannot tell them apart
    assert torch.isclose(hard, soft)
    # a confident logit: BCE to 0.7 is larger than to 1 on the positive image
    out = _out(torch.full((2, 1, 4, 4), 4.0))
    gap = losses.student_loss(out, teacher, labels, soft_ce=True) - losses.student_loss(out, teacher, labels)
    expected = (F.binary_cross_entropy_with_logits(torch.tensor(4.0), torch.tensor(0.7))
                - F.binary_cross_entropy_with_logits(torch.tensor(4.0), torch.tensor(1.0))) / 2  # fmt: skip
    assert torch.isclose(gap, expected, atol=1e-5)
    assert dice_only < hard
