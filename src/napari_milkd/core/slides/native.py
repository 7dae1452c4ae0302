"""Native tile reading for TIFF-family slides: pixels from the file's own tiles, metadata from OpenSlide.

Owns :class:`TiffTileSource`, an :class:`~napari_milkd.core.slides.slide.OpenSlideSource` whose region
reads decode the TIFF tiles directly (tifffile + imagecodecs, the same libjpeg-turbo / OpenJPEG family
OpenSlide uses) instead of going through OpenSlide's ``read_region`` (cairo surface, ARGB→RGBA, PIL
round trip, one tile cache lock). Levels, downsamples, µm/px, bounds and tile sizes stay exactly what
OpenSlide reports; only pixels are served natively. A region touching several tiles decodes them in
parallel (imagecodecs releases the GIL); a zarr chunk (= one tile) is one file read and one decode.

Used only where the file's geometry is OpenSlide's: the ``generic-tiff`` and ``aperio`` formats, every
OpenSlide level matching one tiled, contiguous, 8-bit RGB TIFF page of the same size and tile size,
compressed with a codec whose colours tifffile decodes as OpenSlide does (JPEG, JPEG 2000 RGB, LZW,
Deflate, ...). Everything else (NDPI, MRXS, VMS, SCN, BIF, Philips TIFF, DICOM-WSI, Aperio YCbCr
JPEG 2000, ...) stays on OpenSlide, and a tile that fails to decode is read through OpenSlide instead.

``MILKD_SLIDE_READER=openslide`` (or ``open_slide(..., reader="openslide")``) forces OpenSlide.
May import numpy, tifffile (imagecodecs through it) and openslide; nothing from napari or Qt.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from napari_milkd.core.errors import SlideError
from napari_milkd.core.slides.slide import OpenSlideSource, check_level

#: OpenSlide formats whose levels are plain TIFF pages of the main IFD chain, tiles neither overlapping
#: nor sparse in a way OpenSlide fills differently from "missing tile = white".
NATIVE_VENDORS: frozenset[str] = frozenset({"generic-tiff", "aperio"})

#: TIFF compressions decoded natively: none, LZW, JPEG, Adobe Deflate, PackBits, Deflate, Aperio
#: JPEG 2000 RGB (33005), JPEG 2000 (34712), Zstd, WebP. Aperio's YCbCr JPEG 2000 (33003) is left to
#: OpenSlide, which converts the colours itself.
NATIVE_COMPRESSIONS: frozenset[int] = frozenset({1, 5, 7, 8, 32773, 32946, 33005, 34712, 50000, 50001})

#: Largest per-channel difference between a native tile and OpenSlide's accepted when opening (the
#: decoders are the same libraries, so this is normally 0; more means a colour-space mismatch).
OPEN_CHECK_TOLERANCE = 8

#: Decoded tiles kept per slide (bytes), like OpenSlide's own 32 MiB tile cache: overlapping windows
#: and neighbouring zarr chunk requests decode each tile once.
TILE_CACHE_BYTES = 32 * 1024 * 1024

_POOL_LOCK = threading.Lock()
_POOL: ThreadPoolExecutor | None = None


def _decode_pool() -> Executor:
    """One process-wide pool for parallel tile decoding (threads: the codecs release the GIL)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(
                max_workers=max(2, min(8, os.cpu_count() or 2)), thread_name_prefix="milkd-tiff"
            )
        return _POOL


def _forget_pool_after_fork() -> None:
    """A forked child (a worker process) has none of the parent's threads: start a fresh pool there."""
    global _POOL, _POOL_LOCK
    _POOL = None
    _POOL_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


