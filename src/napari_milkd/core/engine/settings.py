"""The one description of each training setting a user can change: what it means, how the CLI spells it,
its choices, and, for the ones the widget shows, the form's label and range.

Owns :data:`SETTINGS` (:class:`~napari_milkd.core.engine.config.TrainConfig` field → :class:`Setting`),
from which ``milkd train`` generates its config flags (:mod:`napari_milkd.commands._settings`) and the
training form takes its spin boxes and combo boxes (:mod:`napari_milkd._widget.training_panel`), so the
two cannot describe a setting differently. Choices are read from ``config.BACKBONES``, ``config.NETS``
and ``config.SETTING_CHOICES``; the values a preset gives stay in :mod:`~napari_milkd.core.engine.presets`.
Plain data: may import the standard library and :mod:`napari_milkd.core.engine.config` only.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from napari_milkd.core.engine.config import BACKBONES, NETS, SETTING_CHOICES, TrainConfig

#: The allowed values of every enumerated setting (field → choices), as config defines them.
CHOICES: MappingProxyType[str, tuple[str, ...]] = MappingProxyType(
    {"backbone": BACKBONES, "net": NETS, **SETTING_CHOICES}
)

_TYPES: dict[str, Any] = typing.get_type_hints(TrainConfig)


@dataclass(frozen=True)
class Setting:
    """How one :class:`TrainConfig` field is presented.

    ``help`` says what the setting means (the widget's tooltip; the CLI help before the default); for a
    switch that is on by default it describes its ``--no-`` flag. ``default`` is what the CLI help says
    about the default (``None``: nothing). ``cli_value`` is what the flag parses to when it is not given
    (``None``: the preset's value, which :func:`~napari_milkd.core.engine.presets.schedule` fills in).
    ``parser_checks``: argparse refuses a value outside :attr:`choices` (otherwise ``schedule`` or the
    command does, with its own one-line error). ``label`` and ``maximum`` (the smallest value is 1) are the
    widget's, for the settings its form shows.
    """

    name: str
    help: str
    default: str | None = "the preset's"
    metavar: str | None = None
    cli_value: Any = None
    parser_checks: bool = False
    label: str = ""
    maximum: int | None = None

    @property
    def kind(self) -> Any:
        """The field's type in :class:`TrainConfig` (``int``, ``str``, ``tuple[float, float, float]`` …)."""
        return _TYPES[self.name]

    @property
    def choices(self) -> tuple[str, ...]:
        """The allowed values of an enumerated setting; empty for a free one."""
        return CHOICES.get(self.name, ())

    @property
    def flag(self) -> str:
        """The flag: ``--batch-size`` for ``batch_size``; ``--no-augment`` for a switch (on by default)."""
        dashed = self.name.replace("_", "-")
        return f"--no-{dashed}" if self.kind is bool else f"--{dashed}"

    @property
    def cli_help(self) -> str:
        """The CLI help: :attr:`help`, then what the default is."""
        return self.help if self.default is None else f"{self.help}; default: {self.default}"


def _table(*settings: Setting) -> MappingProxyType[str, Setting]:
    return MappingProxyType({s.name: s for s in settings})


#: The settings a user can change, in the order ``milkd train --help`` lists them.
SETTINGS: MappingProxyType[str, Setting] = _table(
    Setting(
        "backbone",
        "efficientnet_lite0: ImageNet weights shipped with the plugin; vgg16: the paper's (needs its "
        "weights file or a network connection); tiny: seconds on a CPU, for trying things out",
        label="Backbone",
    ),
    Setting(
        "net",
        "MIL segmentation net of teacher and student: dws_mil (deeply supervised side outputs, the "
        "paper's) or sa_mil (the same with self-attention on the deepest features, after SA-MIL)",
        default="dws_mil",
        label="MIL net",
    ),
    Setting("weights", "'default', 'imagenet', 'random', or an encoder weights file", default="'default'"),
    Setting("size", "training size in px, square"),
    Setting(
        "batch_size",
        "tiles per training step, halved automatically when the GPU is full",
        label="Batch size",
        maximum=256,
    ),
    Setting("teacher_epochs", "epochs of the MIL teacher", label="teacher", maximum=500),
    Setting(
        "student_epochs",
        "epochs of the distilled student, which needs longer than its teacher (role reversal every third "
        "of them)",
        default="the preset's, or 2 × --teacher-epochs",
        label="student",
        maximum=1000,
    ),
    Setting(
        "switch_every",
        "role reversal every K student epochs; 0 disables it",
        default="the preset's, or student / 3",
    ),
    Setting("switch_from", "first role-reversal epoch; 0 means the --switch-every epoch"),
    Setting("teacher_loss", "MIL teacher loss: dice (the paper's) or gm_bce", default="dice"),
    Setting(
        "ce_weight",
        "weight of the OEEM cross-entropy beside the Dice term in the student loss; 0 = Dice only",
        default="1",
    ),
    Setting(
        "ce_target",
        "target of that cross-entropy: hard (the teacher's map thresholded, the paper's) or soft (its "
        "probability)",
        default="hard",
    ),
    Setting(
        "student_init",
        "the student's starting weights: weights (those of --weights, ImageNet by default) or teacher "
        "(a copy of its teacher)",
        default="the preset's (quick, standard: teacher; paper: weights)",
    ),
    Setting(
        "fusion_weights",
        "weights of the three side outputs in the fused map, positive, summing to 1",
        default="0.3 0.3 0.4",
        metavar="W",
    ),
    Setting("augment", "train without flips, rotations or stain jitter", default=None),
    Setting(
        "stain_jitter",
        "H&E stain jitter when augmenting: each stain's optical density scaled by 1 ± SIGMA and shifted "
        "by ± SIGMA",
        default="0, flips and rotations only",
        metavar="SIGMA",
    ),
    Setting(
        "supervision",
        "weak: MIL teacher and distilled student from bag labels; full: the same net on pixel masks "
        "(needs --masks)",
        default="weak",
        cli_value="weak",
        parser_checks=True,
    ),
    Setting(
        "select_on",
        "model-selection criterion on the validation split: weak (validation loss), agreement (weak "
        "labels only: false-positive area on negatives, tumour found / agreement with the first teacher on "
        "positives, hand corrections), masks (F1 on validation masks, needs --masks)",
        parser_checks=True,
    ),
    Setting("val_fraction", "share of the bags kept for validation", default="the preset's, 0.2"),
    Setting("lr", "Adam learning rate"),
    Setting("weight_decay", "Adam weight decay"),
    Setting("device", "auto, cpu, cuda, cuda:N or mps", default=None, cli_value="auto"),
    Setting("seed", "random seed of the validation split and of training", default="0"),
)

#: The TrainConfig fields no front-end offers: the generalized-mean exponent of ``gm_bce``, the mask
#: threshold in training (hard targets, validation), and bf16 autocast on CUDA.
INTERNAL: tuple[str, ...] = ("gm_r", "threshold", "amp")
