"""Training: the MIL teacher, the IFKD student with role reversal, and the fully supervised net.

Owns the training loops, model selection on the validation split, role reversal and checkpointing.
May import torch, numpy and the other core modules; never napari or Qt.

:func:`train_teacher` and :func:`distill_student` are **generators**: they yield a
:class:`~napari_milkd.core.engine.config.BatchProgress` after every step, an
:class:`~napari_milkd.core.engine.config.EpochEnd` after every epoch (its checkpoint already on disk) and a
:class:`~napari_milkd.core.engine.config.RoleReversal` when the teacher is replaced, and ``return`` a
:class:`~napari_milkd.core.engine.config.TrainResult` (``StopIteration.value``). A consumer may stop at any
yield and never resume: nothing is held open across a yield, and ``complete`` is written only in the last
checkpoint. Model selection and role reversal see only the validation bags passed in; test data never
enters these functions. Every checkpoint they write records the model's input spec
(:class:`~napari_milkd.core.engine.spec.ModelSpec`, key ``"spec"``), so predictors never guess how to feed
the model, and its model card (:mod:`~napari_milkd.core.engine.card`, key ``"card"``): the caller's
provenance (``card=``) plus the stage, schedule, spec, bag counts, dates, epochs and validation figures.
:func:`load_model` refuses a checkpoint whose config, spec or weights are malformed or non-finite
(:func:`~napari_milkd.core.engine.checkpoint.load_checkpoint`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_milkd import __version__
from napari_milkd.core.engine import losses
from napari_milkd.core.engine.card import CARD_VERSION, SCHEDULE_FIELDS, now_iso, plain
from napari_milkd.core.engine.checkpoint import (
    checkpoint_config,
    clone_state,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from napari_milkd.core.engine.config import (
    SETTING_CHOICES,
    BatchProgress,
    BatchSizeReduced,
    EpochEnd,
    RoleReversal,
    TrainConfig,
    TrainEvent,
    TrainResult,
)
from napari_milkd.core.engine.datasets import BagSet, augment, stain_jitter
from napari_milkd.core.engine.models import DWSMILNet, SegOutput, build_model
from napari_milkd.core.engine.spec import ModelSpec, checkpoint_spec
from napari_milkd.core.errors import CheckpointError, InputError, TrainingError
from napari_milkd.core.runtime import resolve_device

_STAGE_SEED = {"teacher": 11, "student": 23, "full": 37}

#: Smallest batch size an out-of-memory retry goes down to before training stops.
MIN_BATCH_SIZE = 1

_log = logging.getLogger(__name__)


def new_model(config: TrainConfig, seed_offset: int = 0) -> DWSMILNet:
    """Build the configured net with a seeded initialisation (does not disturb the global RNG)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed + seed_offset)
        return build_model(config.backbone, config.weights, config.fusion_weights, config.net)


