"""Checkpoint files: atomic writes and safe loads.

Owns the on-disk checkpoint format. May import torch and the standard library.

A checkpoint is a dict of tensors and plain Python values only (so ``torch.load(weights_only=True)``
reads it): ``format`` (:data:`FORMAT`), ``stage``, ``backbone``, ``config`` (dict), ``epoch`` (last
complete epoch), ``complete`` (bool, the run finished), ``model`` (the selected weights, for inference),
``spec`` (the model's input spec, :meth:`~napari_milkd.core.engine.spec.ModelSpec.to_dict`: ``mpp`` =
µm/px of the model's input pixels or ``None``, ``tile``, ``overlap``, ``mean``, ``std``, ``backbone``),
``last_model`` and ``optimizer`` (to resume), ``history`` (list of dicts), ``best_epoch``, ``best_score``,
``switches``, and for the student ``teacher_model`` and ``val_targets``.

Checkpoints written before the spec existed lack ``spec``; they still load, and
:func:`~napari_milkd.core.engine.spec.checkpoint_spec` returns ``None`` for them (a predictor then asks
the user for the µm/px). A ``spec`` that is present is validated on load. So is everything else a
reader relies on (:func:`load_checkpoint`): the stored ``config`` field by field (types and ranges, so a
tampered ``size=10**6`` or ``size="abc"`` is a one-line :class:`CheckpointError`, not a traceback or an
attempt to allocate a terabyte), the weights (tensors only, every value finite: an all-NaN model would
quietly predict nothing), and the types of ``epoch``, ``best_epoch``, ``history``, ``stage`` and ``card``
(the model card, :mod:`napari_milkd.core.engine.card`).

The file is serialised in memory and then written with plain ``write`` calls, so a full disk or a
file-size limit surfaces as an :class:`OSError` with its ``errno`` (ENOSPC, EFBIG) and becomes a one-line
:class:`~napari_milkd.core.errors.WriteError`, never ``torch.save``'s ``RuntimeError``.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from napari_milkd.core.atomic import atomic_path
from napari_milkd.core.engine.config import BACKBONES, SETTING_CHOICES, TrainConfig
from napari_milkd.core.engine.spec import checkpoint_spec
from napari_milkd.core.errors import CheckpointError

FORMAT = "napari-milkd/checkpoint-v1"

#: Largest input side (px) a checkpoint may record: no model of napari-milkd is trained on bigger tiles,
#: and a tampered size must not make a predictor allocate memory for a million-pixel tile.
MAX_SIZE = 4096

#: The tensor dicts a checkpoint may hold; every one must be tensors only, every value finite.
_WEIGHT_KEYS = ("model", "last_model", "teacher_model")

_CHOICES: dict[str, tuple[str, ...]] = {"backbone": BACKBONES, **SETTING_CHOICES}

#: (lowest, highest) allowed per numeric config field (inclusive; None = unbounded).
_RANGES: dict[str, tuple[float | None, float | None]] = {
    "size": (16, MAX_SIZE),
    "batch_size": (1, 1 << 16),
    "teacher_epochs": (0, 1_000_000),
    "student_epochs": (0, 1_000_000),
    "switch_every": (0, 1_000_000),
    "switch_from": (0, 1_000_000),
    "lr": (0, None),
    "weight_decay": (0, None),
    "gm_r": (0, None),
    "ce_weight": (0, None),
    "threshold": (0, 1),
    "val_fraction": (0, 1),
}


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically (hidden temp file in the same folder, fsync, ``os.replace``).

    A failed write raises :class:`~napari_milkd.core.errors.WriteError`; the previous checkpoint is kept.
    """
    path = Path(path)
    data = {"format": FORMAT, **payload}
    buffer = io.BytesIO()
    torch.save(data, buffer)  # in memory: torch's zip writer turns ENOSPC/EFBIG into a RuntimeError
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(buffer.getbuffer())  # a full disk or size limit is an OSError here → WriteError
        fh.flush()
        os.fsync(fh.fileno())
    return path