class _Level:
    """One pyramid level as a TIFF page: its tile grid and the page's decode function."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.height = int(page.imagelength)
        self.width = int(page.imagewidth)
        self.th = int(page.tilelength)
        self.tw = int(page.tilewidth)
        self.rows = -(-self.height // self.th)
        self.cols = -(-self.width // self.tw)
        self.offsets = page.dataoffsets
        self.counts = page.databytecounts
        self.jpegtables = page.jpegtables
        self.decode = page.decode


def _page_problem(page: Any, width: int, height: int, tile: tuple[int, int]) -> str | None:
    """Why ``page`` cannot serve an OpenSlide level of ``width``×``height`` with ``tile`` (th, tw)."""
    if not page.is_tiled:
        return "not tiled"
    if (int(page.imagewidth), int(page.imagelength)) != (width, height):
        return "size differs"
    if (int(page.tilelength), int(page.tilewidth)) != tile:
        return "tile size differs"
    if int(page.tiledepth) != 1 or int(page.imagedepth) != 1:
        return "3-D tiles"
    if int(page.samplesperpixel) != 3 or int(page.bitspersample) != 8 or int(page.planarconfig) != 1:
        return "not 8-bit contiguous RGB"
    if int(page.sampleformat) != 1:
        return "not unsigned samples"
    compression = int(page.compression)
    if compression not in NATIVE_COMPRESSIONS:
        return f"compression {compression}"
    photometric = int(page.photometric)
    # YCbCr is decoded to RGB by the JPEG codec; for any other codec it would need a conversion.
    if not (photometric == 2 or (photometric == 6 and compression == 7)):
        return f"photometric {photometric}"
    if len(page.dataoffsets) != -(-page.imagelength // page.tilelength) * -(
        -page.imagewidth // page.tilewidth
    ):
        return "tile count"
    return None


class TiffTileSource(OpenSlideSource):
    """An OpenSlide slide whose pixels are decoded from the TIFF's own tiles (see the module docstring).

    With ``require=True`` a file that is not eligible raises :class:`SlideError`; with ``require=False``
    it stays open as a plain OpenSlide source (:attr:`reader` ``"openslide"``, :attr:`native_problem`
    says why), so OpenSlide opens the file once either way.
    """

    _levels: list[_Level] | None = None  # set once eligible; OpenSlide serves reads until then
    native_problem: str | None = None

    def __init__(self, path: str | os.PathLike[str], *, require: bool = True) -> None:
        super().__init__(path)
        try:
            self._setup_native()
        except Exception as exc:  # not eligible, or anything tifffile trips on: OpenSlide serves it
            self.native_problem = str(exc)
            if require:
                super().close()
                if isinstance(exc, SlideError):
                    raise
                raise SlideError(f"{self._path.name}: native tile reading unavailable: {exc}") from exc

    def _setup_native(self) -> None:
        import tifffile

        info = self._info
        if info.vendor not in NATIVE_VENDORS:
            raise SlideError(f"{self._path.name}: {info.vendor} is read through OpenSlide")
        self._tif = tifffile.TiffFile(str(self._path))
        try:
            pages = [p for p in self._tif.pages if isinstance(p, tifffile.TiffPage)]
            levels: list[_Level] = []
            for level, lvl in enumerate(info.levels):
                problems = []
                match = None
                for page in pages:
                    problem = _page_problem(page, lvl.width, lvl.height, info.tile_sizes[level])
                    if problem is None:
                        match = page
                        break
                    problems.append(problem)
                if match is None:
                    why = ", ".join(sorted(set(problems)))
                    raise SlideError(f"{self._path.name}: level {level} has no matching TIFF page ({why})")
                levels.append(_Level(match))
            self._levels = levels
            self._cache: OrderedDict[tuple[int, int, int], np.ndarray | None] = OrderedDict()
            self._cache_bytes = 0
            self._cache_lock = threading.Lock()
            self._fd = os.open(str(self._path), os.O_RDONLY | getattr(os, "O_BINARY", 0))
            self._file_lock = threading.Lock()
            self._check_against_openslide()
        except BaseException:
            self._close_native()
            raise

    def _check_against_openslide(self) -> None:
        """Tile (0, 0) of level 0 and of the last level must decode to OpenSlide's colours."""
        assert self._levels is not None
        for level in sorted({0, len(self._levels) - 1}):
            lv = self._levels[level]
            h, w = min(lv.th, lv.height), min(lv.tw, lv.width)
            native = self._read_native(level, 0, 0, h, w)
            reference = super().read(level, 0, 0, h, w)
            diff = int(np.abs(native.astype(np.int16) - reference).max())
            if diff > OPEN_CHECK_TOLERANCE:
                raise SlideError(
                    f"{self._path.name}: native decode differs from OpenSlide by {diff} at level {level}"
                )

    @property
    def reader(self) -> str:
        """``"native"`` when pixels come from the TIFF tiles, ``"openslide"`` after a fallback."""
        return "openslide" if self._levels is None else "native"

    def _tile_bytes(self, lv: _Level, index: int) -> bytes:
        offset, count = int(lv.offsets[index]), int(lv.counts[index])
        if hasattr(os, "pread"):
            return os.pread(self._fd, count, offset)
        with self._file_lock:
            os.lseek(self._fd, offset, os.SEEK_SET)
            return os.read(self._fd, count)

    def _decode_tile(self, lv: _Level, row: int, col: int) -> np.ndarray | None:
        """Tile ``(row, col)`` as ``(th, tw, 3)`` uint8, ``None`` for a missing (empty) tile."""
        index = row * lv.cols + col
        if int(lv.counts[index]) == 0 or int(lv.offsets[index]) == 0:
            return None
        data, _, _ = lv.decode(self._tile_bytes(lv, index), index, jpegtables=lv.jpegtables)
        if data is None:
            return None
        return np.asarray(data).reshape(lv.th, lv.tw, 3)

    def _tile(self, level: int, row: int, col: int, keep: bool) -> np.ndarray | None:
        """Tile ``(row, col)`` of ``level`` through the LRU cache (read-only arrays); ``keep``: cache it.

        Only tiles a neighbouring read is likely to need again are kept: a whole-tile read (a zarr
        chunk) and tiles a region read covers partly. Tiles a large read covers whole are not, so a
        sweep over a level (tissue detection) does not fill memory with tiles it will never revisit.
        """
        key = (level, row, col)
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        assert self._levels is not None
        tile = self._decode_tile(self._levels[level], row, col)
        if tile is not None:
            tile.flags.writeable = False
        size = 0 if tile is None else tile.nbytes
        if not keep:
            return tile
        with self._cache_lock:
            if key not in self._cache:
                self._cache[key] = tile
                self._cache_bytes += size
                while self._cache_bytes > TILE_CACHE_BYTES and len(self._cache) > 1:
                    _, old = self._cache.popitem(last=False)
                    self._cache_bytes -= 0 if old is None else old.nbytes
        return tile

    def _read_native(self, level: int, y: int, x: int, height: int, width: int) -> np.ndarray:
        assert self._levels is not None
        lv = self._levels[level]
        # Fast path: exactly one whole tile inside the level (a zarr chunk): no copy, no white fill.
        if (
            height == lv.th
            and width == lv.tw
            and y % lv.th == 0
            and x % lv.tw == 0
            and y + height <= lv.height
            and x + width <= lv.width
        ):
            tile = self._tile(level, y // lv.th, x // lv.tw, keep=True)
            return tile.copy() if tile is not None else np.full((height, width, 3), 255, np.uint8)
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        y0, x0 = max(y, 0), max(x, 0)
        y1, x1 = min(y + height, lv.height), min(x + width, lv.width)
        if y1 <= y0 or x1 <= x0:
            return out
        tiles = [
            (r, c)
            for r in range(y0 // lv.th, (y1 - 1) // lv.th + 1)
            for c in range(x0 // lv.tw, (x1 - 1) // lv.tw + 1)
        ]

        def paste(rc: tuple[int, int]) -> None:
            r, c = rc
            ty, tx = r * lv.th, c * lv.tw
            sy0, sy1 = max(y0, ty), min(y1, ty + lv.th)
            sx0, sx1 = max(x0, tx), min(x1, tx + lv.tw)
            whole = sy1 - sy0 == min(lv.th, lv.height - ty) and sx1 - sx0 == min(lv.tw, lv.width - tx)
            tile = self._tile(level, r, c, keep=not whole)
            if tile is None:
                return
            out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = tile[sy0 - ty : sy1 - ty, sx0 - tx : sx1 - tx]

        if len(tiles) == 1:
            paste(tiles[0])
        else:
            for future in [_decode_pool().submit(paste, rc) for rc in tiles]:
                future.result()
        return out

    def read(self, level: int, y: int, x: int, height: int, width: int) -> np.ndarray:
        """Read ``(height, width, 3)`` uint8 RGB at ``level`` from the TIFF tiles (OpenSlide on failure)."""
        if self._levels is None or self._slide is None:
            return super().read(level, y, x, height, width)
        check_level(self._info, level)
        if height <= 0 or width <= 0:
            raise SlideError(f"empty region {height}×{width}")
        try:
            return self._read_native(int(level), int(y), int(x), int(height), int(width))
        except Exception:
            # A tile tifffile cannot decode (damaged, unusual encoding): OpenSlide decides.
            return super().read(level, y, x, height, width)

    def _close_native(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)
            self._fd = None
        self._cache = OrderedDict()
        self._cache_bytes = 0
        tif = getattr(self, "_tif", None)
        if tif is not None:
            tif.close()
            self._tif = None
        self._levels = None

    def close(self) -> None:
        """Release the TIFF file and the OpenSlide handle."""
        self._close_native()
        super().close()


def reader_preference(reader: str | None = None) -> str:
    """``"auto"``, ``"native"`` or ``"openslide"``: ``reader`` if given, else ``$MILKD_SLIDE_READER``."""
    choice = (reader or os.environ.get("MILKD_SLIDE_READER") or "auto").strip().lower()
    if choice not in ("auto", "native", "openslide"):
        raise SlideError(f"unknown slide reader {choice!r}: use auto, native or openslide")
    return choice


def could_be_native(path: Path) -> bool:
    """Cheap pre-check: a TIFF-family file (by suffix) that might be served natively."""
    return path.is_file() and path.suffix.lower() in {".svs", ".tif", ".tiff"}