class _Runtime:
    """Device-dependent settings: autocast, channels_last, where the data lives."""

    def __init__(self, config: TrainConfig) -> None:
        self.device = resolve_device(config.device)
        self.cuda = self.device.type == "cuda"
        self.amp = self.cuda and config.amp
        #: NHWC memory on CUDA and CPU: a training step of efficientnet_lite0 is 1.7–2.3× the NCHW one on
        #: 2 CPU cores (docs/benchmarks.md, "Training throughput").
        self.channels_last = self.cuda or self.device.type == "cpu"
        #: Batch size for evaluation passes; lowered when training runs out of GPU memory.
        self.batch_size = config.batch_size
        self.stain_jitter = config.stain_jitter
        if self.cuda:
            torch.backends.cudnn.benchmark = True

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def optimizer(self, model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
        kwargs: dict[str, Any] = {"lr": config.lr, "weight_decay": config.weight_decay}
        if self.cuda:
            kwargs["fused"] = True
        return torch.optim.Adam(model.parameters(), **kwargs)

    def stage_data(self, arr: np.ndarray | None) -> torch.Tensor | None:
        """(N, H, W[, C]) uint8 → (N, C, H, W) uint8 tensor, on the GPU when it fits comfortably."""
        if arr is None:
            return None
        t = torch.from_numpy(np.ascontiguousarray(arr))
        t = t.permute(0, 3, 1, 2) if t.ndim == 4 else t.unsqueeze(1)
        t = t.contiguous()
        if self.cuda:
            free, _ = torch.cuda.mem_get_info(self.device)
            if t.numel() < 0.25 * free:
                return t.to(self.device)
            return t.pin_memory()
        return t

    def batch(
        self,
        images: torch.Tensor,
        extra: torch.Tensor | None,
        idx: torch.Tensor,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Gather, augment (when ``generator``: flips, rotations, and stain jitter when the config asks),
        convert to float [0, 1] on the device."""
        x = images[idx.to(images.device)].to(self.device, non_blocking=True)
        e = None if extra is None else extra[idx.to(extra.device)].to(self.device, non_blocking=True)
        if generator is not None:
            both = x if e is None else torch.cat([x, e], dim=1)
            both = augment(both, generator)
            x, e = (both, None) if e is None else (both[:, :3], both[:, 3:])
        x = x.float().div_(255)
        if generator is not None and self.stain_jitter > 0:
            x = stain_jitter(x, self.stain_jitter, generator)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, e

    def release(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()


def _epoch_generator(config: TrainConfig, stage: str, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(config.seed * 1_000_003 + _STAGE_SEED[stage] * 10_007 + epoch)


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    perm = torch.randperm(n, generator=generator)
    return [perm[i : i + batch_size] for i in range(0, n, batch_size)]


@torch.no_grad()
def _forward_all(
    model: torch.nn.Module, images: torch.Tensor, rt: _Runtime, batch_size: int
) -> Iterator[tuple[torch.Tensor, SegOutput]]:
    """Eval-mode forward over all bags, without augmentation: yields (index, output) per batch."""
    model.eval()
    for start in range(0, images.shape[0], batch_size):
        idx = torch.arange(start, min(start + batch_size, images.shape[0]))
        x, _ = rt.batch(images, None, idx, None)
        with rt.autocast():
            out = model(x)
        yield idx, out


def predict_probs(
    model: torch.nn.Module, images: np.ndarray, batch_size: int = 16, device: str | torch.device = "auto"
) -> np.ndarray:
    """Fused probabilities (N, S, S) float32 of ``model`` on images (N, S, S, 3) uint8."""
    rt = _Runtime(TrainConfig(device=str(device)))
    rt.prepare(model)
    data = rt.stage_data(images)
    assert data is not None
    out = np.empty(images.shape[:3], dtype=np.float32)
    for idx, o in _forward_all(model, data, rt, batch_size):
        out[idx.numpy()] = o.fused_prob[:, 0].float().cpu().numpy()
    return out


def _mask_score(prob: torch.Tensor, gt: torch.Tensor, labels: torch.Tensor, threshold: float) -> torch.Tensor:
    """Per-image selection score: tumour F1 on positives, background F1 on negatives (N,)."""
    pred = (prob >= threshold).flatten(1).float()
    gt = gt.flatten(1).float() * labels.view(-1, 1).float()
    pos = labels.view(-1) > 0.5
    return _binary_dice(
        torch.where(pos.view(-1, 1), pred, 1 - pred), torch.where(pos.view(-1, 1), gt, 1 - gt)
    )


#: Model-selection criteria a run can select on (``TrainConfig.select_on``); every one available is
#: recorded for every epoch in the history (``"val"``), whichever drives the selection.
SELECT_ON: tuple[str, ...] = SETTING_CHOICES["select_on"]

#: Weight of the hand-corrected validation pixels in the ``"agreement"`` score when there are any.
CORRECTION_WEIGHT = 0.5


def _called_fraction(pred: torch.Tensor) -> torch.Tensor:
    """Fraction of pixels called tumour per image (N,) of a boolean/0-1 (N, ...) mask."""
    return pred.flatten(1).float().mean(1)


def _binary_dice(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image Dice (N,) of two 0/1 masks; 1 where both are empty."""
    p, t = pred.flatten(1).float(), target.flatten(1).float()
    denom = p.sum(1) + t.sum(1)
    return torch.where(denom > 0, 2 * (p * t).sum(1) / denom.clamp_min(1), torch.ones_like(denom))


class _Validator:
    """Scores a model on the validation bags (higher is better); never sees any other data.

    :meth:`scores` computes, from one forward pass, every criterion the validation bags allow:

    * ``"weak"``: minus the MIL loss against the bag labels (teacher, fully supervised net), or minus the
      distillation loss against the first teacher's fused maps (student; hand corrections override them);
    * ``"agreement"``: weak information only, higher is better, in [0, 1] (formula below);
    * ``"masks"``: the mean per-image F1 on the validation masks (tumour F1 on positive bags, background F1
      on negative bags), only when the validation bags carry masks (an oracle a user does not have).

    ``"agreement"`` = ``(1 − CORRECTION_WEIGHT) · W + CORRECTION_WEIGHT · H`` when hand corrections exist on
    the validation bags, else ``W``, where ``W`` is the mean of the terms the split has:

    * ``N = 1 − FP``, ``FP`` the mean fraction of pixels of a validation **negative** bag the fused mask
      calls tumour (``prob ≥ threshold``): a negative bag holds no tumour, so every called pixel is wrong;
    * ``P`` on validation **positive** bags: for the student, the mean Dice between its fused mask and the
      first teacher's fused mask (both at ``threshold``; the maps the student is distilled from, frozen
      before its first epoch, so role reversal does not move the reference); for the teacher (and the fully
      supervised net), the mean fraction of the bag called tumour. A bag label says only "tumour is here";
      the teacher cannot be judged on where without masks, but a teacher that stops calling tumour in
      positive bags is failing, and ``P`` with ``N`` is the class-balanced pixel accuracy against the bag
      labels at the operating threshold (what the user sees), where the MIL loss is a soft Dice of the
      probabilities of every output;
    * ``H``: class-balanced pixel accuracy (mean of tumour recall and background recall, over the classes
      corrected) on the pixels of the validation bags that carry a hand correction (``hard_labels`` other
      than ``IGNORE``).
    """

    def __init__(self, val: BagSet | None, config: TrainConfig, rt: _Runtime, stage: str) -> None:
        self.config, self.rt, self.stage = config, rt, stage
        self.selected = "masks" if stage == "full" else config.select_on
        self.use_masks = self.selected == "masks"
        self.enabled = val is not None and len(val) > 0
        self.targets: torch.Tensor | None = None  # the first teacher's fused maps (student)
        self.last_scores: dict[str, float] = {}  # every criterion of the last ``score`` call
        if not self.enabled or val is None:
            return
        if self.use_masks and val.masks is None:
            raise InputError("model selection on masks needs ground-truth masks for the validation bags")
        self.images = rt.stage_data(val.images)
        self.labels = torch.as_tensor(val.labels, dtype=torch.float32)
        self.masks = None if val.masks is None else torch.as_tensor(val.masks)
        self.hard = None if val.hard_labels is None else torch.as_tensor(val.hard_labels)
        if self.hard is not None and not bool((self.hard != losses.IGNORE).any()):
            self.hard = None  # nothing corrected: no H term

    def set_targets(self, teacher: torch.nn.Module) -> None:
        """Freeze the first teacher's fused maps on the validation bags as the student's weak reference."""
        if self.enabled:
            self.targets = torch.cat(
                [o.fused_prob.float().cpu() for _, o in _forward_all(teacher, self.images, self.rt, 32)]
            )

    def score(self, model: torch.nn.Module) -> float | None:
        """The selection criterion (``config.select_on``; masks for the fully supervised net).

        Every criterion of this pass is kept in ``last_scores`` (for the epoch's history record).
        """
        self.last_scores = self.scores(model)
        return self.last_scores.get(self.selected)

    def scores(self, model: torch.nn.Module) -> dict[str, float]:
        """Every criterion available on the validation bags, plus the agreement's terms (``agreement_*``).

        Empty without validation bags.
        """
        if not self.enabled:
            return {}
        cfg, thr = self.config, self.config.threshold
        weak_sum, mask_sum, count = 0.0, 0.0, 0
        fp_sum, n_neg, pos_sum, n_pos = 0.0, 0, 0.0, 0
        hit = torch.zeros(2, dtype=torch.float64)  # corrected pixels called right: background, tumour
        seen = torch.zeros(2, dtype=torch.float64)
        weak_ok = self.stage != "student" or self.targets is not None
        for idx, out in _forward_all(model, self.images, self.rt, self.rt.batch_size):
            prob = out.fused_prob.float()
            dev = prob.device
            labels = self.labels[idx].to(dev)
            pos = labels > 0.5
            pred = prob >= thr
            hard = None if self.hard is None else self.hard[idx].unsqueeze(1).to(dev)
            if self.masks is not None:
                gt = self.masks[idx].to(dev)
                mask_sum += float(_mask_score(prob, gt, labels, thr).sum())
            if weak_ok:
                if self.stage == "student":
                    assert self.targets is not None
                    target = self.targets[idx].to(dev)
                    loss = losses.student_loss(
                        out, target, labels, hard, thr, cfg.ce_weight, cfg.ce_target == "soft"
                    )
                else:
                    loss = _teacher_loss(out, labels, cfg)
                weak_sum -= float(loss) * len(idx)
            called = _called_fraction(pred)
            fp_sum += float(called[~pos].sum())
            n_neg += int((~pos).sum())
            if self.stage == "student" and self.targets is not None:
                agree = _binary_dice(pred, self.targets[idx].to(dev) >= thr)
                pos_sum += float(agree[pos].sum())
            else:
                pos_sum += float(called[pos].sum())
            n_pos += int(pos.sum())
            if hard is not None:
                for cls in (0, 1):
                    where = hard == cls
                    seen[cls] += float(where.sum())
                    hit[cls] += float((where & (pred == bool(cls))).sum())
            count += len(idx)
        out_scores: dict[str, float] = {}
        if weak_ok:
            out_scores["weak"] = weak_sum / count
        terms: list[float] = []
        if n_neg:
            out_scores["agreement_neg"] = 1 - fp_sum / n_neg
            terms.append(out_scores["agreement_neg"])
        if n_pos:
            out_scores["agreement_pos"] = pos_sum / n_pos
            terms.append(out_scores["agreement_pos"])
        agreement = sum(terms) / len(terms)
        if bool((seen > 0).any()):
            recalls = [float(hit[c] / seen[c]) for c in (0, 1) if seen[c] > 0]
            corrected = out_scores["agreement_corrected"] = sum(recalls) / len(recalls)
            agreement = (1 - CORRECTION_WEIGHT) * agreement + CORRECTION_WEIGHT * corrected
        out_scores["agreement"] = agreement
        if self.masks is not None:
            out_scores["masks"] = mask_sum / count
        return out_scores


def _teacher_loss(out: SegOutput, labels: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    if config.teacher_loss == "dice":
        return losses.mil_dice_loss(out, labels)
    if config.teacher_loss == "gm_bce":
        return losses.mil_gm_bce_loss(out, labels, config.gm_r)
    raise InputError(f"unknown teacher loss {config.teacher_loss!r}; choose dice or gm_bce")


def _check_config(config: TrainConfig, train: BagSet) -> None:
    if config.supervision not in ("weak", "full"):
        raise InputError(f"supervision must be 'weak' or 'full', got {config.supervision!r}")
    if config.select_on not in SELECT_ON:
        raise InputError(
            f"select_on must be one of {', '.join(SELECT_ON)} (model selection criterion), "
            f"got {config.select_on!r}"
        )
    if config.batch_size < 1 or config.size < 16:
        raise InputError("batch size must be ≥ 1 and size ≥ 16")
    if len(train) == 0:
        raise InputError("no training bags")
    if train.images.shape[1] != config.size or train.images.shape[2] != config.size:
        raise InputError(f"bags are {train.images.shape[1:3]} but the config says size {config.size}")
    if config.supervision == "weak" and (train.n_pos == 0 or train.n_neg == 0):
        raise InputError("weak supervision needs at least one positive and one negative bag")
    if config.supervision == "full" and train.masks is None:
        raise InputError("full supervision needs ground-truth masks (--masks)")


def _resume_state(
    checkpoint: Path | None, resume: bool, config: TrainConfig, stage: str
) -> dict[str, Any] | None:
    if checkpoint is None or not resume or not checkpoint.exists():
        return None
    state = load_checkpoint(checkpoint)
    saved = checkpoint_config(state, checkpoint)
    if state.get("stage") != stage:
        raise CheckpointError(f"{checkpoint} is a {state.get('stage')} checkpoint, not a {stage} one")
    for key in ("backbone", "size", "supervision", "fusion_weights"):
        if getattr(saved, key) != getattr(config, key):
            raise CheckpointError(f"cannot resume {checkpoint}: {key} differs from the checkpoint's")
    return state


def _same_mpp(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6)


def _run_spec(
    spec: ModelSpec | None,
    config: TrainConfig,
    state: dict[str, Any] | None,
    inherited: ModelSpec | None = None,
    inherited_from: str = "",
) -> ModelSpec:
    """The spec a run writes: ``spec``, else ``inherited`` (the teacher's), else from ``config``.

    A resumed run keeps its checkpoint's µm/px: a spec without one takes it, a different one is refused.
    """
    if spec is None:
        spec = inherited if inherited is not None else ModelSpec.for_config(config, mpp=None)
    elif inherited is not None and inherited.mpp is not None:
        if spec.mpp is None:
            spec = replace(spec, mpp=inherited.mpp)
        elif not _same_mpp(spec.mpp, inherited.mpp):
            raise InputError(
                f"{inherited_from} was trained at {inherited.mpp:g} µm/px but the student's spec says "
                f"{spec.mpp:g} µm/px; the student must learn from tiles at its teacher's µm/px"
            )
    if spec.tile != config.size or spec.backbone != config.backbone:
        raise InputError(
            f"model spec ({spec.backbone}, {spec.tile} px) does not match the config "
            f"({config.backbone}, {config.size} px)"
        )
    saved = None if state is None else checkpoint_spec(state)
    if saved is not None and saved.mpp is not None:
        if spec.mpp is None:
            spec = replace(spec, mpp=saved.mpp)
        elif not _same_mpp(spec.mpp, saved.mpp):
            raise CheckpointError(
                f"cannot resume: the checkpoint was trained at {saved.mpp:g} µm/px, not {spec.mpp:g} µm/px"
            )
    return spec


#: The provenance keys a caller's ``card`` gives (the trainer writes the rest).
_PROVENANCE = ("trained_on", "classes", "preset")


def _criterion(config: TrainConfig, stage: str, val: BagSet | None) -> str:
    if val is None or len(val) == 0:
        return "none: no validation split, the last epoch is kept"
    if stage == "full" or config.select_on == "masks":
        return "F1 on the validation masks"
    if config.select_on == "agreement":
        if stage == "student":
            return (
                "agreement: mean of (1 − tumour area called on validation negatives) and the Dice with the "
                "first teacher's mask on validation positives; hand-corrected pixels weigh half when present"
            )
        return (
            "agreement: mean of (1 − tumour area called on validation negatives) and the tumour area called "
            "on validation positives; hand-corrected pixels weigh half when present"
        )
    if stage == "student":
        return "minus the distillation loss against the first teacher on the validation bags"
    return "minus the MIL loss on the validation bags"


def _card_base(
    card: dict[str, Any] | None,
    *,
    stage: str,
    config: TrainConfig,
    spec: ModelSpec,
    train: BagSet,
    val: BagSet | None,
    state: dict[str, Any] | None,
    teacher_card: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The card fields fixed for a whole run: the caller's provenance and the trainer's own facts.

    Without ``card``, a resumed run keeps its checkpoint's provenance and a student takes its teacher's.
    """
    saved = state.get("card") if state is not None else None
    saved = saved if isinstance(saved, dict) else {}
    if card is not None:
        provenance = plain(card)
        if not isinstance(provenance, dict):
            raise InputError("a model card must be a mapping of provenance fields")
    elif saved:
        provenance = {k: saved[k] for k in _PROVENANCE if k in saved}
    elif teacher_card:
        provenance = {k: teacher_card[k] for k in _PROVENANCE if k in teacher_card}
    else:
        provenance = {}
    provenance.setdefault("trained_on", {"kind": "unknown"})
    n_val = 0 if val is None else len(val)
    base: dict[str, Any] = {
        **provenance,
        "card_version": CARD_VERSION,
        "stage": stage,
        "software": f"napari-milkd {__version__}",
        "schedule": {k: v for k, v in config.to_dict().items() if k in SCHEDULE_FIELDS},
        "spec": spec.to_dict(),
        "bags": {
            "train": len(train),
            "train_positive": train.n_pos,
            "validation": n_val,
            "validation_positive": 0 if val is None else val.n_pos,
        },
        "created": saved.get("created") if isinstance(saved.get("created"), str) else now_iso(),
        "validation": {"criterion": _criterion(config, stage, val)},
    }
    if teacher_card:
        base["teacher"] = {
            k: teacher_card[k] for k in ("stage", "created", "epochs", "validation") if k in teacher_card
        }
    elif isinstance(saved.get("teacher"), dict):
        base["teacher"] = saved["teacher"]
    return base


def _result(stage: str, state: dict[str, Any], checkpoint: Path | None) -> TrainResult:
    return TrainResult(
        stage=stage,
        epochs=int(state["epoch"]),
        best_epoch=int(state["best_epoch"]),
        best_score=state["best_score"],
        checkpoint=None if checkpoint is None else str(checkpoint),
        history=list(state["history"]),
        switches=list(state.get("switches", [])),
    )


def _kept(checkpoint: Path | None, epoch: int) -> str:
    """What survives a stop during ``epoch``: the checkpoint of the previous epoch, if one was written."""
    if checkpoint is not None and epoch > 1 and checkpoint.exists():
        return f"{checkpoint.name} keeps epoch {epoch - 1}"
    return "no epoch was completed"


def _run_epochs(
    *,
    stage: str,
    model: torch.nn.Module,
    train: BagSet,
    config: TrainConfig,
    rt: _Runtime,
    n_epochs: int,
    step_loss: Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], torch.Tensor],
    validator: _Validator,
    checkpoint: Path | None,
    extra_array: np.ndarray | None,
    state: dict[str, Any] | None,
    spec: ModelSpec,
    card: dict[str, Any],
    on_epoch_end: Callable[[int, dict[str, Any]], RoleReversal | None] | None = None,
    extra_payload: Callable[[], dict[str, Any]] | None = None,
) -> Generator[TrainEvent, None, dict[str, Any]]:
    """The shared epoch loop; returns the final checkpoint payload (without tensors copied twice)."""
    opt = rt.optimizer(model, config)
    images = rt.stage_data(train.images)
    extra = rt.stage_data(extra_array)
    labels = torch.as_tensor(train.labels, dtype=torch.float32)
    assert images is not None
    history: list[dict[str, Any]] = []
    best_state: dict[str, torch.Tensor] | None = None
    best_score: float | None = None
    best_epoch = 0
    switches: list[int] = []
    start = 1
    if state is not None:
        try:
            load_weights(model, state["last_model"], checkpoint)
            opt.load_state_dict(state["optimizer"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"cannot resume {checkpoint}: its saved training state does not fit this model "
                f"({type(exc).__name__})"
            ) from exc
        history = list(state["history"])
        best_state = clone_state(state["model"])
        best_score, best_epoch = state["best_score"], int(state["best_epoch"])
        switches = list(state.get("switches", []))
        start = int(state["epoch"]) + 1
    payload: dict[str, Any] = dict(state) if state is not None else {}
    batch_size = config.batch_size
    for epoch in range(start, n_epochs + 1):
        t0 = time.perf_counter()
        gen = _epoch_generator(config, stage, epoch)
        model.train()
        loss_sum = torch.zeros((), device=rt.device)
        pending = _batches(len(train), batch_size, gen)
        b = 0
        while pending:
            idx = pending.pop(0)
            try:
                x, e = rt.batch(images, extra, idx, gen if config.augment else None)
                loss = step_loss(x, e, labels[idx].to(rt.device))
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    raise TrainingError(
                        f"{stage} loss became {loss_value} at epoch {epoch}, batch {b + 1}: training "
                        f"stopped; {_kept(checkpoint, epoch)} (try a lower learning rate)"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            except torch.cuda.OutOfMemoryError:
                loss = x = e = None  # type: ignore[assignment]
                opt.zero_grad(set_to_none=True)
                rt.release()
                if len(idx) <= MIN_BATCH_SIZE:
                    raise TrainingError(
                        f"out of GPU memory at batch size {len(idx)}: training stopped; "
                        f"{_kept(checkpoint, epoch)} (use a smaller size or backbone, or the CPU)"
                    ) from None
                old_size, batch_size = batch_size, max(MIN_BATCH_SIZE, len(idx) // 2)
                rest = torch.cat([idx, *pending])
                pending = [rest[i : i + batch_size] for i in range(0, len(rest), batch_size)]
                rt.batch_size = min(rt.batch_size, batch_size)
                _log.warning(
                    "%s: out of GPU memory at batch size %d, continuing with %d", stage, len(idx), batch_size
                )
                yield BatchSizeReduced(stage, epoch, old_size, batch_size)
                continue
            b += 1
            loss_sum += loss.detach() * len(idx)
            yield BatchProgress(stage, epoch, n_epochs, b, b + len(pending), loss_value)
        train_loss = float(loss_sum) / len(train)
        score = validator.score(model)
        scores = validator.last_scores
        is_best = best_state is None or (score is not None and best_score is not None and score > best_score)
        if score is None:  # no validation split: the last epoch is the selected one
            is_best = True
        if is_best:
            best_state, best_score, best_epoch = clone_state(model.state_dict()), score, epoch
        record: dict[str, Any] = {
            "stage": stage,
            "epoch": epoch,
            "train_loss": train_loss,
            "val_score": score,
            "best_epoch": best_epoch,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        if scores:
            record["val"] = dict(scores)
        reversal = None
        if on_epoch_end is not None:
            reversal = on_epoch_end(epoch, {"best_state": best_state, "best_epoch": best_epoch})
        if reversal is not None:
            switches.append(epoch)
            record["switched_to_epoch"] = reversal.student_epoch
        history.append(record)
        assert best_state is not None
        payload = {
            "stage": stage,
            "backbone": config.backbone,
            "config": config.to_dict(),
            "spec": spec.to_dict(),
            "epoch": epoch,
            "complete": False,
            "model": best_state,
            "last_model": clone_state(model.state_dict()),
            "optimizer": opt.state_dict(),
            "history": history,
            "best_epoch": best_epoch,
            "best_score": best_score,
            "switches": switches,
            "card": {
                **card,
                "updated": now_iso(),
                "epochs": {"done": epoch, "planned": n_epochs},
                "validation": {
                    **card["validation"],
                    "best_epoch": best_epoch,
                    "best_score": best_score,
                    "last_score": score,
                },
            },
            **(extra_payload() if extra_payload else {}),
        }
        if checkpoint is not None:
            save_checkpoint(checkpoint, payload)
        yield EpochEnd(
            stage=stage,
            epoch=epoch,
            n_epochs=n_epochs,
            train_loss=train_loss,
            val_score=score,
            best_epoch=best_epoch,
            is_best=is_best,
            seconds=record["seconds"],
            checkpoint=None if checkpoint is None else str(checkpoint),
            extra=dict(scores),
        )
        if reversal is not None:
            yield reversal
    if not payload:
        raise CheckpointError("nothing to train: the checkpoint is past the requested number of epochs")
    payload["complete"] = True
    if checkpoint is not None:
        save_checkpoint(checkpoint, payload)  # the completion flag is written last
    return payload


def train_teacher(
    train: BagSet,
    val: BagSet | None,
    config: TrainConfig,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    *,
    spec: ModelSpec | None = None,
    card: dict[str, Any] | None = None,
) -> Generator[TrainEvent, None, TrainResult]:
    """Train the MIL teacher on bag labels (or, with ``supervision="full"``, the net on pixel masks).

    ``train``/``val`` are bags at ``config.size``; ``val`` (may be None) is the only data used for model
    selection. With ``checkpoint``, every epoch is saved there atomically before its event is yielded;
    ``resume=True`` continues from it (a complete checkpoint is returned without training). ``spec`` is
    the model's input spec written into every checkpoint (``None``: ``ModelSpec.for_config(config,
    mpp=None)``, µm/px unknown; a resumed run keeps its checkpoint's µm/px). Its ``tile`` and ``backbone``
    must match ``config``. ``card`` is the provenance for the model card (plain JSON data: ``trained_on``,
    ``classes``, ``preset``, see :func:`~napari_milkd.core.engine.card.slide_provenance` and
    :func:`~napari_milkd.core.engine.card.folder_provenance`); the trainer adds dates, epochs,
    schedule, spec, bag counts and validation figures. ``None``: a resumed run keeps its card's.
    """
    _check_config(config, train)
    stage = "full" if config.supervision == "full" else "teacher"
    ckpt = None if checkpoint is None else Path(checkpoint)
    state = _resume_state(ckpt, resume, config, stage)
    run_spec = _run_spec(spec, config, state)
    if state is not None and state.get("complete"):
        return _result(stage, state, ckpt)
    run_card = _card_base(card, stage=stage, config=config, spec=run_spec, train=train, val=val, state=state)
    rt = _Runtime(config)
    model = rt.prepare(new_model(config, _STAGE_SEED[stage]))
    try:
        validator = _Validator(val, config, rt, stage)
        if stage == "full":

            def step(x: torch.Tensor, e: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
                assert e is not None
                with rt.autocast():
                    out = model(x)
                return losses.supervised_loss(out, e, config.ce_weight)

            extra = train.masks
        else:

            def step(x: torch.Tensor, e: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
                with rt.autocast():
                    out = model(x)
                return _teacher_loss(out, y, config)

            extra = None
        payload = yield from _run_epochs(
            stage=stage,
            model=model,
            train=train,
            config=config,
            rt=rt,
            n_epochs=config.teacher_epochs,
            step_loss=step,
            validator=validator,
            checkpoint=ckpt,
            extra_array=extra,
            state=state,
            spec=run_spec,
            card=run_card,
        )
        return _result(stage, payload, ckpt)
    finally:
        rt.release()


def _teacher_weights(
    teacher: str | Path | dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], ModelSpec | None, dict[str, Any] | None]:
    """The teacher's weights and, for a teacher checkpoint, the spec and the model card it records."""
    if isinstance(teacher, dict):
        return clone_state(teacher), None, None
    state = load_checkpoint(teacher)
    card = state.get("card")
    return clone_state(state["model"]), checkpoint_spec(state), card if isinstance(card, dict) else None


def distill_student(
    train: BagSet,
    val: BagSet | None,
    config: TrainConfig,
    teacher: str | Path | dict[str, torch.Tensor],
    checkpoint: str | Path | None = None,
    resume: bool = False,
    *,
    spec: ModelSpec | None = None,
    card: dict[str, Any] | None = None,
) -> Generator[TrainEvent, None, TrainResult]:
    """Distil a student from a frozen teacher (IFKD) with role reversal; generator like :func:`train_teacher`.

    ``teacher`` is the teacher's weights (a state dict or a teacher checkpoint; its ``model``). Human hard
    labels in ``train.hard_labels`` (0/1, 255 = none) override the teacher's targets. Every
    ``config.switch_every`` epochs from ``config.first_switch`` the best student so far *on ``val``*
    (the last one when ``val`` is None) becomes the teacher: its weights are copied (never aliased).

    ``spec`` is the student's input spec, written into every checkpoint. ``None``: a teacher checkpoint's
    spec, else ``ModelSpec.for_config(config, mpp=None)``. A spec without µm/px takes the teacher
    checkpoint's; a different µm/px than the teacher's raises :class:`InputError` (both learn from the same
    tiles). ``card``: provenance for the model card as in :func:`train_teacher`; ``None`` takes a teacher
    checkpoint's (or, resumed, the student checkpoint's). The card also records the teacher's.
    """
    _check_config(config, train)
    if config.supervision != "weak":
        raise InputError("distillation is for weak supervision; a full-supervision run has no student")
    stage = "student"
    ckpt = None if checkpoint is None else Path(checkpoint)
    state = _resume_state(ckpt, resume, config, stage)
    if state is not None and state.get("complete"):
        _run_spec(spec, config, state)  # a conflicting µm/px is refused even when nothing is left to do
        return _result(stage, state, ckpt)
    if state is not None and "teacher_model" not in state:
        raise CheckpointError(f"{ckpt} is a student checkpoint without its teacher's weights")
    teacher_state, teacher_spec, teacher_card = (
        _teacher_weights(teacher) if state is None else (state["teacher_model"], None, None)
    )
    run_spec = _run_spec(spec, config, state, teacher_spec, str(teacher))
    run_card = _card_base(
        card,
        stage=stage,
        config=config,
        spec=run_spec,
        train=train,
        val=val,
        state=state,
        teacher_card=teacher_card,
    )
    rt = _Runtime(config)
    teacher_net = new_model(config, 0)
    try:
        load_weights(teacher_net, teacher_state, teacher)
    except RuntimeError as exc:
        raise CheckpointError(f"the teacher {teacher} does not match a {config.backbone} model") from exc
    rt.prepare(teacher_net).eval()
    teacher_net.requires_grad_(False)
    student = new_model(config, _STAGE_SEED[stage])
    if config.student_init == "teacher":
        student.load_state_dict(teacher_net.state_dict())  # copies the values: no aliasing
    model = rt.prepare(student)
    try:
        validator = _Validator(val, config, rt, stage)
        if state is not None and "val_targets" in state:
            validator.targets = state["val_targets"].float()
        else:
            validator.set_targets(teacher_net)

        def step(x: torch.Tensor, e: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
            with torch.no_grad(), rt.autocast():
                teacher_net.eval()
                q = teacher_net(x).fused_prob.float()
            with rt.autocast():
                out = model(x)
            return losses.student_loss(
                out, q, y, e, config.threshold, config.ce_weight, config.ce_target == "soft"
            )

        def on_epoch_end(epoch: int, info: dict[str, Any]) -> RoleReversal | None:
            if config.switch_every <= 0 or epoch < config.first_switch or epoch >= config.student_epochs:
                return None
            if (epoch - config.first_switch) % config.switch_every:
                return None
            teacher_net.load_state_dict(clone_state(info["best_state"]))
            teacher_net.eval()
            return RoleReversal(epoch=epoch, student_epoch=int(info["best_epoch"]), val_score=None)

        def extra_payload() -> dict[str, Any]:
            out: dict[str, Any] = {"teacher_model": clone_state(teacher_net.state_dict())}
            if validator.targets is not None:
                out["val_targets"] = validator.targets.clone()
            return out

        payload = yield from _run_epochs(
            stage=stage,
            model=model,
            train=train,
            config=config,
            rt=rt,
            n_epochs=config.student_epochs,
            step_loss=step,
            validator=validator,
            checkpoint=ckpt,
            extra_array=train.hard_labels,
            state=state,
            spec=run_spec,
            card=run_card,
            on_epoch_end=on_epoch_end,
            extra_payload=extra_payload,
        )
        return _result(stage, payload, ckpt)
    finally:
        rt.release()


def load_model(checkpoint: str | Path, device: str = "auto") -> tuple[DWSMILNet, TrainConfig]:
    """The selected model of a checkpoint (eval mode, on ``device``) and its config.

    Raises :class:`CheckpointError` when the checkpoint's spec records a channel normalisation other than
    the one this version's model applies (it would be fed wrongly), and when its config, spec or weights
    are malformed or hold NaN/Inf (:func:`~napari_milkd.core.engine.checkpoint.load_checkpoint`).
    """
    state = load_checkpoint(checkpoint)
    config = checkpoint_config(state, checkpoint)
    model = build_model(config.backbone, "random", config.fusion_weights, config.net)
    try:
        load_weights(model, state["model"], checkpoint)
    except RuntimeError as exc:
        what = f"{config.net} model on {config.backbone}"
        raise CheckpointError(f"{checkpoint} does not match a {what}") from exc
    spec = checkpoint_spec(state)
    if spec is not None:
        applied = (model.mean.flatten().tolist(), model.std.flatten().tolist())
        if not all(
            math.isclose(a, b, rel_tol=1e-5)
            for want, have in zip((spec.mean, spec.std), applied, strict=True)
            for a, b in zip(want, have, strict=True)
        ):
            raise CheckpointError(
                f"{checkpoint} was trained with normalisation mean {list(spec.mean)}, std {list(spec.std)}; "
                "this version of napari-milkd applies another"
            )
    model.to(resolve_device(device)).eval()
    return model, config
