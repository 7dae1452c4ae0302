"""Working-resolution layers placed over a slide layer: names, colours, scale, the progressive preview
and the camera.

:class:`SlideLayers` owns the napari side of one prepared slide: every layer it makes is called
``"<slide> <what>"`` (``"<slide> weak labels"``, ``"<slide> teacher mask"``, ...), is single-scale (so
Labels stay editable) and gets the slide's world scale times the working downsample, so it lines up with
the slide in micrometres. Main thread only; it holds layers, never session state.

Adding a working-size layer costs 0.1–0.3 s on the GUI thread under software OpenGL, and drawing it
(slicing, and outlines over the whole map for a ``contour`` layer) as much again. So a Labels layer
outlines with :mod:`labels_outline`'s numpy outline, and layers put inside :meth:`SlideLayers.hidden`
come hidden with their canvas overlays not yet built: :meth:`~SlideLayers.reveal` builds the overlays
and then draws the layer in turns of the event loop, short freezes instead of one long one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.utils.colormaps import DirectLabelColormap

from napari_milkd._layers import MICROMETRES, SLIDE_META, mask_layer_kwargs
from napari_milkd._widget.labels_outline import defer_overlays, outline_quickly, show_overlays
from napari_milkd.core.session.jobs import MapPreview
from napari_milkd.core.session.weak_labels import (
    BAG_NEGATIVE,
    BAG_POSITIVE,
    REGION_FREE,
    REGION_TUMOUR,
)
from napari_milkd.core.slides.geometry import SlideWork, tile_map_origins
from napari_milkd.core.slides.types import LevelInfo, SlideInfo

WEAK_COLORS = {None: "transparent", REGION_TUMOUR: "#ff3b3b", REGION_FREE: "#2fd16b"}
#: The tiles layer's labels: 1 + checkerboard parity + 2 × bag kind (0 ignored, 1 tumour-free, 2 tumour),
#: drawn as outlines, so each tile shows whether and how it counts.
TILE_COLORS = {
    None: "transparent",
    1: "#d0d0d0",
    2: "#8c8c8c",
    3: "#2fd16b",
    4: "#1a9e52",
    5: "#ff3b3b",
    6: "#c92a2a",
}
#: Least time between two refreshes of the preview layer while a map is predicted.
PREVIEW_INTERVAL_S = 0.3
#: How large a tile to review appears on screen.
REVIEW_TILE_SCREEN_PX = 500


def info_from_layer(layer: Image) -> SlideInfo:
    """The slide facts our reader (or sample) put in an image layer's metadata."""
    facts = layer.metadata[SLIDE_META]
    return SlideInfo(
        path=facts["path"],
        vendor=facts["vendor"],
        levels=tuple(LevelInfo(**lv) for lv in facts["levels"]),
        mpp_x=facts["mpp_x"],
        mpp_y=facts["mpp_y"],
        objective_power=facts["objective_power"],
        mpp_source=facts.get("mpp_source"),
    )


def slide_layers(viewer: Any) -> list[Image]:
    """Image layers that carry slide facts (opened by our reader or sample)."""
    return [lay for lay in viewer.layers if isinstance(lay, Image) and SLIDE_META in lay.metadata]


