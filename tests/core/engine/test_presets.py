"""Schedule presets and the one policy that derives a schedule from a few settings."""

from __future__ import annotations

from dataclasses import replace

import pytest

from napari_milkd.core.engine.config import TrainConfig
from napari_milkd.core.engine.presets import PRESET_NAMES, schedule
from napari_milkd.core.errors import InputError


def test_the_presets() -> None:
    assert PRESET_NAMES == ("quick", "standard", "paper")
    quick = schedule()  # the default preset is quick (widget, demo)
    assert (quick.backbone, quick.teacher_epochs, quick.student_epochs, quick.switch_every) == (
        "efficientnet_lite0",
        6,
        12,
        4,
    )
    assert quick.batch_size == 16
    # milkd train's behaviour is kept, but for the student's start (issue 13's evidence)
    assert schedule("standard") == replace(TrainConfig(), student_init="teacher")
    paper = schedule("paper")
    assert (paper.backbone, paper.lr, paper.weight_decay, paper.batch_size, paper.size) == (
        "vgg16",
        5e-5,
        5e-5,
        16,
        256,
    )
    assert (paper.teacher_epochs, paper.student_epochs, paper.switch_every, paper.first_switch) == (
        31,
        469,
        30,
        60,
    )


def test_derived_epochs_and_switches() -> None:
    c = schedule("quick", teacher_epochs=3)
    assert (c.teacher_epochs, c.student_epochs, c.switch_every, c.first_switch) == (3, 6, 2, 2)
    c = schedule("quick", student_epochs=1)
    assert (c.teacher_epochs, c.student_epochs, c.switch_every) == (6, 1, 1)  # never 0
    c = schedule("quick", teacher_epochs=3, student_epochs=9)  # explicit student wins
    assert (c.student_epochs, c.switch_every) == (9, 3)
    c = schedule("quick", teacher_epochs=3, switch_every=0)  # explicit switch wins (0 disables)
    assert (c.student_epochs, c.switch_every) == (6, 0)
    c = schedule("standard", teacher_epochs=30)  # student unchanged (60): the preset's switch stays
    assert (c.student_epochs, c.switch_every) == (60, 30)
    c = schedule("paper", student_epochs=90)  # the paper's late first switch follows the new schedule
    assert (c.switch_every, c.first_switch) == (30, 30)
    c = schedule("paper", student_epochs=90, switch_from=60)
    assert c.first_switch == 60


def test_none_is_ignored_and_other_settings_pass_through() -> None:
    c = schedule("paper", teacher_epochs=None, backbone=None, device="cpu", seed=3, lr=1e-3)
    assert (c.teacher_epochs, c.backbone, c.device, c.seed, c.lr) == (31, "vgg16", "cpu", 3, 1e-3)


def test_unknown_preset_or_setting() -> None:
    with pytest.raises(InputError, match="unknown preset 'fast'; choose one of quick, standard, paper"):
        schedule("fast")
    with pytest.raises(InputError, match=r"unknown training setting.*epochs"):
        schedule("quick", epochs=3)


def test_ablation_settings_are_checked_before_any_training() -> None:
    c = schedule("quick", teacher_loss="gm_bce", ce_weight=0.0, ce_target="soft", student_init="teacher",
                 fusion_weights=[0.2, 0.3, 0.5], augment=False, stain_jitter=0.05)  # fmt: skip
    assert c.stain_jitter == 0.05
    assert (c.teacher_loss, c.ce_weight, c.ce_target, c.student_init, c.augment) == (
        "gm_bce", 0.0, "soft", "teacher", False
    )  # fmt: skip
    assert c.fusion_weights == (0.2, 0.3, 0.5)
    assert (schedule("paper").ce_target, schedule("paper").student_init) == ("hard", "weights")  # the paper's
    assert TrainConfig().student_init == "weights"
    # The evidence of issue 13 (docs/benchmarks.md): the student starts from its teacher.
    assert schedule("quick").student_init == schedule("standard").student_init == "teacher"
    assert schedule("quick", student_init="weights").student_init == "weights"
    for bad, message in (
        ({"teacher_loss": "bce"}, "teacher loss must be one of dice, gm_bce"),
        ({"ce_target": "fuzzy"}, "ce target must be one of hard, soft"),
        ({"student_init": "imagenet"}, "student init must be one of weights, teacher"),
        ({"ce_weight": -1.0}, "cross-entropy weight must be ≥ 0"),
        ({"stain_jitter": 1.5}, "stain jitter must be in"),
        ({"fusion_weights": [0.5, 0.5, 0.5]}, "summing to 1"),
        ({"fusion_weights": [0.0, 0.5, 0.5]}, "three positive numbers"),
    ):
        with pytest.raises(InputError, match=message):
            schedule("quick", **bad)
