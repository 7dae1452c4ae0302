"""A read-only zarr v3 store over a :class:`~napari_milkd.core.slides.slide.SlideSource`.

Owns the mapping "slide pyramid → zarr hierarchy": a root group whose array ``"<level>"`` is that
pyramid level, shape ``(height, width, 3)`` uint8 RGB, chunk = the slide's native tile, uncompressed.
Nothing is converted or copied: every chunk request becomes one region read of the slide, run in a
thread so zarr can fetch chunks concurrently (OpenSlide reads are thread-safe; for TIFF-family slides
a chunk is one decode of the file's own tile, see :mod:`napari_milkd.core.slides.native`). May import zarr and
numpy; nothing from napari or Qt.

Chunk ``(i, j, 0)`` of level ``L`` holds level pixels ``[i*th:(i+1)*th, j*tw:(j+1)*tw]``, read from
level-0 location ``(round(j*tw*ds), round(i*th*ds))`` (see :mod:`napari_milkd.core.slides.slide`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable
from typing import Any

import numpy as np
import zarr
from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype

from napari_milkd.core.slides.slide import SlideSource


def _slice_bytes(data: bytes, byte_range: ByteRequest | None) -> bytes:
    if byte_range is None:
        return data
    if isinstance(byte_range, RangeByteRequest):
        return data[byte_range.start : byte_range.end]
    if isinstance(byte_range, OffsetByteRequest):
        return data[byte_range.offset :]
    if isinstance(byte_range, SuffixByteRequest):
        return data[-byte_range.suffix :] if byte_range.suffix else b""
    raise TypeError(f"unsupported byte range {byte_range!r}")


class SlideStore(Store):
    """Read-only zarr v3 store exposing every level of a slide as a lazy chunked array."""

    supports_writes: bool = False
    supports_deletes: bool = False
    supports_partial_writes: bool = False
    supports_listing: bool = True

    def __init__(self, source: SlideSource) -> None:
        super().__init__(read_only=True)
        self._source = source
        info = source.info
        self._metadata: dict[str, bytes] = {
            "zarr.json": json.dumps(
                {
                    "zarr_format": 3,
                    "node_type": "group",
                    "attributes": {"milkd": {"slide": info.to_dict(), "mpp_source": info.mpp_source}},
                }
            ).encode()
        }
        for level, lvl in enumerate(info.levels):
            th, tw = source.tile_size(level)
            self._metadata[f"{level}/zarr.json"] = json.dumps(
                {
                    "zarr_format": 3,
                    "node_type": "array",
                    "shape": [lvl.height, lvl.width, 3],
                    "data_type": "uint8",
                    "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [th, tw, 3]}},
                    "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
                    "fill_value": 255,
                    "codecs": [{"name": "bytes"}],
                    "dimension_names": ["y", "x", "c"],
                    "attributes": {"downsample": lvl.downsample},
                }
            ).encode()

    @property
    def source(self) -> SlideSource:
        """The slide this store reads from."""
        return self._source

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SlideStore) and other._source is self._source

    def __hash__(self) -> int:
        return id(self._source)

    def _chunk_level_index(self, key: str) -> tuple[int, int, int] | None:
        parts = key.split("/")
        if len(parts) != 5 or parts[1] != "c" or parts[4] != "0":
            return None
        try:
            level, i, j = int(parts[0]), int(parts[2]), int(parts[3])
        except ValueError:
            return None
        levels = self._source.info.levels
        if not 0 <= level < len(levels):
            return None
        th, tw = self._source.tile_size(level)
        if not (0 <= i * th < levels[level].height and 0 <= j * tw < levels[level].width):
            return None
        return level, i, j

    def read_chunk(self, level: int, i: int, j: int) -> np.ndarray:
        """Chunk ``(i, j)`` of ``level`` as a full ``(th, tw, 3)`` array (white past the slide edge)."""
        th, tw = self._source.tile_size(level)
        return self._source.read(level, i * th, j * tw, th, tw)

    async def get(
        self,
        key: str,
        prototype: BufferPrototype | None = None,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        """Metadata documents, or one chunk read from the slide on a worker thread."""
        prototype = prototype or default_buffer_prototype()
        if key in self._metadata:
            data = self._metadata[key]
        else:
            index = self._chunk_level_index(key)
            if index is None:
                return None
            chunk = await asyncio.to_thread(self.read_chunk, *index)
            data = chunk.tobytes()
        return prototype.buffer.from_bytes(_slice_bytes(data, byte_range))

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        """Several :meth:`get` calls, concurrently."""
        return list(await asyncio.gather(*(self.get(k, prototype, r) for k, r in key_ranges)))

    async def exists(self, key: str) -> bool:
        """True for metadata keys and for chunk keys inside a level."""
        return key in self._metadata or self._chunk_level_index(key) is not None

    async def set(self, key: str, value: Buffer) -> None:
        """Refused: slides are read-only."""
        raise PermissionError("a slide store is read-only")

    async def delete(self, key: str) -> None:
        """Refused: slides are read-only."""
        raise PermissionError("a slide store is read-only")

    async def list(self) -> AsyncIterator[str]:
        """Metadata keys only (chunks are implicit: every chunk inside a level exists)."""
        for key in self._metadata:
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        """Metadata keys starting with ``prefix``."""
        for key in self._metadata:
            if key.startswith(prefix):
                yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        """Direct children of ``prefix``: level folders under the root, ``zarr.json`` inside a level."""
        prefix = prefix.rstrip("/")
        seen: set[str] = set()
        for key in self._metadata:
            if prefix == "":
                child = key.split("/")[0]
            elif key.startswith(prefix + "/"):
                child = key[len(prefix) + 1 :].split("/")[0]
            else:
                continue
            if child not in seen:
                seen.add(child)
                yield child


def slide_levels(source: SlideSource) -> list[zarr.Array]:
    """Every pyramid level of ``source`` as a lazy read-only zarr array, level 0 first."""
    store = SlideStore(source)
    return [zarr.open_array(store=store, path=str(i), mode="r") for i in range(len(source.info.levels))]


def slide_group(source: SlideSource) -> Any:
    """The whole slide as a read-only zarr group (arrays ``"0"``, ``"1"``, ...; slide facts in attrs)."""
    return zarr.open_group(store=SlideStore(source), mode="r")
