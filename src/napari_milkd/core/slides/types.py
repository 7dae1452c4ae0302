"""Frozen value types describing slides: levels, resolution, vendor.

Imports nothing but the standard library. Conventions: sizes are (width, height) only where named so;
array shapes are (rows, cols) = (y, x); ``mpp`` is micrometres per pixel at level 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class LevelInfo:
    """One pyramid level: its size in pixels and its downsample from level 0 (as the reader reports it)."""

    width: int
    height: int
    downsample: float

    def to_dict(self) -> dict[str, Any]:
        """JSON form ``{"width", "height", "downsample"}``."""
        return {"width": self.width, "height": self.height, "downsample": self.downsample}


@dataclass(frozen=True)
class SlideInfo:
    """What we know about a slide.

    ``mpp_x``/``mpp_y`` are µm per level-0 pixel, ``None`` when the file does not say (the caller then
    asks the user, see :meth:`with_mpp`). ``mpp_source`` says where the value came from: ``"openslide"``
    (vendor metadata), ``"tiff"`` (TIFF resolution tags), ``"user"``, ``"array"`` or ``None``.
    """

    path: str
    vendor: str
    levels: tuple[LevelInfo, ...]
    mpp_x: float | None = None
    mpp_y: float | None = None
    objective_power: float | None = None
    mpp_source: str | None = None
    tile_sizes: tuple[tuple[int, int], ...] = field(default=())
    #: ``(x, y, width, height)`` of the non-empty region in level-0 pixels (``openslide.bounds-*``,
    #: MRXS and others); ``None`` when the file does not say. QuPath shows such slides cropped to it.
    bounds_l0: tuple[int, int, int, int] | None = None

    @property
    def offset_l0(self) -> tuple[int, int]:
        """``(x, y)`` of the bounds' corner (``(0, 0)`` without bounds): QuPath's coordinate origin."""
        return (0, 0) if self.bounds_l0 is None else (self.bounds_l0[0], self.bounds_l0[1])

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height)."""
        return self.levels[0].width, self.levels[0].height

    @property
    def shape(self) -> tuple[int, int]:
        """Level-0 (rows, cols)."""
        return self.levels[0].height, self.levels[0].width

    @property
    def has_mpp(self) -> bool:
        """True when the resolution is known."""
        return self.mpp_x is not None and self.mpp_y is not None

    @property
    def mpp(self) -> float | None:
        """Mean of ``mpp_x`` and ``mpp_y``; ``None`` when unknown."""
        if self.mpp_x is None or self.mpp_y is None:
            return None
        return (self.mpp_x + self.mpp_y) / 2.0

    def level_mpp(self, level: int) -> float | None:
        """µm/px at ``level`` (level-0 µm/px times that level's downsample), ``None`` when unknown."""
        mpp = self.mpp
        return None if mpp is None else mpp * self.levels[level].downsample

    def with_mpp(self, mpp_x: float, mpp_y: float | None = None, source: str = "user") -> SlideInfo:
        """A copy with the resolution supplied by the caller (e.g. the user, when the file has none)."""
        if not (mpp_x > 0 and (mpp_y is None or mpp_y > 0)):
            raise ValueError("µm/px must be positive")
        return replace(self, mpp_x=float(mpp_x), mpp_y=float(mpp_y or mpp_x), mpp_source=source)

    def to_dict(self) -> dict[str, Any]:
        """JSON form used by ``milkd info --json`` and by layer metadata."""
        return {
            "path": self.path,
            "vendor": self.vendor,
            "levels": [level.to_dict() for level in self.levels],
            "mpp_x": self.mpp_x,
            "mpp_y": self.mpp_y,
            "objective_power": self.objective_power,
            **({"bounds_l0": list(self.bounds_l0)} if self.bounds_l0 is not None else {}),
        }
