"""Named training schedules, and the one policy for deriving a schedule from a few settings.

Owns the presets (``quick``, ``standard``, ``paper``) and :func:`schedule`, which every front-end (CLI,
widget, demo) uses to turn "a preset plus what the user changed" into a
:class:`~napari_milkd.core.engine.config.TrainConfig`, so they cannot drift apart. Plain data: may import
the standard library, :mod:`napari_milkd.core.engine.config` and :mod:`napari_milkd.core.errors` only (no
torch).

Policy: explicit settings win; a student needs longer than its teacher (changing only the teacher's epochs
gives the student twice as many); role reversal happens about three times per run (changing the student's
epochs without saying ``switch_every`` gives ``max(1, student_epochs // 3)``, first switch at that epoch).
"""

from __future__ import annotations

from dataclasses import fields
from types import MappingProxyType
from typing import Any

from napari_milkd.core.engine.config import SETTING_CHOICES, TrainConfig
from napari_milkd.core.errors import InputError

#: The named presets: each is the :class:`TrainConfig` fields it changes from the defaults.
PRESETS: MappingProxyType[str, MappingProxyType[str, Any]] = MappingProxyType(
    {
        # What the widget and `milkd demo` use: minutes on a laptop. The student starts from its teacher:
        # at this budget the only setting that let the student beat its teacher on the held-out mosaic (3
        # of 3 seeds, +0.053 Dice over an ImageNet start), neutral on GlaS, with a third of the seed spread
        # (docs/benchmarks.md, "issue 13, fifth session").
        "quick": MappingProxyType(
            {
                "backbone": "efficientnet_lite0",
                "teacher_epochs": 6,
                "student_epochs": 12,
                "switch_every": 4,
                "batch_size": 16,
                "student_init": "teacher",
            }
        ),
        # TrainConfig's defaults (what `milkd train` uses), but the student starts from its teacher as in
        # quick: on GlaS at 128 px, held-out F1_pos 0.622 ± 0.037 against 0.582 ± 0.107 (docs/benchmarks.md).
        "standard": MappingProxyType({"student_init": "teacher"}),
        # He, Li, Zemp (arXiv 2407.10274): VGG16, Adam 5e-5, 31 + 469 epochs, switch every 30 from 60.
        "paper": MappingProxyType(
            {
                "backbone": "vgg16",
                "lr": 5e-5,
                "weight_decay": 5e-5,
                "batch_size": 16,
                "teacher_epochs": 31,
                "student_epochs": 469,
                "switch_every": 30,
                "switch_from": 60,
                "size": 256,
            }
        ),
    }
)

#: Preset names, in order of run time.
PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)

_FIELDS = frozenset(f.name for f in fields(TrainConfig))


def schedule(preset: str = "quick", **overrides: Any) -> TrainConfig:
    """The :class:`TrainConfig` of ``preset`` with ``overrides`` (any ``TrainConfig`` field) applied.

    Overrides that are ``None`` are ignored (so unset CLI flags can be passed as is). When
    ``teacher_epochs`` is given but ``student_epochs`` is not, the student gets ``2 × teacher_epochs``.
    When the student's epochs end up different from the preset's and ``switch_every`` is not given,
    ``switch_every = max(1, student_epochs // 3)`` and (unless ``switch_from`` is given) the first switch
    is at ``switch_every``. Raises :class:`InputError` for an unknown preset or setting name.
    """
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; choose one of {', '.join(PRESET_NAMES)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - _FIELDS)
    if unknown:
        raise InputError(f"unknown training setting(s): {', '.join(unknown)}")
    values: dict[str, Any] = {**TrainConfig().to_dict(), **PRESETS[preset]}
    preset_student = values["student_epochs"]
    values.update(given)
    if "teacher_epochs" in given and "student_epochs" not in given:
        values["student_epochs"] = 2 * int(given["teacher_epochs"])
    if values["student_epochs"] != preset_student and "switch_every" not in given:
        values["switch_every"] = max(1, int(values["student_epochs"]) // 3)
        if "switch_from" not in given:
            values["switch_from"] = 0
    _check_choices(values)
    return TrainConfig.from_dict(values)


def _check_choices(values: dict[str, Any]) -> None:
    """Refuse enumerated settings outside ``SETTING_CHOICES`` and loss or fusion weights a net cannot use."""
    for name, choices in SETTING_CHOICES.items():
        if values[name] not in choices:
            raise InputError(
                f"{name.replace('_', ' ')} must be one of {', '.join(choices)}, got {values[name]!r}"
            )
    if not float(values["ce_weight"]) >= 0:
        raise InputError(f"the cross-entropy weight must be ≥ 0, got {values['ce_weight']}")
    if not 0 <= float(values["stain_jitter"]) < 1:
        raise InputError(f"stain jitter must be in [0, 1), got {values['stain_jitter']}")
    weights = [float(w) for w in values["fusion_weights"]]
    if len(weights) != 3 or min(weights) <= 0 or abs(sum(weights) - 1) > 1e-6:
        raise InputError(f"fusion weights must be three positive numbers summing to 1, got {weights}")
