"""Metrics on hand-made masks with known values, including the empty-mask conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_milkd.core.engine.metrics import (
    binarize,
    evaluate_masks,
    f1_score,
    hausdorff,
    image_metrics,
    iou_score,
)


def _square(y: int, x: int, s: int, shape: tuple[int, int] = (40, 40)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[y : y + s, x : x + s] = True
    return m


def test_f1_iou_known_values() -> None:
    gt = _square(0, 0, 10)  # 100 px
    pred = _square(0, 5, 10)  # overlap 50 px
    assert f1_score(pred, gt) == pytest.approx(2 * 50 / 200)
    assert iou_score(pred, gt) == pytest.approx(50 / 150)
    empty = np.zeros_like(gt)
    assert f1_score(empty, empty) == 1.0 and iou_score(empty, empty) == 1.0
    assert f1_score(empty, gt) == 0.0


def test_hausdorff_known_values() -> None:
    gt = _square(10, 10, 10)
    assert hausdorff(gt, gt) == (0.0, 0.0)
    hd, hd95 = hausdorff(_square(10, 15, 10), gt)  # shifted 5 px right
    assert hd == pytest.approx(5.0)
    assert 0 < hd95 <= hd
    far = gt | _square(35, 35, 2)  # one stray blob far away
    hd_far, hd95_far = hausdorff(far, gt)
    assert hd_far == pytest.approx(math.hypot(17, 17))  # (36, 36) to the corner (19, 19)
    assert hd95_far < hd_far  # the 95th percentile ignores the few stray boundary pixels


def test_hausdorff_empty_conventions() -> None:
    gt = _square(10, 10, 10)
    empty = np.zeros_like(gt)
    assert hausdorff(empty, empty) == (0.0, 0.0)
    diag = math.hypot(40, 40)
    assert hausdorff(empty, gt) == (pytest.approx(diag), pytest.approx(diag))
    assert hausdorff(gt, empty)[0] == pytest.approx(diag)


def test_background_f1_on_negatives() -> None:
    pred = _square(0, 0, 20)  # 400 of 1600 px predicted tumour on a negative image
    m = image_metrics(pred, np.zeros_like(pred), positive=False)
    assert m.f1_background == pytest.approx(2 * 1200 / (1200 + 1600))
    assert math.isnan(m.hd)


def test_gaussian_smoothing_removes_isolated_pixels() -> None:
    prob = np.zeros((40, 40), np.float32)
    prob[5, 5] = 1.0
    prob[15:35, 15:35] = 1.0
    assert binarize(prob)[5, 5]
    smooth = binarize(prob, sigma=3.0)
    assert not smooth[5, 5] and smooth[25, 25]


def test_evaluate_masks_aggregates_positive_and_negative() -> None:
    gt = _square(10, 10, 10).astype(np.uint8)
    probs = [gt.astype(np.float32), np.zeros((40, 40), np.float32), _square(0, 0, 40).astype(np.float32)]
    summary, per = evaluate_masks(probs, [gt, gt, gt], [1, 1, 0], sigma=0.0)
    assert summary.n_pos == 2 and summary.n_neg == 1
    assert summary.f1_pos == pytest.approx(0.5)  # 1.0 and 0.0
    assert summary.f1_neg == pytest.approx(0.0)  # all-tumour prediction on a negative image
    assert summary.hd_pos == pytest.approx(math.hypot(40, 40) / 2)
    assert set(summary.to_dict()) == {"f1_pos", "iou_pos", "hd_pos", "hd95_pos", "f1_neg", "n_pos", "n_neg"}
    assert len(per) == 3
