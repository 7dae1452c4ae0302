"""Slide access: the :class:`SlideSource` protocol and its two implementations.

Owns opening slides and reading RGB regions. May import numpy, openslide (with the ``openslide-bin``
wheel, so no system library is needed), tifffile-free (native TIFF tiles live in :mod:`.native`);
nothing from napari or Qt.

Conventions
-----------
* Region reads take **level coordinates** ``(y, x)`` = (row, col) of the top-left pixel and a size
  ``(height, width)``, all in pixels of the requested level, and return ``(height, width, 3)`` uint8 RGB.
* Pixels outside the slide (OpenSlide's alpha 0) are white; partially transparent pixels are composited
  over white.
* A level's pixel ``(y, x)`` sits at level-0 ``(round(y * downsample), round(x * downsample))``.
  OpenSlide's downsamples are measured, not exact (15.955, not 16); where ``x * downsample`` is not an
  integer OpenSlide resamples by the sub-pixel remainder, so reads at such levels are exact only at the
  positions we read them from (chunk origins in :mod:`napari_milkd.core.slides.zarr_store`). Native TIFF
  reads (:mod:`.native`) return the stored level pixel ``(y, x)`` itself, never resampled: identical to
  OpenSlide wherever ``x * downsample`` and ``y * downsample`` are integers (every level-0 read, every
  exact-downsample level), within OpenSlide's sub-pixel interpolation elsewhere.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from napari_milkd.core.errors import SlideError
from napari_milkd.core.slides.types import LevelInfo, SlideInfo

#: File suffixes OpenSlide may open (a DICOM-WSI series is opened through any of its ``.dcm`` files).
SLIDE_SUFFIXES: frozenset[str] = frozenset(
    {".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".dcm"}
)

#: Chunk size used when a level does not report its tile size.
DEFAULT_TILE = 512


@runtime_checkable
class SlideSource(Protocol):
    """A pyramidal RGB image read by regions (see the module docstring for coordinates)."""

    @property
    def info(self) -> SlideInfo:
        """Facts about the slide."""
        ...

    def tile_size(self, level: int) -> tuple[int, int]:
        """Native (tile_height, tile_width) of ``level``: the natural chunk for lazy views."""
        ...

    def read(self, level: int, y: int, x: int, height: int, width: int) -> np.ndarray:
        """Read ``(height, width, 3)`` uint8 RGB at ``level`` from level coordinates ``(y, x)``."""
        ...

    def close(self) -> None:
        """Release file handles."""
        ...


def check_level(info: SlideInfo, level: int) -> None:
    """Raise :class:`SlideError` when ``level`` does not exist (OpenSlide would silently return zeros)."""
    if not isinstance(level, int | np.integer) or not 0 <= int(level) < len(info.levels):
        raise SlideError(
            f"level {level} does not exist: {Path(info.path).name} has levels 0..{len(info.levels) - 1}"
        )


def level_to_l0(value: int, downsample: float) -> int:
    """Level-0 coordinate of a level coordinate (``round(value * downsample)``)."""
    return round(value * downsample)


def rgba_to_rgb_on_white(rgba: np.ndarray) -> np.ndarray:
    """Composite non-premultiplied RGBA uint8 over white; alpha 0 (outside the slide) becomes white."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.uint16)
    out = (rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def resolve_slide_path(path: str | os.PathLike[str]) -> Path:
    """Map a user path to the file OpenSlide should open.

    A DICOM-WSI folder resolves to its largest ``.dcm`` (OpenSlide finds the rest of the series).
    Raises :class:`SlideError` for a missing path or a folder without DICOM files.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise SlideError(f"no such file or folder: {p}")
    if p.is_dir():
        dcm = [f for f in p.iterdir() if f.suffix.lower() == ".dcm" and f.is_file()]
        if not dcm:
            raise SlideError(f"{p} is a folder without .dcm files; give a slide file or a DICOM-WSI folder")
        p = max(dcm, key=lambda f: f.stat().st_size)
    return p


def _float_or_none(value: str | None) -> float | None:
    try:
        result = float(value) if value not in (None, "") else None
    except ValueError:
        return None
    return result if result is not None and math.isfinite(result) and result > 0 else None


def _mpp_from_properties(props: dict[str, str]) -> tuple[float | None, float | None, str | None]:
    """µm/px from OpenSlide's ``openslide.mpp-*``, else from TIFF resolution tags."""
    mpp_x = _float_or_none(props.get("openslide.mpp-x"))
    mpp_y = _float_or_none(props.get("openslide.mpp-y"))
    if mpp_x and mpp_y:
        return mpp_x, mpp_y, "openslide"
    unit = props.get("tiff.ResolutionUnit", "").lower()
    um_per_unit = {"centimeter": 1e4, "inch": 25400.0}.get(unit)
    res_x = _float_or_none(props.get("tiff.XResolution"))
    res_y = _float_or_none(props.get("tiff.YResolution"))
    if um_per_unit and res_x and res_y:
        return um_per_unit / res_x, um_per_unit / res_y, "tiff"
    return None, None, None


def _bounds_from_properties(props: dict[str, str]) -> tuple[int, int, int, int] | None:
    """``openslide.bounds-x/y/width/height`` as ints, or ``None`` when any is missing or malformed."""
    try:
        values = tuple(int(props[f"openslide.bounds-{k}"]) for k in ("x", "y", "width", "height"))
    except (KeyError, ValueError):
        return None
    return values  # type: ignore[return-value]


class OpenSlideSource:
    """A slide read through OpenSlide (svs, ndpi, mrxs, scn, bif, generic tiled TIFF, DICOM-WSI, ...).

    Opening validates the file: it must be a format OpenSlide recognises, and its smallest level must
    decode (a truncated file fails here, with a :class:`SlideError`, not later in a viewer).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import openslide

        self._path = resolve_slide_path(path)
        if not self._path.is_file():
            raise SlideError(f"not a file: {self._path}")
        try:
            vendor = openslide.OpenSlide.detect_format(str(self._path))
        except Exception as exc:
            raise SlideError(f"cannot read {self._path.name}: {exc}") from exc
        if vendor is None:
            raise SlideError(
                f"{self._path.name} is not a slide OpenSlide can read "
                "(unknown format, or a damaged or truncated file)"
            )
        try:
            self._slide = openslide.OpenSlide(str(self._path))
        except openslide.OpenSlideError as exc:
            raise SlideError(f"{self._path.name} looks like {vendor} but cannot be opened: {exc}") from exc
        props = dict(self._slide.properties)
        levels = tuple(
            LevelInfo(int(w), int(h), float(ds))
            for (w, h), ds in zip(self._slide.level_dimensions, self._slide.level_downsamples, strict=True)
        )
        tiles = tuple(
            (
                int(props.get(f"openslide.level[{i}].tile-height", DEFAULT_TILE)),
                int(props.get(f"openslide.level[{i}].tile-width", DEFAULT_TILE)),
            )
            for i in range(len(levels))
        )
        mpp_x, mpp_y, mpp_source = _mpp_from_properties(props)
        self._info = SlideInfo(
            path=str(self._path),
            vendor=vendor,
            levels=levels,
            mpp_x=mpp_x,
            mpp_y=mpp_y,
            objective_power=_float_or_none(props.get("openslide.objective-power")),
            mpp_source=mpp_source,
            tile_sizes=tiles,
            bounds_l0=_bounds_from_properties(props),
        )
        self._validate()

    def _validate(self) -> None:
        last = len(self._info.levels) - 1
        lvl = self._info.levels[last]
        try:
            self.read(last, lvl.height // 2, lvl.width // 2, min(64, lvl.height), min(64, lvl.width))
            self.read(0, 0, 0, min(16, self._info.levels[0].height), min(16, self._info.levels[0].width))
        except SlideError as exc:
            self.close()
            raise SlideError(f"{self._path.name} is damaged or truncated: {exc}") from exc

    @property
    def info(self) -> SlideInfo:
        """Facts about the slide."""
        return self._info

    @property
    def reader(self) -> str:
        """Where pixels come from: ``"openslide"`` (``"native"`` for TIFF tiles, see :mod:`.native`)."""
        return "openslide"

    @property
    def properties(self) -> dict[str, str]:
        """All OpenSlide properties (vendor metadata) as strings."""
        return dict(self._slide.properties)

    def tile_size(self, level: int) -> tuple[int, int]:
        """Native (tile_height, tile_width) of ``level``."""
        check_level(self._info, level)
        return self._info.tile_sizes[level]

    def read(self, level: int, y: int, x: int, height: int, width: int) -> np.ndarray:
        """Read ``(height, width, 3)`` uint8 RGB at ``level`` from level coordinates ``(y, x)``."""
        import openslide

        check_level(self._info, level)
        if height <= 0 or width <= 0:
            raise SlideError(f"empty region {height}×{width}")
        ds = self._info.levels[level].downsample
        try:
            rgba = np.asarray(
                self._slide.read_region(
                    (level_to_l0(x, ds), level_to_l0(y, ds)), int(level), (int(width), int(height))
                )
            )
        except openslide.OpenSlideError as exc:
            raise SlideError(f"cannot read {self._path.name}: {exc}") from exc
        return rgba_to_rgb_on_white(rgba)

    def close(self) -> None:
        """Release the OpenSlide handle."""
        slide = getattr(self, "_slide", None)
        if slide is not None:
            slide.close()
            self._slide = None

    def __enter__(self) -> OpenSlideSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ArraySlideSource:
    """An in-memory RGB image as a slide: for plain images, generated test slides and tiles.

    Levels are the image and its 2× mean-downsamples until the longest side is below ``min_size``.
    """

    def __init__(
        self,
        image: np.ndarray,
        *,
        mpp: float | None = None,
        name: str = "array",
        min_size: int = 512,
        tile: int = DEFAULT_TILE,
    ) -> None:
        arr = np.asarray(image)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.dtype != np.uint8:
            raise SlideError(f"expected an (H, W, 3) uint8 image, got {arr.shape} {arr.dtype}")
        if arr.shape[2] == 4:
            arr = rgba_to_rgb_on_white(arr)
        self._levels: list[np.ndarray] = [np.ascontiguousarray(arr)]
        while max(self._levels[-1].shape[:2]) >= 2 * min_size:
            prev = self._levels[-1]
            h, w = prev.shape[0] // 2, prev.shape[1] // 2
            down = prev[: 2 * h, : 2 * w].reshape(h, 2, w, 2, 3).mean(axis=(1, 3))
            self._levels.append(np.round(down).astype(np.uint8))
        h0, w0 = arr.shape[:2]
        levels = tuple(
            LevelInfo(lv.shape[1], lv.shape[0], (w0 / lv.shape[1] + h0 / lv.shape[0]) / 2.0)
            for lv in self._levels
        )
        self._tile = tile
        self._info = SlideInfo(
            path=name,
            vendor="array",
            levels=levels,
            mpp_x=mpp,
            mpp_y=mpp,
            mpp_source="array" if mpp else None,
            tile_sizes=tuple((tile, tile) for _ in levels),
        )

    @property
    def info(self) -> SlideInfo:
        """Facts about the image."""
        return self._info

    def tile_size(self, level: int) -> tuple[int, int]:
        """Chunk size used for every level."""
        check_level(self._info, level)
        return self._tile, self._tile

    def read(self, level: int, y: int, x: int, height: int, width: int) -> np.ndarray:
        """Read ``(height, width, 3)`` uint8 RGB at ``level``; outside the image is white."""
        check_level(self._info, level)
        src = self._levels[level]
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        y0, x0 = max(y, 0), max(x, 0)
        y1, x1 = min(y + height, src.shape[0]), min(x + width, src.shape[1])
        if y1 > y0 and x1 > x0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = src[y0:y1, x0:x1]
        return out

    def close(self) -> None:
        """Nothing to release."""


def open_slide(
    path: str | os.PathLike[str], *, mpp: float | None = None, reader: str | None = None
) -> OpenSlideSource:
    """Open a slide file (or DICOM-WSI folder): OpenSlide for the metadata, and for the pixels unless
    the file is a TIFF whose tiles are read natively (:class:`~.native.TiffTileSource`).

    ``mpp`` overrides the resolution (µm/px at level 0) when given. ``reader`` (default
    ``$MILKD_SLIDE_READER``, else ``"auto"``): ``"auto"`` reads TIFF tiles natively where eligible,
    ``"openslide"`` always uses OpenSlide, ``"native"`` requires native reading. Raises
    :class:`SlideError` with a one-line message for missing, unsupported, truncated or unreadable files.
    """
    from napari_milkd.core.slides.native import TiffTileSource, could_be_native, reader_preference

    choice = reader_preference(reader)
    source: OpenSlideSource
    if choice != "openslide" and could_be_native(resolve_slide_path(path)):
        source = TiffTileSource(path, require=choice == "native")
    elif choice == "native":
        raise SlideError(f"{Path(path).name}: native tile reading covers TIFF-family files only")
    else:
        source = OpenSlideSource(path)
    if mpp is not None:
        source._info = source.info.with_mpp(mpp)
    return source


def level_for_mpp(info: SlideInfo, target_mpp: float) -> int:
    """The coarsest level whose µm/px is not coarser than ``target_mpp`` (so reads only ever downsample).

    A 1 % tolerance absorbs measured downsamples (15.955 for 16). Requires a known resolution.
    """
    if info.mpp is None:
        raise SlideError(f"{Path(info.path).name} has no µm/px; supply it (e.g. --mpp 0.5)")
    if not target_mpp > 0:
        raise SlideError(f"target µm/px must be positive, got {target_mpp}")
    best = 0
    for i in range(len(info.levels)):
        level_mpp = info.level_mpp(i)
        if level_mpp is not None and level_mpp <= target_mpp * 1.01:
            best = i
    return best
