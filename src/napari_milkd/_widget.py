"""The dock widget: the only module that touches Qt.

Owns forms, buttons, progress and layer updates; all work is delegated to :mod:`napari_milkd.core`
and runs in a napari worker thread (``create_worker``). Workers get copies (paths, numbers), never
layers; layers are changed only in the ``returned`` handler, on the main thread.

Current panel ("Slide"): the selected slide's facts (vendor, levels, µm/px and where it came from),
a µm/px override when the file has none, the working resolution and the level it reads, and
"Find tissue tiles", which adds a tissue mask and the tile grid over the slide.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_milkd._layers import MICROMETRES, SLIDE_META, mask_layer_kwargs
from napari_milkd.core.errors import MilkdError
from napari_milkd.core.slide import level_for_mpp, open_slide
from napari_milkd.core.tiling import TileGrid, tile_grid
from napari_milkd.core.tissue import TissueMask, slide_tissue
from napari_milkd.core.types import LevelInfo, SlideInfo

if TYPE_CHECKING:
    import napari


@dataclass(frozen=True)
class TissueTiles:
    """What the tissue job returns to the main thread."""

    tissue: TissueMask
    grid: TileGrid
    tile_map: np.ndarray


def _info_from_layer(layer: Image) -> SlideInfo:
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


def find_tissue_tiles(path: str, mpp: float | None, target_mpp: float, tile: int) -> TissueTiles:
    """Worker body: tissue mask and tile grid of the slide at ``path`` (headless, copies only)."""
    source = open_slide(path, mpp=mpp)
    try:
        tissue = slide_tissue(source)
        grid = tile_grid(source.info, mpp=target_mpp, tile=tile, tissue=tissue)
    finally:
        source.close()
    # Paint kept tiles into a map at the tissue mask's resolution (alternate labels 1/2 per tile).
    tile_map = np.zeros(tissue.mask.shape, dtype=np.uint8)
    ds = tissue.downsample
    for i in range(len(grid)):
        y0, x0, y1, x1 = grid.bounds_l0(i)
        r0, c0 = int(y0 // ds), int(x0 // ds)
        r1, c1 = int(np.ceil(y1 / ds)), int(np.ceil(x1 / ds))
        checker = 1 + (round(y0 / grid.stride_l0) + round(x0 / grid.stride_l0)) % 2
        tile_map[r0:r1, c0:c1] = checker
    return TissueTiles(tissue=tissue, grid=grid, tile_map=tile_map)


class SlideWidget(QWidget):
    """Slide facts, resolution and tissue tiles for the selected slide layer."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self._worker: Any = None

        self.layer_combo = QComboBox()
        self.facts = QLabel("Open a slide (File ▸ Open, or File ▸ Open Sample ▸ milkd).")
        self.facts.setWordWrap(True)
        self.facts.setTextFormat(Qt.TextFormat.RichText)
        self.facts.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.mpp_spin = QDoubleSpinBox(decimals=4, minimum=0.01, maximum=100.0, singleStep=0.05, value=0.5)
        self.mpp_spin.setSuffix(" µm/px")
        self.mpp_apply = QPushButton("Set µm/px")
        self.mpp_apply.setToolTip(
            "The file does not say its resolution: enter the scanner's µm/px at level 0."
        )
        self.target_spin = QDoubleSpinBox(decimals=2, minimum=0.1, maximum=64.0, singleStep=0.25, value=2.0)
        self.target_spin.setSuffix(" µm/px")
        self.level_note = QLabel("")
        self.tile_spin = QSpinBox(minimum=32, maximum=2048, singleStep=32, value=256)
        self.tile_spin.setSuffix(" px")
        self.tiles_button = QPushButton("Find tissue tiles")
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.result_note = QLabel("")
        self.result_note.setWordWrap(True)

        slide_box = QGroupBox("Slide")
        slide_form = QFormLayout(slide_box)
        slide_form.addRow("Layer", self.layer_combo)
        slide_form.addRow(self.facts)
        slide_form.addRow(self.mpp_spin, self.mpp_apply)

        tiles_box = QGroupBox("Working resolution and tiles")
        tiles_form = QFormLayout(tiles_box)
        tiles_form.addRow("Work at", self.target_spin)
        tiles_form.addRow("", self.level_note)
        tiles_form.addRow("Tile size", self.tile_spin)
        tiles_form.addRow(self.tiles_button)
        tiles_form.addRow(self.progress)
        tiles_form.addRow(self.result_note)

        layout = QVBoxLayout(self)
        layout.addWidget(slide_box)
        layout.addWidget(tiles_box)
        layout.addStretch(1)

        self.layer_combo.currentIndexChanged.connect(self._show_facts)
        self.target_spin.valueChanged.connect(self._show_facts)
        self.mpp_apply.clicked.connect(self._apply_mpp)
        self.tiles_button.clicked.connect(self.start_tissue_tiles)
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self._refresh_layers()

    # --- layer selection and facts -------------------------------------------------------------

    def slide_layers(self) -> list[Image]:
        """Image layers that carry slide facts (opened by our reader or sample)."""
        return [lay for lay in self.viewer.layers if isinstance(lay, Image) and SLIDE_META in lay.metadata]

    def selected_layer(self) -> Image | None:
        """The slide layer chosen in the combo box."""
        name = self.layer_combo.currentText()
        return next((lay for lay in self.slide_layers() if lay.name == name), None)

    def _refresh_layers(self, *_: object) -> None:
        current = self.layer_combo.currentText()
        names = [lay.name for lay in self.slide_layers()]
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        self.layer_combo.addItems(names)
        if current in names:
            self.layer_combo.setCurrentText(current)
        elif names:
            self.layer_combo.setCurrentIndex(len(names) - 1)
        self.layer_combo.blockSignals(False)
        self._show_facts()

    def _show_facts(self, *_: object) -> None:
        layer = self.selected_layer()
        enabled = layer is not None
        self.tiles_button.setEnabled(enabled and self._worker is None)
        if layer is None:
            self.facts.setText("Open a slide (File ▸ Open, or File ▸ Open Sample ▸ milkd).")
            self.level_note.setText("")
            return
        info = _info_from_layer(layer)
        rows = "".join(
            f"<tr><td>{i}</td><td>{lv.width} × {lv.height}</td><td>{lv.downsample:.3f}</td>"
            f"<td>{_fmt_mpp(info.level_mpp(i))}</td></tr>"
            for i, lv in enumerate(info.levels)
        )
        mpp_text = (
            f"{info.mpp_x:.4f} × {info.mpp_y:.4f} µm/px <i>({info.mpp_source})</i>"
            if info.has_mpp
            else "<b style='color:#ffb000'>unknown — enter it below</b>"
        )
        objective = f"{info.objective_power:g}×" if info.objective_power else "not stated"
        self.facts.setText(
            f"<b>{Path(info.path).name}</b> ({info.vendor})<br>Resolution: {mpp_text}<br>"
            f"Objective: {objective}<br><table cellspacing='4'><tr><th>level</th><th>size</th>"
            f"<th>downsample</th><th>µm/px</th></tr>{rows}</table>"
        )
        self.mpp_spin.setVisible(not info.has_mpp)
        self.mpp_apply.setVisible(not info.has_mpp)
        if info.has_mpp:
            level = level_for_mpp(info, self.target_spin.value())
            self.level_note.setText(f"reads level {level} ({_fmt_mpp(info.level_mpp(level))} µm/px)")
        else:
            self.level_note.setText("needs the slide's µm/px")

    def _apply_mpp(self) -> None:
        layer = self.selected_layer()
        if layer is None:
            return
        mpp = float(self.mpp_spin.value())
        facts = dict(layer.metadata[SLIDE_META])
        facts.update(mpp_x=mpp, mpp_y=mpp, mpp_source="user", mpp_known=True)
        layer.metadata = {**layer.metadata, SLIDE_META: facts}
        layer.scale = (mpp, mpp)
        layer.units = MICROMETRES
        self.viewer.reset_view()
        show_info(f"{layer.name}: resolution set to {mpp:g} µm/px")
        self._show_facts()

    # --- tissue tiles (worker) ------------------------------------------------------------------

    def start_tissue_tiles(self) -> None:
        """Run tissue detection and tiling for the selected slide in a worker thread."""
        layer = self.selected_layer()
        if layer is None:
            show_error("milkd: select a slide layer first")
            return
        info = _info_from_layer(layer)
        if not info.has_mpp:
            show_error(f"milkd: {layer.name} has no µm/px; enter it and press 'Set µm/px' first")
            return
        self._busy(True)
        self._worker = create_worker(
            find_tissue_tiles,
            info.path,
            info.mpp,
            float(self.target_spin.value()),
            int(self.tile_spin.value()),
        )
        scale = (float(layer.scale[-2]), float(layer.scale[-1]))
        self._worker.returned.connect(lambda result: self._show_tissue_tiles(layer.name, scale, result))
        self._worker.errored.connect(self._on_error)
        self._worker.finished.connect(lambda: self._busy(False))
        self._worker.start()

    def _busy(self, busy: bool) -> None:
        if not busy:
            self._worker = None
        self.progress.setVisible(busy)
        self.progress.setRange(0, 0)
        self.tiles_button.setEnabled(not busy and self.selected_layer() is not None)

    def _on_error(self, exc: Exception) -> None:
        message = str(exc) if isinstance(exc, MilkdError) else f"{type(exc).__name__}: {exc}"
        show_error(f"milkd: {message}")

    def _show_tissue_tiles(self, name: str, scale: tuple[float, float], result: TissueTiles) -> None:
        ds = result.tissue.downsample
        slide = self.viewer.layers[name] if name in self.viewer.layers else None  # noqa: SIM401 (LayerList)
        units = tuple(str(u) for u in slide.units[-2:]) if slide is not None else None
        tissue_colors = DirectLabelColormap(color_dict={None: "transparent", 1: "#39d98a"})
        tile_colors = DirectLabelColormap(color_dict={None: "transparent", 1: "#f5f5f5", 2: "#ffd166"})
        for layer_name, data, extra in (
            (
                f"{name} tissue",
                result.tissue.mask.astype(np.uint8),
                {"opacity": 0.3, "colormap": tissue_colors},
            ),
            (f"{name} tiles", result.tile_map, {"opacity": 0.9, "colormap": tile_colors}),
        ):
            kwargs = mask_layer_kwargs(scale, ds, layer_name, units=units, **extra)
            if layer_name in self.viewer.layers:
                existing = self.viewer.layers[layer_name]
                existing.data = data
                existing.scale = kwargs["scale"]
                existing.translate = kwargs["translate"]
            else:
                self.viewer.add_labels(data, **kwargs)
        self.viewer.layers[f"{name} tiles"].contour = 2  # tile outlines, not filled squares
        grid = result.grid
        self.result_note.setText(
            f"{len(grid)} tissue tiles of {grid.tile} px at {grid.mpp:g} µm/px "
            f"(level {grid.level}); tissue covers {100 * result.tissue.fraction:.0f}% of the slide."
        )


def _fmt_mpp(value: float | None) -> str:
    return "?" if value is None else f"{value:.3f}"
