"""The model's input spec: how a trained model must be fed, carried inside its checkpoint.

Owns :class:`ModelSpec` (TIAToolbox's ``ModelIOConfig`` in spirit): the resolution, tile size, tile
overlap, channel normalisation and backbone a model was trained with, its JSON form (the checkpoint's
``"spec"`` key) and the validation of that form. Every trainer writes it; every predictor reads it and
never guesses (``docs/cli.md``, "Which µm/px a model runs at").

Convention: ``mpp`` is the µm/px of the model's *input pixels*, i.e. of the tiles it was trained on
(``None`` when nobody knows, e.g. an image folder trained without ``--image-mpp``). It is never the
slide's level-0 µm/px.

Plain data only: may import the standard library, :mod:`napari_milkd.core.errors` and the engine's
torch-free :mod:`~napari_milkd.core.engine.config`, so front-ends can use it without loading torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from napari_milkd.core.engine.config import TrainConfig
from napari_milkd.core.errors import CheckpointError, InputError

#: The channel normalisation every backbone applies inside the model today, on [0, 1] RGB input
#: (ImageNet statistics; the same values as ``models.dws_mil.IMAGENET_MEAN``/``IMAGENET_STD``, which a test
#: keeps in step with these).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Default tile overlap for whole-slide prediction, as a fraction of the tile side (32 px for 256 px).
OVERLAP_FRACTION = 1 / 8


def default_overlap(tile: int) -> int:
    """The default whole-slide tile overlap in px for ``tile``-px tiles: ``round(tile / 8)``."""
    return round(tile * OVERLAP_FRACTION)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _integer(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{what} must be an integer, got {value!r}")
    return value


def _triple(value: Any, what: str, positive: bool) -> tuple[float, float, float]:
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise InputError(f"{what} must be 3 numbers (R, G, B), got {value!r}")
    out = tuple(_number(v, what) for v in value)
    if positive and min(out) <= 0:
        raise InputError(f"{what} must be positive, got {list(out)}")
    return out  # type: ignore[return-value]


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """How a model must be fed: what a checkpoint's ``"spec"`` records (keyword-only fields).

    ``mpp``: µm/px of the model's input pixels (of its training tiles); ``None`` = unknown, then a predictor
    requires the user to say it. ``tile``: the input side in px (square tiles; ``TrainConfig.size``).
    ``overlap``: tile overlap in px for whole-slide prediction; ``None`` gives ``round(tile / 8)``, so an
    instance always holds an ``int``. ``mean``/``std``: the per-channel normalisation the model applies
    (inside its forward, to [0, 1] RGB). ``backbone``: the encoder name.

    Construction validates every field and raises :class:`~napari_milkd.core.errors.InputError` on a bad
    value (``from_dict`` turns that into :class:`~napari_milkd.core.errors.CheckpointError`).
    """

    mpp: float | None
    tile: int
    overlap: int | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    backbone: str

    def __post_init__(self) -> None:
        if self.mpp is not None:
            mpp = _number(self.mpp, "mpp")
            if mpp <= 0:
                raise InputError(f"mpp (µm/px) must be positive, got {self.mpp!r}")
            object.__setattr__(self, "mpp", mpp)
        tile = _integer(self.tile, "tile")
        if tile < 1:
            raise InputError(f"tile must be ≥ 1 px, got {tile}")
        overlap = default_overlap(tile) if self.overlap is None else _integer(self.overlap, "overlap")
        if not 0 <= overlap < tile:
            raise InputError(f"overlap must be in [0, tile) = [0, {tile}) px, got {overlap}")
        object.__setattr__(self, "overlap", overlap)
        object.__setattr__(self, "mean", _triple(self.mean, "mean", positive=False))
        object.__setattr__(self, "std", _triple(self.std, "std", positive=True))
        if not isinstance(self.backbone, str) or not self.backbone:
            raise InputError(f"backbone must be a non-empty name, got {self.backbone!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (floats, ints, lists, a string; ``mpp`` may be ``None``).

        Only plain Python values, so a checkpoint holding it still loads with
        ``torch.load(weights_only=True)``.
        """
        return {
            "mpp": self.mpp,
            "tile": self.tile,
            "overlap": self.overlap,
            "mean": list(self.mean),
            "std": list(self.std),
            "backbone": self.backbone,
        }

    @classmethod
    def from_dict(cls, data: Any) -> ModelSpec:
        """Read :meth:`to_dict` output; raise :class:`CheckpointError` (one line) on malformed data.

        ``mpp`` (may be ``null``), ``tile``, ``mean``, ``std`` and ``backbone`` are required; ``overlap``
        defaults to ``round(tile / 8)``; unknown keys are ignored (forward compatibility).
        """
        if not isinstance(data, dict):
            raise CheckpointError(f"malformed model spec: expected a mapping, got {type(data).__name__}")
        missing = [k for k in ("mpp", "tile", "mean", "std", "backbone") if k not in data]
        if missing:
            raise CheckpointError(f"malformed model spec: missing {', '.join(missing)}")
        try:
            return cls(
                mpp=data["mpp"],
                tile=data["tile"],
                overlap=data.get("overlap"),
                mean=data["mean"],
                std=data["std"],
                backbone=data["backbone"],
            )
        except InputError as exc:
            raise CheckpointError(f"malformed model spec: {exc}") from None

    @classmethod
    def for_config(cls, config: TrainConfig, mpp: float | None, overlap: int | None = None) -> ModelSpec:
        """The spec of a model trained with ``config`` on tiles at ``mpp`` µm/px (``None``: unknown).

        ``tile`` is ``config.size``, ``backbone`` is ``config.backbone``, the normalisation is ImageNet's
        (what every backbone applies), ``overlap`` defaults to ``round(tile / 8)``. Bad values raise
        :class:`~napari_milkd.core.errors.InputError`.
        """
        return cls(mpp=mpp, tile=int(config.size), overlap=overlap, backbone=config.backbone)


def checkpoint_spec(state: dict[str, Any]) -> ModelSpec | None:
    """The :class:`ModelSpec` a loaded checkpoint records, or ``None`` for one without ``"spec"`` (legacy).

    Raises :class:`CheckpointError` when the spec is malformed or contradicts the checkpoint (its backbone
    or its config's ``size``).
    """
    raw = state.get("spec")
    if raw is None:
        return None
    spec = ModelSpec.from_dict(raw)
    backbone = state.get("backbone")
    if isinstance(backbone, str) and backbone != spec.backbone:
        raise CheckpointError(f"model spec says backbone {spec.backbone} but the checkpoint holds {backbone}")
    config = state.get("config")
    size = config.get("size") if isinstance(config, dict) else None
    if isinstance(size, int) and size != spec.tile:
        raise CheckpointError(f"model spec says {spec.tile}-px tiles but the model was trained at {size} px")
    return spec
