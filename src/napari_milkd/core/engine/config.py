"""Configuration, event and result dataclasses of the training engine.

Owns only plain data: frozen dataclasses that are small and JSON-serialisable with
:func:`dataclasses.asdict`. May import the standard library only (no numpy, no torch), so front-ends
can build configs and read events without loading torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

Backbone = Literal["efficientnet_lite0", "tiny", "vgg16"]
Stage = Literal["teacher", "student", "full"]

#: Backbone names :func:`napari_milkd.core.engine.models.build_model` accepts, the default first (the order
#: the widget lists them in).
BACKBONES: tuple[str, ...] = ("efficientnet_lite0", "tiny", "vgg16")
#: MIL net names it accepts (``TrainConfig.net``), the default first.
NETS: tuple[str, ...] = ("dws_mil", "sa_mil")
#: The allowed values of the enumerated text settings of :class:`TrainConfig` (field → choices); checked
#: by ``presets.schedule``, by the trainer (``select_on``) and when a checkpoint's config is read.
SETTING_CHOICES: dict[str, tuple[str, ...]] = {
    "teacher_loss": ("dice", "gm_bce"),
    "supervision": ("weak", "full"),
    "select_on": ("weak", "agreement", "masks"),
    "student_init": ("weights", "teacher"),
    "ce_target": ("hard", "soft"),
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (teacher, student, or fully supervised net).

    Defaults differ from the paper where its schedule (31 + 469 epochs at lr 5e-5) is impractical:
    ``lr=3e-4`` lets an ImageNet-initialised encoder converge in tens of epochs; pass ``lr=5e-5`` for the
    paper's setting. ``weights`` is ``"default"`` (ImageNet where published, random for ``tiny``),
    ``"imagenet"``, ``"random"``, or a path to a local weights file.
    """

    backbone: str = "efficientnet_lite0"
    #: The MIL segmentation net (teacher and student alike, so their roles can reverse): ``"dws_mil"``
    #: (deeply supervised side outputs, the paper's) or ``"sa_mil"`` (the same with self-attention on the
    #: deepest features, after SA-MIL). Checkpoints made before it existed are ``"dws_mil"``.
    net: str = "dws_mil"
    weights: str = "default"
    size: int = 256
    batch_size: int = 16
    teacher_epochs: int = 30
    student_epochs: int = 60
    #: Role reversal every ``switch_every`` student epochs from epoch ``switch_from`` (0 disables it).
    switch_every: int = 30
    #: First epoch at which a role reversal may happen; ``0`` means ``switch_every``.
    switch_from: int = 0
    lr: float = 3e-4
    weight_decay: float = 5e-5
    fusion_weights: tuple[float, float, float] = (0.3, 0.3, 0.4)
    #: Teacher loss: ``"dice"`` (the paper's per-image Dice) or ``"gm_bce"`` (generalized-mean-pooled BCE).
    teacher_loss: str = "dice"
    gm_r: float = 4.0
    #: Weight of the OEEM cross-entropy term relative to the Dice term in the student loss.
    ce_weight: float = 1.0
    #: Target of that cross-entropy: ``"hard"`` (the teacher's map thresholded at ``threshold``, the
    #: paper's) or ``"soft"`` (the teacher's probability itself).
    ce_target: str = "hard"
    #: The student's starting weights: ``"weights"`` (the encoder weights of ``weights``, ImageNet by
    #: default, as in the paper) or ``"teacher"`` (a copy of the teacher it is distilled from).
    student_init: str = "weights"
    threshold: float = 0.5
    #: ``"weak"``: MIL teacher + IFKD student from bag labels; ``"full"``: the same net on pixel masks.
    supervision: str = "weak"
    augment: bool = True
    #: H&E stain jitter when augmenting: each stain's optical density scaled by U(1 ± σ) and shifted by
    #: U(± σ) (``datasets.stain_jitter``); 0 (the default) keeps flips and rotations only.
    stain_jitter: float = 0.0
    seed: int = 0
    device: str = "auto"
    #: bf16 autocast on CUDA (ignored elsewhere).
    amp: bool = True
    val_fraction: float = 0.2
    #: Model selection on the validation split (the epoch kept, and the student that becomes the teacher at
    #: a role reversal): ``"agreement"`` (the default; weak labels only: 1 − tumour area called on
    #: validation negatives, averaged with the area called on validation positives for the teacher or the
    #: Dice with the first teacher's mask for the student; hand corrections on validation bags weigh half
    #: when present; see ``train._Validator``), ``"weak"`` (minus the validation loss against bag labels /
    #: the first teacher's pseudo-masks), or ``"masks"`` (F1 against validation ground-truth masks, an
    #: oracle a user does not have). Every available criterion is recorded per epoch in the history
    #: (``"val"``). Agreement is the default because it kept epochs with a higher validation-mask F1 than
    #: weak selection on GlaS (docs/benchmarks.md, "model selection without masks").
    select_on: str = "agreement"

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (tuples become lists)."""
        out = asdict(self)
        out["fusion_weights"] = list(self.fusion_weights)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build a config from :meth:`to_dict` output, ignoring unknown keys (forward compatibility)."""
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        if "fusion_weights" in kwargs:
            kwargs["fusion_weights"] = tuple(float(w) for w in kwargs["fusion_weights"])
        return cls(**kwargs)

    @property
    def first_switch(self) -> int:
        """The first student epoch at which a role reversal happens (``switch_from`` or ``switch_every``)."""
        return self.switch_from if self.switch_from > 0 else self.switch_every


@dataclass(frozen=True)
class BatchProgress:
    """Yielded after every optimisation step. ``batch`` counts from 1 to ``n_batches``."""

    stage: str
    epoch: int
    n_epochs: int
    batch: int
    n_batches: int
    loss: float


@dataclass(frozen=True)
class EpochEnd:
    """Yielded after an epoch, once its checkpoint (if any) is on disk.

    ``val_score`` is higher-is-better (see ``TrainConfig.select_on``); ``checkpoint`` is the file that now
    holds this epoch, or ``None`` when the run writes no checkpoints.
    """

    stage: str
    epoch: int
    n_epochs: int
    train_loss: float
    val_score: float | None
    best_epoch: int
    is_best: bool
    seconds: float
    checkpoint: str | None = None
    extra: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchSizeReduced:
    """Yielded when a step ran out of GPU memory: training continues with ``new`` samples per batch."""

    stage: str
    epoch: int
    old: int
    new: int


@dataclass(frozen=True)
class RoleReversal:
    """Yielded when the best student so far (epoch ``student_epoch``, on validation) becomes the teacher."""

    epoch: int
    student_epoch: int
    val_score: float | None


@dataclass(frozen=True)
class TrainResult:
    """Returned by the training generators (``StopIteration.value``).

    ``checkpoint`` holds the selected model (``model`` key) when the run wrote checkpoints.
    """

    stage: str
    epochs: int
    best_epoch: int
    best_score: float | None
    checkpoint: str | None
    history: list[dict[str, Any]] = field(default_factory=list)
    switches: list[int] = field(default_factory=list)


TrainEvent = BatchProgress | EpochEnd | RoleReversal | BatchSizeReduced
