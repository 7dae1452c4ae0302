"""The milkd dock widget: the only module that touches Qt.

Owns forms, buttons, progress and layer updates. All work is delegated to :mod:`napari_milkd.core`
and long work runs in napari worker threads (``create_worker``) over core generators: workers get
copies (paths, arrays, configs), never layers, and layers change only in the ``yielded``/``returned``
handlers, on the main thread. Cancel calls ``worker.quit()``, which takes effect at the next yield
(at most one training batch or one prediction batch away).

Workflow on the selected slide layer: facts and µm/px → *Prepare slide* (tissue, tiles, working
resolution; restores a saved session) → paint weak labels (1 contains tumour, 2 tumour-free) or import
them → *Train teacher* → correct the teacher mask by hand → *Distil student* → *Next region to review*
→ *Next round* → *Export*. Everything the user makes is autosaved in the slide's project folder.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels
from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QPointF, Qt, QTimer
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_milkd._layers import MICROMETRES, SLIDE_META, mask_layer_kwargs
from napari_milkd.core.engine.config import TrainConfig
from napari_milkd.core.errors import MilkdError
from napari_milkd.core.inference.masks import mask_from_probability
from napari_milkd.core.runtime import free_device_memory, leave_cores_for_the_gui
from napari_milkd.core.session.labels import NO_OPINION, apply_corrections, record_corrections
from napari_milkd.core.session.project import Project
from napari_milkd.core.session.weak_labels import REGION_FREE, REGION_TUMOUR, bag_labels_from_regions
from napari_milkd.core.slides.geometry import SlideWork, plan_work, tile_crops, tile_map_origins, tissue_map
from napari_milkd.core.slides.slide import level_for_mpp, open_slide
from napari_milkd.core.slides.types import LevelInfo, SlideInfo

if TYPE_CHECKING:
    import napari

#: Largest working map side: bigger editable Labels break napari's painting (texture limit).
MAX_WORK_SIDE = 16384
STAGES = ("teacher", "student")
PREVIEW_INTERVAL_S = 0.3
REVIEW_TILE_SCREEN_PX = 500

WEAK_COLORS = {None: "transparent", REGION_TUMOUR: "#ff3b3b", REGION_FREE: "#2fd16b"}
MASK_COLORS = {None: "transparent", 1: "#ffd400"}
TISSUE_COLORS = {None: "transparent", 1: "#39d98a"}
TILE_COLORS = {None: "transparent", 1: "#f5f5f5", 2: "#ffd166"}


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


def prepare_slide(path: str, mpp: float, work_mpp: float, tile: int) -> SlideWork:
    """Worker body of *Prepare slide*: tissue, tile grid and working-map geometry (headless, copies only)."""
    source = open_slide(path, mpp=mpp)
    try:
        work = plan_work(source, work_mpp=work_mpp, tile=tile)
    finally:
        source.close()
    if max(work.shape) > MAX_WORK_SIDE:
        raise MilkdError(
            f"working map would be {work.shape[1]}×{work.shape[0]} px; napari cannot paint labels above "
            f"{MAX_WORK_SIDE} px per side: choose a coarser working resolution than {work_mpp:g} µm/px"
        )
    return work


def tile_map(work: SlideWork) -> np.ndarray:
    """Tiles painted into a working-size map with alternating labels 1/2 (drawn as outlines)."""
    out = np.zeros(work.shape, np.uint8)
    t = work.grid.tile
    for r0, c0 in tile_map_origins(work.grid, work.downsample):
        out[r0 : r0 + t, c0 : c0 + t] = 1 + (r0 // t + c0 // t) % 2
    return out


class _LazyComboBox(QComboBox):
    """A combo box that fills itself (``on_popup``) the first time its list is opened."""

    def __init__(self, on_popup: Any) -> None:
        super().__init__()
        self._on_popup = on_popup

    def showPopup(self) -> None:
        if self._on_popup is not None:
            callback, self._on_popup = self._on_popup, None
            callback(self)
        super().showPopup()


class LossPlot(QWidget):
    """A small line plot of the training loss per epoch (teacher and student runs in turn)."""

    def __init__(self) -> None:
        super().__init__()
        self.values: list[float] = []
        self.setMinimumHeight(70)
        self.setToolTip("training loss per epoch")

    def set_values(self, values: list[float]) -> None:
        """Replace the plotted values and redraw."""
        self.values = list(values)
        self.update()

    def paintEvent(self, event: Any) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        rect = self.rect().adjusted(6, 6, -6, -14)
        painter.setPen(QPen(QColor("#666666"), 1))
        painter.drawRect(rect)
        if len(self.values) >= 1:
            lo, hi = min(self.values), max(self.values)
            span = (hi - lo) or 1.0
            n = max(len(self.values) - 1, 1)
            points = QPolygonF(
                [
                    QPointF(
                        rect.left() + rect.width() * i / n, rect.bottom() - rect.height() * (v - lo) / span
                    )
                    for i, v in enumerate(self.values)
                ]
            )
            painter.setPen(QPen(QColor("#ffb000"), 2))
            painter.drawPolyline(points)
            painter.setPen(QPen(QColor("#bbbbbb"), 1))
            painter.drawText(
                rect.left(), self.height() - 2, f"loss {self.values[-1]:.4f}  ({len(self.values)} ep)"
            )
        painter.end()


class TrainingPanel(QWidget):
    """Training controls shared by the slide and image-folder widgets: backbone, device, epochs, batch,
    a progress bar, a status line, a loss plot and Cancel. Owns turning job events into progress."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone_combo = QComboBox()
        self.backbone_combo.addItems(["efficientnet_lite0", "tiny", "vgg16"])
        self.backbone_combo.setToolTip(
            "efficientnet_lite0: ImageNet weights shipped with the plugin; vgg16: the paper's (needs its "
            "weights file or a network connection); tiny: seconds on a CPU, for trying things out"
        )
        self.device_combo = _LazyComboBox(self._fill_devices)
        self.device_combo.addItem("auto", "auto")
        self.device_combo.addItem("cpu", "cpu")
        self.teacher_epochs = QSpinBox(minimum=1, maximum=500, value=6)
        self.student_epochs = QSpinBox(minimum=1, maximum=1000, value=12)
        self.student_epochs.setToolTip("the student needs longer than the teacher; role reversal every third")
        self.batch_spin = QSpinBox(minimum=1, maximum=256, value=16)
        self.cancel_button = QPushButton("Cancel")
        self.progress = QProgressBar()
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.loss_plot = LossPlot()
        self.losses: list[float] = []

        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Backbone", self.backbone_combo)
        form.addRow("Device", self.device_combo)
        epochs = QHBoxLayout()
        epochs.addWidget(QLabel("teacher"))
        epochs.addWidget(self.teacher_epochs)
        epochs.addWidget(QLabel("student"))
        epochs.addWidget(self.student_epochs)
        form.addRow("Epochs", epochs)
        form.addRow("Batch size", self.batch_spin)
        self.form = form

    def add_progress_rows(self) -> None:
        """Append progress bar, status line and loss plot (after the caller's own buttons)."""
        self.form.addRow(self.progress)
        self.form.addRow(self.status)
        self.form.addRow(self.loss_plot)

    def _fill_devices(self, combo: QComboBox) -> None:
        """Probe devices (this imports torch) when the list is first opened, not when the widget opens."""
        from napari_milkd.core.runtime import available_devices

        current = combo.currentData()
        combo.clear()
        for value, text in available_devices():
            combo.addItem(text, value)
        combo.setCurrentIndex(max(0, combo.findData(current)))

    def config(self, size: int, **overrides: Any) -> TrainConfig:
        """The training configuration the form describes, for ``size``-px inputs."""
        student_epochs = int(self.student_epochs.value())
        return TrainConfig(
            backbone=self.backbone_combo.currentText(),
            size=size,
            batch_size=int(self.batch_spin.value()),
            teacher_epochs=int(self.teacher_epochs.value()),
            student_epochs=student_epochs,
            switch_every=max(1, student_epochs // 3),
            device=str(self.device_combo.currentData() or "auto"),
            **overrides,
        )

    def reset(self, text: str) -> None:
        """Clear the loss plot and show ``text`` with a busy bar."""
        self.losses = []
        self.loss_plot.set_values([])
        self.progress.setRange(0, 0)
        self.status.setText(text)

    def on_event(self, event: Any) -> None:
        """Show a job event: batch progress, prediction progress, epoch loss, role reversal."""
        from napari_milkd.core.session.jobs import job_summary

        self.status.setText(job_summary(event))
        if hasattr(event, "n_batches"):
            self.progress.setRange(0, event.n_epochs * event.n_batches)
            self.progress.setValue((event.epoch - 1) * event.n_batches + event.batch)
        elif hasattr(event, "total"):
            self.progress.setRange(0, event.total)
            self.progress.setValue(event.done)
        elif hasattr(event, "train_loss"):
            self.losses.append(float(event.train_loss))
            self.loss_plot.set_values(self.losses)


class SlideWidget(QWidget):
    """napari-milkd: weak labels in, teacher and student masks out, corrected by hand, exported."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.worker: Any = None
        self._worker_holder: list[Any] = [None]
        self.work: SlideWork | None = None
        self.slide_name: str | None = None
        self.project: Project | None = None
        self.hard: np.ndarray | None = None
        self.probabilities: dict[str, np.ndarray] = {}
        self._snapshots: dict[str, np.ndarray] = {}
        self.reviewed: set[int] = set()
        self._watched: set[int] = set()
        self._weak_labels: Labels | None = None
        self._last_preview = 0.0
        self.round = 0
        self._autosave = QTimer(self, singleShot=True, interval=600)
        self._autosave.timeout.connect(self.save_session)
        self._edit_timer = QTimer(self, singleShot=True, interval=0)
        self._edit_timer.timeout.connect(self.collect_corrections)
        self._build()
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        # Closing the viewer destroys the widget: stop the worker at its next batch (checkpoints are on disk).
        self.destroyed.connect(lambda *_, holder=self._worker_holder: holder[0] and holder[0].quit())
        self._refresh_layers()

    # --- construction ----------------------------------------------------------------------------

    def _build(self) -> None:
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
        self.target_spin = QDoubleSpinBox(decimals=2, minimum=0.1, maximum=64.0, singleStep=0.25, value=1.0)
        self.target_spin.setSuffix(" µm/px")
        self.level_note = QLabel("")
        self.tile_spin = QSpinBox(minimum=32, maximum=1024, singleStep=32, value=128)
        self.tile_spin.setSuffix(" px")
        self.prepare_button = QPushButton("Prepare slide")
        self.prepare_button.setToolTip("Find tissue and tiles at the working resolution; restore saved work.")
        self.result_note = QLabel("")
        self.result_note.setWordWrap(True)

        self.paint_tumour = QPushButton("Paint tumour")
        self.paint_tumour.setToolTip("Brush: regions that contain tumour (label 1, red)")
        self.paint_free = QPushButton("Paint tumour-free")
        self.paint_free.setToolTip("Brush: regions without tumour (label 2, green)")
        self.all_free = QPushButton("All tumour-free")
        self.all_free.setToolTip("Mark all tissue tumour-free (a negative slide); painted tumour is kept")
        self.import_button = QPushButton("Import…")
        self.import_button.setToolTip("QuPath GeoJSON or ASAP XML: Tumor → contains tumour, others → free")
        self.bag_note = QLabel("")
        self.bag_note.setWordWrap(True)

        self.training = TrainingPanel()
        t = self.training
        self.backbone_combo, self.device_combo = t.backbone_combo, t.device_combo
        self.teacher_epochs, self.student_epochs, self.batch_spin = (
            t.teacher_epochs,
            t.student_epochs,
            t.batch_spin,
        )
        self.cancel_button, self.progress, self.status, self.loss_plot = (
            t.cancel_button,
            t.progress,
            t.status,
            t.loss_plot,
        )
        self.train_teacher_button = QPushButton("Train teacher")
        self.train_student_button = QPushButton("Distil student")
        self.next_round_button = QPushButton("Next round")
        self.next_round_button.setToolTip(
            "The student (with your corrections) becomes the teacher; distil again."
        )

        self.review_button = QPushButton("Next region to review")
        self.review_note = QLabel("")
        self.review_note.setWordWrap(True)
        self.export_stage = QComboBox()
        self.export_stage.addItems(["student", "teacher"])
        self.export_format = QComboBox()
        self.export_format.addItems(["QuPath GeoJSON", "ASAP XML", "OME-Zarr labels"])
        self.export_button = QPushButton("Export…")

        slide_box = QGroupBox("1 · Slide")
        form = QFormLayout(slide_box)
        form.addRow("Layer", self.layer_combo)
        form.addRow(self.facts)
        form.addRow(self.mpp_spin, self.mpp_apply)
        form.addRow("Work at", self.target_spin)
        form.addRow("", self.level_note)
        form.addRow("Tile size", self.tile_spin)
        form.addRow(self.prepare_button)
        form.addRow(self.result_note)

        weak_box = QGroupBox("2 · Weak labels")
        weak = QVBoxLayout(weak_box)
        row = QHBoxLayout()
        row.addWidget(self.paint_tumour)
        row.addWidget(self.paint_free)
        weak.addLayout(row)
        row = QHBoxLayout()
        row.addWidget(self.all_free)
        row.addWidget(self.import_button)
        weak.addLayout(row)
        weak.addWidget(self.bag_note)

        train_box = QGroupBox("3 · Teacher and student")
        tbox = QVBoxLayout(train_box)
        tbox.addWidget(self.training)
        buttons = QHBoxLayout()
        buttons.addWidget(self.train_teacher_button)
        buttons.addWidget(self.train_student_button)
        self.training.form.addRow(buttons)
        buttons = QHBoxLayout()
        buttons.addWidget(self.next_round_button)
        buttons.addWidget(self.cancel_button)
        self.training.form.addRow(buttons)
        self.training.add_progress_rows()

        review_box = QGroupBox("4 · Review and export")
        rform = QFormLayout(review_box)
        rform.addRow(self.review_button)
        rform.addRow(self.review_note)
        rform.addRow("Mask", self.export_stage)
        rform.addRow("Format", self.export_format)
        rform.addRow(self.export_button)

        _stack_in_scroll_area(self, (slide_box, weak_box, train_box, review_box))

        self.layer_combo.currentIndexChanged.connect(self._show_facts)
        self.target_spin.valueChanged.connect(self._show_facts)
        self.mpp_apply.clicked.connect(self._apply_mpp)
        self.prepare_button.clicked.connect(self.start_prepare)
        self.paint_tumour.clicked.connect(lambda: self.start_painting(REGION_TUMOUR))
        self.paint_free.clicked.connect(lambda: self.start_painting(REGION_FREE))
        self.all_free.clicked.connect(self.mark_all_free)
        self.import_button.clicked.connect(self._import_dialog)
        self.train_teacher_button.clicked.connect(lambda: self.start_training("teacher"))
        self.train_student_button.clicked.connect(lambda: self.start_training("student"))
        self.next_round_button.clicked.connect(self.next_round)
        self.cancel_button.clicked.connect(self.cancel)
        self.review_button.clicked.connect(self.next_region)
        self.export_button.clicked.connect(self._export_dialog)
        self._update_buttons()

    def hideEvent(self, event: Any) -> None:
        """Closing the viewer hides the dock first: write edits whose autosave is still pending."""
        if self._autosave.isActive():
            self._autosave.stop()
            self.save_session()
        super().hideEvent(event)

    # --- slide layer and facts -------------------------------------------------------------------

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
        self._update_buttons()
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

    def _update_buttons(self) -> None:
        busy = self.worker is not None
        has_slide = self.selected_layer() is not None
        prepared = self.work is not None
        ckpt = self.project.checkpoints if self.project is not None else None
        has_teacher = bool(ckpt and (ckpt / "teacher.pt").exists())
        has_student = bool(ckpt and (ckpt / "student.pt").exists())
        self.prepare_button.setEnabled(has_slide and not busy)
        for button in (self.paint_tumour, self.paint_free, self.all_free, self.import_button):
            button.setEnabled(prepared and not busy)
        self.train_teacher_button.setEnabled(prepared and not busy)
        self.train_student_button.setEnabled(prepared and not busy and has_teacher)
        self.next_round_button.setEnabled(prepared and not busy and has_student)
        self.cancel_button.setEnabled(busy)
        self.review_button.setEnabled(prepared and bool(self.probabilities))
        self.export_button.setEnabled(prepared and bool(self.probabilities) and not busy)
        self.progress.setVisible(busy)

    # --- layers ----------------------------------------------------------------------------------

    def _layer_name(self, what: str) -> str:
        return f"{self.slide_name} {what}"

    def _layer(self, what: str) -> Any:
        name = self._layer_name(what)
        return self.viewer.layers[name] if name in self.viewer.layers else None  # noqa: SIM401 (LayerList)

    def _slide_geometry(self) -> dict[str, Any]:
        slide = self.viewer.layers[self.slide_name]
        scale = (float(slide.scale[-2]), float(slide.scale[-1]))
        info = _info_from_layer(slide)
        units = MICROMETRES if info.has_mpp else None
        return {"level0_scale": scale, "units": units, "mpp": info.mpp}

    def _put_layer(self, kind: str, what: str, data: np.ndarray, **extra: Any) -> Any:
        """Update the working-resolution layer ``what`` or add it (``kind``: labels/image) over the slide."""
        assert self.work is not None
        existing = self._existing(what, data.shape)
        if existing is not None:
            existing.data = data
            return existing
        geometry = self._slide_geometry()
        kwargs = mask_layer_kwargs(
            geometry["level0_scale"],
            self.work.downsample,
            self._layer_name(what),
            units=geometry["units"],
            mpp=geometry["mpp"],
            **extra,
        )
        return (
            self.viewer.add_labels(data, **kwargs)
            if kind == "labels"
            else self.viewer.add_image(data, **kwargs)
        )

    def _put_labels(self, what: str, data: np.ndarray, colors: dict[Any, str], **extra: Any) -> Labels:
        return self._put_layer("labels", what, data, colormap=DirectLabelColormap(color_dict=colors), **extra)

    def _put_image(self, what: str, data: np.ndarray, **extra: Any) -> Image:
        return self._put_layer("image", what, data, **extra)

    def _existing(self, what: str, shape: tuple[int, ...]) -> Any:
        """The layer ``what`` if it exists with ``shape``; a layer of another shape is removed."""
        layer = self._layer(what)
        if layer is not None and layer.data.shape != shape:
            self.viewer.layers.remove(layer)
            return None
        return layer

    # --- 1 · prepare -----------------------------------------------------------------------------

    def start_prepare(self) -> None:
        """Find tissue and tiles for the selected slide in a worker, then set up (or restore) its session."""
        layer = self.selected_layer()
        if layer is None:
            show_error("milkd: select a slide layer first")
            return
        info = _info_from_layer(layer)
        if not info.has_mpp:
            show_error(f"milkd: {layer.name} has no µm/px; enter it and press 'Set µm/px' first")
            return
        if self.worker is not None:
            show_warning("milkd: wait for the running job, or cancel it")
            return
        self.status.setText("finding tissue and tiles…")
        self.progress.setRange(0, 0)
        worker = create_worker(
            prepare_slide,
            info.path,
            info.mpp,
            float(self.target_spin.value()),
            int(self.tile_spin.value()),
            _ignore_errors=True,  # shown once, by _on_error, as a one-line notification
        )
        worker.returned.connect(lambda work: self._prepared(layer.name, info, work))
        self._start(worker)

    def _prepared(self, name: str, info: SlideInfo, work: SlideWork) -> None:
        self.work = work
        self.slide_name = name
        self.project = Project.for_slide(info.path)
        self.probabilities = {}
        self._snapshots = {}
        self.reviewed = set()
        tissue = tissue_map(work).astype(np.uint8)
        self._put_labels("tissue", tissue, TISSUE_COLORS, opacity=0.25, visible=False)
        tiles = self._put_labels("tiles", tile_map(work), TILE_COLORS, opacity=0.8)
        tiles.contour = 2
        self._restore_session()
        grid = work.grid
        self.result_note.setText(
            f"{len(grid)} tissue tiles of {grid.tile} px at {grid.mpp:g} µm/px (level {grid.level}); "
            f"tissue covers {100 * work.tissue.fraction:.0f}% of the slide.<br>"
            f"Saved in <i>{self.project.root.name}</i>"
        )
        self.result_note.setTextFormat(Qt.TextFormat.RichText)
        self.result_note.setToolTip(f"Project folder (autosaved): {self.project.root}")
        self.status.setText("")
        self.project.save_settings(
            {
                "slide": info.path,
                "mpp": info.mpp,
                "work_mpp": grid.mpp,
                "tile": grid.tile,
                "shape": list(work.shape),
            }
        )
        self._update_bag_note()
        self._update_buttons()

    def _restore_session(self) -> None:
        """Bring back weak labels, corrections and masks saved for this slide at this resolution."""
        assert self.work is not None and self.project is not None
        shape = self.work.shape
        restored = []
        saved = self.project.load_array("weak_labels")
        weak = saved[0] if saved is not None and saved[0].shape == shape else np.zeros(shape, np.uint8)
        if saved is not None and saved[0].shape == shape:
            restored.append("weak labels")
        layer = self._put_labels("weak labels", weak, WEAK_COLORS, opacity=0.45)
        self._weak_labels = layer  # kept: napari may remove the layer before the dock is hidden on close
        layer.brush_size = max(10, self.work.grid.tile // 2)
        layer.events.paint.connect(self._on_weak_paint)
        layer.events.data.connect(self._on_weak_paint)
        saved = self.project.load_array("corrections")
        self.hard = saved[0] if saved is not None and saved[0].shape == shape else None
        if self.hard is not None:
            restored.append(f"{int((self.hard != NO_OPINION).sum())} corrected pixels")
        else:
            self.hard = np.full(shape, NO_OPINION, np.uint8)
        for stage in STAGES:
            saved = self.project.load_array(f"{stage}_probability")
            if saved is not None and saved[0].shape == shape:
                self._show_stage(stage, saved[0].astype(np.float32))
                restored.append(f"{stage} mask")
        if restored:
            show_info(f"milkd: restored {', '.join(restored)} from {self.project.root}")

    # --- 2 · weak labels -------------------------------------------------------------------------

    def weak_layer(self) -> Labels | None:
        """The weak-labels layer of the prepared slide."""
        return self._layer("weak labels") if self.work is not None else None

    def start_painting(self, value: int) -> None:
        """Select the weak-labels layer in paint mode with ``value`` (1 contains tumour, 2 tumour-free)."""
        layer = self.weak_layer()
        if layer is None:
            show_error("milkd: prepare the slide first")
            return
        self.viewer.layers.selection.active = layer
        layer.selected_label = value
        layer.mode = "paint"

    def mark_all_free(self) -> None:
        """Mark all tissue tumour-free (a negative slide); painted tumour regions are kept."""
        layer = self.weak_layer()
        if layer is None or self.work is None:
            return
        data = layer.data.copy()
        data[(tissue_map(self.work)) & (data != REGION_TUMOUR)] = REGION_FREE
        layer.data = data
        self._on_weak_paint()

    def import_regions(self, path: str | Path) -> None:
        """Add regions from a QuPath GeoJSON or ASAP XML file (Tumor → contains tumour, others → free)."""
        from napari_milkd.core.annotations import labels_from_annotations, read_asap_xml, read_geojson

        layer = self.weak_layer()
        if layer is None or self.work is None or self.slide_name is None:
            show_error("milkd: prepare the slide first")
            return
        try:
            info = _info_from_layer(self.viewer.layers[self.slide_name])
            reader = read_asap_xml if str(path).lower().endswith(".xml") else read_geojson
            result = reader(path, slide_shape_l0=info.shape)
            imported = labels_from_annotations(
                result.annotations, self.work.shape, self.work.downsample, unknown_label=REGION_FREE
            )
        except MilkdError as exc:
            show_error(f"milkd: {exc}")
            return
        data = layer.data.copy()
        data[imported > 0] = imported[imported > 0]
        layer.data = data
        self._on_weak_paint()
        for warning in result.warnings[:3]:
            show_warning(f"milkd: {warning}")
        show_info(f"milkd: imported {len(result.annotations)} regions from {Path(path).name}")

    def _import_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Import regions", "", "Annotations (*.geojson *.json *.xml)"
        )
        if path:
            self.import_regions(path)

    def _on_weak_paint(self, *_: object) -> None:
        self._update_bag_note()
        self._autosave.start()

    def bag_counts(self) -> tuple[int, int]:
        """``(positive, negative)`` bags the current weak labels give."""
        layer = self.weak_layer()
        if layer is None or self.work is None:
            return 0, 0
        labels = bag_labels_from_regions(self.work.grid, np.asarray(layer.data), self.work.downsample)
        return labels.n_positive, labels.n_negative

    def _update_bag_note(self) -> None:
        pos, neg = self.bag_counts()
        missing = " — paint both kinds to train" if not (pos and neg) else ""
        self.bag_note.setText(f"<b>{pos}</b> positive and <b>{neg}</b> negative bags (tiles){missing}")

    # --- 3 · training ----------------------------------------------------------------------------

    def train_config(self) -> TrainConfig:
        """The training configuration the form describes."""
        assert self.work is not None
        return self.training.config(self.work.grid.tile)

    def start_training(self, stage: str, *, resume: bool = True) -> None:
        """Train the teacher, or distil the student from it, in a worker; then predict the slide."""
        from napari_milkd.core.session.jobs import slide_stage_job

        layer = self.weak_layer()
        if layer is None or self.work is None or self.project is None or self.slide_name is None:
            show_error("milkd: prepare the slide first")
            return
        if self.worker is not None:
            show_warning("milkd: a job is already running")
            return
        pos, neg = self.bag_counts()
        if not (pos and neg):
            kind = "positive ('contains tumour')" if not pos else "negative ('tumour-free')"
            show_error(f"milkd: cannot train without {kind} bags: paint or import some first")
            return
        self.save_session()
        info = _info_from_layer(self.viewer.layers[self.slide_name])
        teacher = self.project.checkpoints / "teacher.pt"
        if stage == "student" and not teacher.exists():
            show_error("milkd: train the teacher first")
            return
        self.training.reset(f"{stage}: starting…")
        self._last_preview = 0.0
        leave_cores_for_the_gui()
        worker = create_worker(
            slide_stage_job,
            stage,
            info.path,
            info.mpp,
            self.work,
            np.array(layer.data, dtype=np.uint8, copy=True),
            self.train_config(),
            self.project.checkpoints,
            hard_labels=None if stage == "teacher" or self.hard is None else self.hard.copy(),
            teacher_checkpoint=teacher if stage == "student" else None,
            resume=resume,
            _ignore_errors=True,
        )
        worker.yielded.connect(self._on_event)
        worker.returned.connect(self._stage_done)
        self._start(worker)

    def next_round(self) -> None:
        """The student (its maps and corrections included) becomes the teacher; distil a new student."""
        if self.project is None or self.worker is not None:
            return
        student = self.project.checkpoints / "student.pt"
        if not student.exists():
            show_error("milkd: distil a student first")
            return
        from napari_milkd.core.atomic import atomic_path

        with atomic_path(self.project.checkpoints / "teacher.pt") as tmp:
            shutil.copyfile(student, tmp)
        if "student" in self.probabilities:
            self._show_stage("teacher", self.probabilities["student"])
        self.round += 1
        self.start_training("student", resume=False)

    def cancel(self) -> None:
        """Stop the running job at its next batch; the last finished epoch stays on disk."""
        if self.worker is not None:
            self.status.setText("cancelling after this batch…")
            self.worker.quit()

    def _start(self, worker: Any) -> None:
        self.worker = worker
        self._worker_holder[0] = worker
        worker.errored.connect(self._on_error)
        if isinstance(worker, GeneratorWorker):  # only generator workers can be aborted
            worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        self._update_buttons()
        worker.start()

    def _on_event(self, event: Any) -> None:
        self.training.on_event(event)
        if getattr(event, "probability", None) is not None and event.rows_done:
            self._show_preview(event)

    def _show_preview(self, event: Any) -> None:
        """The map appearing band by band while the slide is predicted, at most a few refreshes a second."""
        now = time.monotonic()
        if event.done < event.total and now - self._last_preview < PREVIEW_INTERVAL_S:
            return
        self._last_preview = now
        layer = self._layer("preview")
        if layer is None:
            layer = self._put_image(
                "preview",
                np.zeros_like(event.probability),
                colormap="magma",
                opacity=0.6,
                contrast_limits=(0, 1),
            )
        layer.data[: event.rows_done] = event.probability[: event.rows_done]
        layer.refresh()

    def _drop_preview(self) -> None:
        layer = self._layer("preview") if self.slide_name else None
        if layer is not None:
            self.viewer.layers.remove(layer)

    def _stage_done(self, output: Any) -> None:
        self._drop_preview()
        self._show_stage(output.stage, output.probability)
        if self.project is not None:
            self.project.save_array(f"{output.stage}_probability", output.probability.astype(np.float16))
        best = output.result.best_epoch
        self.status.setText(
            f"{output.stage} done: {output.result.epochs} epoch(s), selected epoch {best} "
            f"({output.n_positive} positive / {output.n_negative} negative bags)"
        )
        show_info(f"milkd: {output.stage} mask ready — paint or erase in it to correct it")

    def _on_error(self, exc: Exception) -> None:
        message = _error_text(exc)
        self._drop_preview()
        show_error(f"milkd: {message}")
        self.status.setText(f"failed: {message}")

    def _on_aborted(self) -> None:
        self._drop_preview()
        self.status.setText("cancelled — the last finished epoch is kept; train again to continue from it")
        show_info("milkd: job cancelled")

    def _on_finished(self) -> None:
        self.worker = None
        self._worker_holder[0] = None
        self._update_buttons()
        free_device_memory()  # also after Cancel: the abandoned job's GPU memory goes back

    # --- masks and corrections -------------------------------------------------------------------

    def _show_stage(self, stage: str, probability: np.ndarray) -> None:
        """Probability image + editable mask for ``stage``; corrections applied; disagreement updated."""
        assert self.work is not None and self.hard is not None
        self.probabilities[stage] = probability
        mask = apply_corrections(mask_from_probability(probability, tissue_map(self.work)), self.hard)
        self._put_image(f"{stage} probability", probability, colormap="magma", opacity=0.5, visible=False)
        layer = self._put_labels(f"{stage} mask", mask, MASK_COLORS, opacity=0.5)
        self._snapshots[stage] = mask.copy()
        if id(layer) not in self._watched:
            # napari emits ``paint`` before it writes the pixels: re-read once control returns to Qt.
            layer.events.paint.connect(lambda *_: self._edit_timer.start())
            self._watched.add(id(layer))
        if len(self.probabilities) == 2:
            gap = np.abs(self.probabilities["teacher"] - self.probabilities["student"])
            self._put_image("disagreement", gap, colormap="viridis", opacity=0.6, visible=False)
        self._update_buttons()

    def collect_corrections(self) -> None:
        """After a paint/erase in a mask layer: what changed since the last look becomes ground truth.

        Pixels painted with the value they already had are not recorded (they agree with the model).
        """
        if self.hard is None:
            return
        for stage in STAGES:
            layer = self._layer(f"{stage} mask")
            before = self._snapshots.get(stage)
            if layer is None or before is None or before.shape != layer.data.shape:
                continue
            after = np.asarray(layer.data)
            self.hard = record_corrections(self.hard, before, after)
            self._snapshots[stage] = after.copy()
        n = int((self.hard != NO_OPINION).sum())
        self.review_note.setText(f"{n} corrected pixels (used as ground truth in the next distillation)")
        self._autosave.start()

    def save_session(self) -> None:
        """Write weak labels and corrections to the project folder (atomic)."""
        if self.project is None:
            return
        layer = self.weak_layer() or self._weak_labels
        try:
            if layer is not None:
                self.project.save_array("weak_labels", np.asarray(layer.data, dtype=np.uint8))
            if self.hard is not None:
                self.project.save_array("corrections", self.hard)
        except OSError as exc:
            show_error(f"milkd: could not save to {self.project.root}: {exc}")

    # --- 4 · review and export -------------------------------------------------------------------

    def next_region(self) -> int | None:
        """Move the camera to the unreviewed tile where teacher and student disagree most (or, with one
        model, where it is least certain); return that tile's index."""
        if self.work is None or not self.probabilities:
            return None
        index = np.arange(len(self.work.grid))
        if len(self.probabilities) == 2:
            score_map = np.abs(self.probabilities["teacher"] - self.probabilities["student"])
        else:
            prob = next(iter(self.probabilities.values()))
            score_map = 0.5 - np.abs(prob - 0.5)
        scores = tile_crops(score_map.astype(np.float32), self.work, index).mean(axis=(1, 2))
        scores[list(self.reviewed)] = -1
        best = int(np.argmax(scores))
        if scores[best] < 0:
            self.review_note.setText("every tile has been reviewed")
            return None
        self.reviewed.add(best)
        geometry = self._slide_geometry()
        sy, sx = geometry["level0_scale"]
        y0, x0, y1, x1 = self.work.grid.bounds_l0(best)
        camera = getattr(self.viewer, "scene", self.viewer).camera  # napari ≥ 0.9: viewer.scene.camera
        camera.center = ((y0 + y1) / 2 * sy, (x0 + x1) / 2 * sx)
        camera.zoom = REVIEW_TILE_SCREEN_PX / ((y1 - y0) * sy)  # the tile fills about 500 screen pixels
        self.review_note.setText(
            f"tile {best}: score {scores[best]:.2f} — {len(self.reviewed)} of {len(index)} tiles reviewed"
        )
        return best

    def export(self, stage: str, fmt: str, path: str | Path) -> Path:
        """Export ``stage``'s (corrected) mask as ``"geojson"``, ``"asap"`` or ``"ome-zarr"`` to ``path``."""
        from napari_milkd.core.annotations import (
            mask_to_polygons,
            write_asap_xml,
            write_geojson,
            write_ome_zarr_labels,
        )

        layer = self._layer(f"{stage} mask")
        if layer is None or self.work is None or self.slide_name is None:
            raise MilkdError(f"there is no {stage} mask to export yet")
        mask = np.asarray(layer.data) > 0
        mpp = _info_from_layer(self.viewer.layers[self.slide_name]).mpp
        target = Path(path)
        if fmt == "ome-zarr":
            write_ome_zarr_labels(
                target, mask.astype(np.uint8), name=stage, mpp=mpp, downsample=self.work.downsample
            )
            return target
        polygons = mask_to_polygons(mask, self.work.downsample, simplify_px=1.0)
        if fmt == "asap":
            write_asap_xml(target, polygons)
        else:
            write_geojson(target, polygons, mpp=mpp)
        return target

    def _export_dialog(self) -> None:
        stage = self.export_stage.currentText()
        fmt = {0: "geojson", 1: "asap", 2: "ome-zarr"}[self.export_format.currentIndex()]
        suffix = {"geojson": ".geojson", "asap": ".xml", "ome-zarr": ".zarr"}[fmt]
        start = str(self.project.exports / f"{stage}{suffix}") if self.project else ""
        if fmt == "ome-zarr":
            path = QFileDialog.getSaveFileName(self, "Export OME-Zarr labels", start, "OME-Zarr (*.zarr)")[0]
        else:
            path = QFileDialog.getSaveFileName(self, "Export mask", start, f"*{suffix}")[0]
        if not path:
            return
        try:
            written = self.export(stage, fmt, path)
        except (MilkdError, OSError) as exc:
            show_error(f"milkd: export failed: {exc}")
            return
        show_info(f"milkd: wrote {written}")


def _stack_in_scroll_area(owner: QWidget, boxes: tuple[QWidget, ...]) -> None:
    """Lay ``boxes`` out top to bottom in a vertically scrolling area filling ``owner``."""
    inner = QWidget()
    layout = QVBoxLayout(inner)
    for box in boxes:
        layout.addWidget(box)
    layout.addStretch(1)
    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    scroll.setWidget(inner)
    outer = QVBoxLayout(owner)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(scroll)
    owner.setMinimumWidth(440)


def _error_text(exc: Exception) -> str:
    """A user-facing line for a worker's exception: our own messages as they are, others with their type."""
    return str(exc) if isinstance(exc, MilkdError) else f"{type(exc).__name__}: {exc}"


def _fmt_mpp(value: float | None) -> str:
    return "?" if value is None else f"{value:.3f}"


class ImageFolderWidget(QWidget):
    """The paper's setting: a folder of images with image-level labels in a CSV (e.g. GlaS).

    Load the bags, train teacher and student in the background, then review the images one by one with
    both masks (and the ground truth when a masks folder is given). Checkpoints go to a run folder next to
    the images (``<images>.milkd``, or the user cache when that folder is read-only), so a cancelled run
    continues where it stopped.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.worker: Any = None
        self.bags: Any = None
        self.output: Any = None
        self.index = 0

        self.images_edit = QLineEdit()
        self.csv_edit = QLineEdit()
        self.masks_edit = QLineEdit()
        self.masks_edit.setPlaceholderText("optional: ground truth for review only")
        self.name_column = QLineEdit("name")
        self.label_column = QLineEdit("label")
        self.positive_value = QLineEdit("tumour")
        self.patient_column = QLineEdit()
        self.patient_column.setPlaceholderText("optional: keeps a patient on one side of the split")
        self.size_spin = QSpinBox(minimum=32, maximum=1024, singleStep=32, value=128)
        self.size_spin.setSuffix(" px")
        self.load_button = QPushButton("Load images")
        self.load_note = QLabel("")
        self.load_note.setWordWrap(True)
        self.training = TrainingPanel()
        self.train_button = QPushButton("Train teacher and student")
        self.prev_button = QPushButton("◀ Previous")
        self.next_button = QPushButton("Next ▶")
        self.review_note = QLabel("")
        self.review_note.setWordWrap(True)

        data_box = QGroupBox("1 · Images and labels")
        form = QFormLayout(data_box)
        for label, edit, title, is_dir in (
            ("Images", self.images_edit, "Image folder", True),
            ("Label CSV", self.csv_edit, "Label CSV", False),
            ("Masks", self.masks_edit, "Mask folder", True),
        ):
            row = QHBoxLayout()
            row.addWidget(edit)
            browse = QPushButton("…")
            browse.setMaximumWidth(32)
            browse.clicked.connect(lambda _=False, e=edit, t=title, d=is_dir: self._browse(e, t, d))
            row.addWidget(browse)
            form.addRow(label, row)
        form.addRow("Name column", self.name_column)
        form.addRow("Label column", self.label_column)
        form.addRow("Positive value", self.positive_value)
        form.addRow("Patient column", self.patient_column)
        form.addRow("Image size", self.size_spin)
        form.addRow(self.load_button)
        form.addRow(self.load_note)

        train_box = QGroupBox("2 · Teacher and student")
        tbox = QVBoxLayout(train_box)
        tbox.addWidget(self.training)
        buttons = QHBoxLayout()
        buttons.addWidget(self.train_button)
        buttons.addWidget(self.training.cancel_button)
        self.training.form.addRow(buttons)
        self.training.add_progress_rows()

        review_box = QGroupBox("3 · Review image by image")
        rbox = QVBoxLayout(review_box)
        row = QHBoxLayout()
        row.addWidget(self.prev_button)
        row.addWidget(self.next_button)
        rbox.addLayout(row)
        rbox.addWidget(self.review_note)

        _stack_in_scroll_area(self, (data_box, train_box, review_box))

        self.load_button.clicked.connect(self.start_load)
        self.train_button.clicked.connect(self.start_training)
        self.training.cancel_button.clicked.connect(lambda: self.worker is not None and self.worker.quit())
        self.prev_button.clicked.connect(lambda: self.show_image(self.index - 1))
        self.next_button.clicked.connect(lambda: self.show_image(self.index + 1))
        self._update_buttons()

    def _browse(self, edit: QLineEdit, title: str, is_dir: bool) -> None:
        if is_dir:
            path = QFileDialog.getExistingDirectory(self, title)
        else:
            path = QFileDialog.getOpenFileName(self, title, "", "CSV (*.csv *.tsv *.txt)")[0]
        if path:
            edit.setText(path)

    def _update_buttons(self) -> None:
        busy = self.worker is not None
        self.load_button.setEnabled(not busy)
        self.train_button.setEnabled(not busy and self.bags is not None)
        self.training.cancel_button.setEnabled(busy)
        self.training.progress.setVisible(busy)
        reviewable = self.output is not None
        self.prev_button.setEnabled(reviewable and self.index > 0)
        self.next_button.setEnabled(reviewable and self.bags is not None and self.index < len(self.bags) - 1)

    def run_dir(self) -> Path:
        """Where checkpoints go: ``<images folder>.milkd`` beside the images, or in the user cache when
        that folder is read-only (see :func:`~napari_milkd.core.session.project.default_project_dir`)."""
        from napari_milkd.core.session.project import default_project_dir

        return default_project_dir(self.images_edit.text())

    def _start(self, worker: Any, on_done: Any) -> None:
        self.worker = worker
        worker.returned.connect(on_done)
        worker.errored.connect(self._on_error)
        if isinstance(worker, GeneratorWorker):
            worker.yielded.connect(self.training.on_event)
            worker.aborted.connect(
                lambda: self.training.status.setText(
                    "cancelled — train again to continue from the last epoch"
                )
            )
        worker.finished.connect(self._on_finished)
        self._update_buttons()
        worker.start()

    def _on_finished(self) -> None:
        self.worker = None
        self._update_buttons()

    def _on_error(self, exc: Exception) -> None:
        message = _error_text(exc)
        show_error(f"milkd: {message}")
        self.training.status.setText(f"failed: {message}")

    def start_load(self) -> None:
        """Read images, labels (and masks) in a worker."""
        from napari_milkd.core.engine.datasets import load_image_folder

        if self.worker is not None:
            return
        if not self.images_edit.text() or not self.csv_edit.text():
            show_error("milkd: choose an image folder and a label CSV")
            return
        self.training.reset("loading images…")
        worker = create_worker(
            load_image_folder,
            self.images_edit.text(),
            self.csv_edit.text(),
            self.name_column.text(),
            self.label_column.text(),
            self.positive_value.text(),
            int(self.size_spin.value()),
            masks_dir=self.masks_edit.text() or None,
            patient_column=self.patient_column.text() or None,
            _ignore_errors=True,
        )
        self._start(worker, self._loaded)

    def _loaded(self, bags: Any) -> None:
        self.bags = bags
        self.output = None
        skipped = f", {len(bags.skipped)} rows skipped" if bags.skipped else ""
        self.load_note.setText(f"{len(bags)} images: {bags.n_pos} positive, {bags.n_neg} negative{skipped}")
        self.training.status.setText("")

    def start_training(self) -> None:
        """Train teacher then student in a worker, then predict every image."""
        from napari_milkd.core.session.folder_jobs import folder_training_job

        if self.bags is None or self.worker is not None:
            return
        self.training.reset("teacher: starting…")
        config = self.training.config(int(self.bags.images.shape[1]))
        worker = create_worker(folder_training_job, self.bags, config, self.run_dir(), _ignore_errors=True)
        self._start(worker, self._trained)

    def _trained(self, output: Any) -> None:
        self.output = output
        self.training.status.setText(f"done — checkpoints in {output.run_dir}")
        self.show_image(0)

    def show_image(self, index: int) -> None:
        """Show image ``index`` with the teacher's and student's masks (and its ground truth)."""
        if self.bags is None or self.output is None:
            return
        index = int(np.clip(index, 0, len(self.bags) - 1))
        self.index = index
        layers: list[tuple[str, np.ndarray, str, dict[str, Any]]] = [
            ("image", self.bags.images[index], "image", {"rgb": True}),
            ("teacher mask", (self.output.teacher[index] > 0.5).astype(np.uint8), "labels", {"opacity": 0.4}),
            ("student mask", (self.output.student[index] > 0.5).astype(np.uint8), "labels", {"opacity": 0.5}),
        ]
        if self.bags.masks is not None:
            truth = self.bags.masks[index].astype(np.uint8)
            layers.append(("ground truth", truth, "labels", {"opacity": 0.4, "visible": False}))
        for what, data, kind, kwargs in layers:
            name = f"milkd folder {what}"
            if name in self.viewer.layers:
                self.viewer.layers[name].data = data
            elif kind == "image":
                self.viewer.add_image(data, name=name, **kwargs)
            else:
                colors = {None: "transparent", 1: "#ffd400" if what != "ground truth" else "#00e5ff"}
                self.viewer.add_labels(
                    data, name=name, colormap=DirectLabelColormap(color_dict=colors), **kwargs
                )
        label = "positive" if self.bags.labels[index] else "negative"
        student = self.output.student[index] > 0.5
        text = f"{index + 1}/{len(self.bags)} · {self.bags.names[index]} · {label} bag"
        text += f" · student covers {100 * student.mean():.0f}%"
        if self.bags.masks is not None:
            truth = self.bags.masks[index] > 0
            denom = student.sum() + truth.sum()
            f1 = 1.0 if denom == 0 else 2 * (student & truth).sum() / denom
            text += f" · F1 vs ground truth {f1:.2f}"
        self.review_note.setText(text)
        self._update_buttons()