def _config_value(name: str, value: Any, default: Any) -> Any:
    """``value`` checked against the type of ``default`` and the field's range; ``ValueError`` if bad."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {value!r}")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer, got {value!r:.40}")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {value!r:.40}")
        value = float(value)
    elif isinstance(default, str):
        if not isinstance(value, str) or len(value) > 4096:
            raise ValueError(f"must be a short text, got {value!r:.40}")
    elif isinstance(default, tuple):
        if not isinstance(value, list | tuple) or len(value) != len(default):
            raise ValueError(f"must be {len(default)} numbers, got {value!r:.40}")
        value = tuple(_config_value(name, v, float(d)) for v, d in zip(value, default, strict=True))
    if name in _CHOICES and value not in _CHOICES[name]:
        raise ValueError(f"must be one of {', '.join(_CHOICES[name])}, got {value!r:.40}")
    low, high = _RANGES.get(name, (None, None))
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"must be in [{low}, {'∞' if high is None else high}], got {value!r:.40}")
    return value


def checkpoint_config(state: dict[str, Any], where: object = "checkpoint") -> TrainConfig:
    """The :class:`TrainConfig` a loaded checkpoint records, every field checked (type and range).

    Missing fields take their defaults (older checkpoints), unknown ones are ignored. A bad value raises
    a one-line :class:`CheckpointError` naming ``where`` and the field.
    """
    raw = state.get("config")
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where} lacks a valid 'config'")
    defaults = TrainConfig()
    values: dict[str, Any] = {}
    for f in fields(TrainConfig):
        if f.name not in raw:
            continue
        try:
            values[f.name] = _config_value(f.name, raw[f.name], getattr(defaults, f.name))
        except ValueError as exc:
            raise CheckpointError(f"{where} is damaged or was tampered with: config {f.name} {exc}") from None
    return TrainConfig(**values)


def _check_weights(state: dict[str, Any], where: object) -> None:
    """Every weight dict holds tensors only, and every floating-point value is finite."""
    for key in _WEIGHT_KEYS:
        weights = state.get(key)
        if weights is None and key != "model":
            continue
        if not isinstance(weights, dict) or not weights:
            raise CheckpointError(f"{where} lacks a valid {key!r}")
        for name, tensor in weights.items():
            if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
                raise CheckpointError(f"{where}: {key!r} holds something that is not a named tensor")
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise CheckpointError(
                    f"{where}: the {'model' if key == 'model' else key} weights hold NaN or infinite "
                    f"values ({name}); the checkpoint is broken, train again or use another one"
                )


def load_weights(module: torch.nn.Module, weights: dict[str, torch.Tensor], where: object) -> None:
    """Load ``weights`` into ``module`` (strict), refusing a tensor whose kind differs from the module's.

    ``load_state_dict`` copies with a cast, so integer tensors in place of float weights (a tampered or
    broken file) would load and predict silently wrong maps: a :class:`CheckpointError` instead. A shape
    or name mismatch raises ``RuntimeError`` as ``load_state_dict`` does.
    """
    own = module.state_dict()
    for name, tensor in weights.items():
        mine = own.get(name)
        if (
            mine is not None
            and isinstance(tensor, torch.Tensor)
            and (tensor.is_floating_point() != mine.is_floating_point() or tensor.is_complex())
        ):
            raise CheckpointError(
                f"{where} is damaged or was tampered with: weight {name} is {tensor.dtype}, "
                f"expected {mine.dtype}"
            )
    module.load_state_dict(weights)


def _check_fields(state: dict[str, Any], where: object) -> None:
    """The plain fields a reader relies on have the right types (when present)."""
    kinds: dict[str, type | tuple[type, ...]] = {
        "stage": str,
        "epoch": int,
        "best_epoch": int,
        "history": list,
        "switches": list,
        "complete": bool,
        "card": dict,
        "best_score": (int, float, type(None)),
    }
    for key, kind in kinds.items():
        if key not in state:
            continue
        value = state[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise CheckpointError(f"{where} is damaged or was tampered with: {key!r} is {value!r:.40}")
        if kind is int and value < 0:
            raise CheckpointError(f"{where} is damaged or was tampered with: {key!r} is {value}")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a napari-milkd checkpoint with ``weights_only=True``; :class:`CheckpointError` if not one.

    Also refuses a checkpoint whose config, spec, weights (non-finite values) or bookkeeping fields are
    malformed: see the module docstring.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: corrupt or not a napari-milkd file") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a napari-milkd checkpoint")
    for key, kind in (("model", dict), ("backbone", str), ("config", dict)):
        if not isinstance(data.get(key), kind):
            raise CheckpointError(f"checkpoint {path} lacks a valid {key!r}")
    config = checkpoint_config(data, path)
    if "backbone" in data["config"] and data["backbone"] != config.backbone:
        raise CheckpointError(f"{path}: its backbone {data['backbone']!r:.40} differs from its config's")
    _check_fields(data, path)
    _check_weights(data, path)
    try:
        checkpoint_spec(data)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return data


def clone_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A deep copy of a state dict on the CPU: no tensor shares storage with the source."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
