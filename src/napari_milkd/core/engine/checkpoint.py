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
the user for the µm/px). A ``spec`` that is present is validated on load.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from napari_milkd.core.atomic import atomic_path
from napari_milkd.core.engine.spec import checkpoint_spec
from napari_milkd.core.errors import CheckpointError

FORMAT = "napari-milkd/checkpoint-v1"


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically (hidden temp file in the same folder, fsync, ``os.replace``).

    A failed write raises :class:`~napari_milkd.core.errors.WriteError`; the previous checkpoint is kept.
    """
    path = Path(path)
    data = {"format": FORMAT, **payload}
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a napari-milkd checkpoint with ``weights_only=True``; :class:`CheckpointError` if not one."""
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
    try:
        checkpoint_spec(data)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return data


def clone_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A deep copy of a state dict on the CPU: no tensor shares storage with the source."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