def tile_values(work: SlideWork, bags: np.ndarray | None = None) -> np.ndarray:
    """Each tile's label in the tiles layer (see :data:`TILE_COLORS`) for per-tile bag labels ``bags``
    (``BAG_POSITIVE``/``BAG_NEGATIVE``/``BAG_IGNORE``; None: all ignored)."""
    origins = tile_map_origins(work.grid, work.downsample)
    t = work.grid.tile
    parity = (origins[:, 0] // t + origins[:, 1] // t) % 2
    kinds = (
        np.zeros(len(origins), np.int64)
        if bags is None
        else np.where(bags == BAG_POSITIVE, 2, np.where(bags == BAG_NEGATIVE, 1, 0))
    )
    return (1 + parity + 2 * kinds).astype(np.uint8)


#: Width of the outline each tile is drawn with in the tiles layer (map pixels, inside the tile).
TILE_RING_PX = 2


def ring_pixels(r0: int, c0: int, t: int, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the :data:`TILE_RING_PX`-wide outline of the tile at map origin ``(r0, c0)``
    (size ``t``), clipped to a map of ``shape``."""
    r1, c1 = min(r0 + t, shape[0]), min(c0 + t, shape[1])
    if r1 <= r0 or c1 <= c0:
        return np.empty(0, np.intp), np.empty(0, np.intp)
    on = np.zeros((r1 - r0, c1 - c0), bool)
    w = TILE_RING_PX
    on[:w], on[-w:], on[:, :w], on[:, -w:] = True, True, True, True
    yy, xx = np.nonzero(on)
    return yy + r0, xx + c0


def tile_map(work: SlideWork, bags: np.ndarray | None = None) -> np.ndarray:
    """Tiles drawn into a working-size map as :data:`TILE_RING_PX`-wide outlines in their
    :func:`tile_values` (the layer shows them as they are: no contour for napari to compute)."""
    out = np.zeros(work.shape, np.uint8)
    t, w = work.grid.tile, TILE_RING_PX
    for (r0, c0), value in zip(
        tile_map_origins(work.grid, work.downsample), tile_values(work, bags), strict=True
    ):
        tile = out[r0 : r0 + t, c0 : c0 + t]  # a view, clipped to the map
        tile[:w], tile[-w:], tile[:, :w], tile[:, -w:] = value, value, value, value
    return out


def repaint_tiles(layer: Labels, work: SlideWork, before: np.ndarray, after: np.ndarray) -> int:
    """Repaint in the tiles ``layer`` only the outlines of the tiles whose :func:`tile_values` went
    from ``before`` to ``after`` (napari refreshes just that box); return how many changed."""
    changed = np.flatnonzero(before != after)
    if changed.size == 0:
        return 0
    origins = tile_map_origins(work.grid, work.downsample)
    t = work.grid.tile
    parts = [ring_pixels(int(origins[i][0]), int(origins[i][1]), t, layer.data.shape) for i in changed]
    yy = np.concatenate([p[0] for p in parts])
    xx = np.concatenate([p[1] for p in parts])
    values = np.concatenate(
        [np.full(len(p[0]), after[i], np.uint8) for p, i in zip(parts, changed, strict=True)]
    )
    if yy.size:
        layer.data_setitem((yy, xx), values)
    return int(changed.size)


class SlideLayers:
    """The layers over one slide layer (``attach`` it first) at one working downsample."""

    def __init__(self, viewer: Any) -> None:
        self.viewer = viewer
        self.slide_name: str | None = None
        self.downsample = 1.0
        self._last_preview = 0.0
        self._hidden: list[Any] | None = None

    def attach(self, slide_name: str, downsample: float) -> None:
        """Place the layers to come over the slide layer ``slide_name`` at ``downsample`` × level 0."""
        self.slide_name = slide_name
        self.downsample = float(downsample)

    def name(self, what: str) -> str:
        """The layer name of ``what`` (``"<slide> <what>"``)."""
        return f"{self.slide_name} {what}"

    def get(self, what: str) -> Any:
        """The layer ``what``, or None."""
        if self.slide_name is None:
            return None
        name = self.name(what)
        return self.viewer.layers[name] if name in self.viewer.layers else None  # noqa: SIM401 (LayerList)

    def remove(self, what: str) -> None:
        """Remove the layer ``what`` if it is there."""
        layer = self.get(what)
        if layer is not None:
            self.viewer.layers.remove(layer)

    def _slide_geometry(self) -> dict[str, Any]:
        slide = self.viewer.layers[self.slide_name]
        info = info_from_layer(slide)
        return {
            "level0_scale": (float(slide.scale[-2]), float(slide.scale[-1])),
            "units": MICROMETRES if info.has_mpp else None,
            "mpp": info.mpp,
        }

    def put(self, kind: str, what: str, data: np.ndarray, **extra: Any) -> Any:
        """Show ``data`` in the layer ``what``: its data is replaced when it exists with this shape, else
        a ``kind`` (``"labels"``/``"image"``) layer is added over the slide (one of another shape goes)."""
        layer = self.get(what)
        if layer is not None and layer.data.shape == data.shape:
            layer.data = data
            return layer
        if layer is not None:
            self.viewer.layers.remove(layer)
        geometry = self._slide_geometry()
        kwargs = mask_layer_kwargs(
            geometry["level0_scale"],
            self.downsample,
            self.name(what),
            units=geometry["units"],
            mpp=geometry["mpp"],
            **extra,
        )
        hide = self._hidden is not None and kwargs.get("visible", True)
        if hide:
            kwargs["visible"] = False
        layer = Labels(data, **kwargs) if kind == "labels" else Image(data, **kwargs)
        if isinstance(layer, Labels):
            outline_quickly(layer)
        if hide and self._hidden is not None:
            defer_overlays(layer)
            self._hidden.append(layer)
        self.viewer.add_layer(layer)
        return layer

    @contextlib.contextmanager
    def hidden(self) -> Iterator[list[Any]]:
        """Layers :meth:`put` adds inside this block are added hidden (napari neither slices nor outlines
        a hidden layer, so styling it costs nothing), their overlays not yet built, and listed in the list
        it gives; :meth:`reveal` them later. Layers that exist only get their data, as always."""
        self._hidden = added = []
        try:
            yield added
        finally:
            self._hidden = None

    @staticmethod
    def reveal(layers: Iterable[Any]) -> Iterator[None]:
        """Show ``layers`` (added inside :meth:`hidden`) in steps: a turn of the event loop (yield), the
        layer's overlays built, another turn, the layer sliced and drawn."""
        for layer in layers:
            yield
            show_overlays(layer)
            yield
            layer.visible = True

    def put_labels(self, what: str, data: np.ndarray, colors: dict[Any, str], **extra: Any) -> Labels:
        """:meth:`put` a Labels layer drawn with ``colors`` (label → colour)."""
        return self.put("labels", what, data, colormap=DirectLabelColormap(color_dict=colors), **extra)

    def put_image(self, what: str, data: np.ndarray, **extra: Any) -> Image:
        """:meth:`put` an Image layer."""
        return self.put("image", what, data, **extra)

    # --- the map appearing while a slide is predicted ------------------------------------------------

    def start_preview(self) -> None:
        """A job starts: its first map band shows at once."""
        self._last_preview = 0.0

    def show_preview(self, event: MapPreview) -> None:
        """Copy the newly final rows of the job's map into the preview layer, a few times a second."""
        now = time.monotonic()
        if not event.rows_done or (
            event.done < event.total and now - self._last_preview < PREVIEW_INTERVAL_S
        ):
            return
        self._last_preview = now
        layer = self.get("preview")
        if layer is None:
            layer = self.put_image(
                "preview",
                np.zeros_like(event.probability),
                colormap="magma",
                opacity=0.6,
                contrast_limits=(0, 1),
            )
        layer.data[: event.rows_done] = event.probability[: event.rows_done]
        layer.refresh()

    def drop_preview(self) -> None:
        """The job ended: the preview gives way to the real layers."""
        self.remove("preview")

    # --- camera --------------------------------------------------------------------------------------

    def show_region(self, bounds_l0: tuple[float, float, float, float]) -> None:
        """Centre the camera on ``(y0, x0, y1, x1)`` (level-0 pixels), about 500 screen pixels tall."""
        sy, sx = self._slide_geometry()["level0_scale"]
        y0, x0, y1, x1 = bounds_l0
        camera = getattr(self.viewer, "scene", self.viewer).camera  # napari ≥ 0.9: viewer.scene.camera
        camera.center = ((y0 + y1) / 2 * sy, (x0 + x1) / 2 * sx)
        camera.zoom = REVIEW_TILE_SCREEN_PX / ((y1 - y0) * sy)
