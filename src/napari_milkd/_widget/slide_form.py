"""The slide widget's face: its four sections, the slide layer to work on, its facts, and which
buttons may be pressed.

:class:`SlideForm` builds the controls (1 · Slide, 2 · Weak labels, 3 · Teacher and student, 4 · Review
and export), follows the viewer's slide layers, shows the selected slide's facts, lets the user give
a µm/px the file lacks, and enables buttons from a few yes/no facts. It holds no workflow state:
:class:`~napari_milkd._widget.slide_widget.SlideWidget` wires the workflow buttons to its session.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_milkd._widget.map_view import MapView
from napari_milkd._widget.mask_style import MaskStyle
from napari_milkd._widget.qt_helpers import (
    enable_with_reasons,
    fmt_mpp,
    notify_error,
    notify_info,
    scroll_into_view,
    stack_in_scroll_area,
)
from napari_milkd._widget.round_list import RoundList
from napari_milkd._widget.slide_buttons import SlideState, button_reasons
from napari_milkd._widget.slide_layers import SlideLayers, info_from_layer, slide_layers
from napari_milkd._widget.slide_list import SlideList, give_layer_mpp
from napari_milkd._widget.slide_open import SlideOpener
from napari_milkd._widget.training_panel import TrainingPanel
from napari_milkd.core.errors import MilkdError
from napari_milkd.core.session.project import PROJECTS_ENV, choose_projects_root, projects_root
from napari_milkd.core.session.weak_labels import BAG_RULES, bag_rule
from napari_milkd.core.slides.slide import level_for_mpp
from napari_milkd.core.slides.types import SlideInfo

if TYPE_CHECKING:
    import napari
    from napari.layers import Image

    from napari_milkd.core.session.slide_session import SlideSession

#: Menu paths the form's hints quote, as napari shows them (a GUI test checks them in the running app).
OPEN_MENU = ("File", "Open File(s)…")
SAMPLE_MENU = ("File", "Open Sample", "Synthetic H&E slide with a tumour (milkd)")
NO_SLIDE = (
    f"Open a slide: 'Open slide…', drag it here or use {' ▸ '.join(OPEN_MENU)}; "
    f"or the sample: {' ▸ '.join(SAMPLE_MENU)}."
)
#: The dock's sections, top to bottom.
SECTIONS = ("slide", "weak", "train", "review")
#: The bag rules the "Tumour-free tiles" box offers, the default first.
BAG_RULE_CHOICES = {"scribbles": "scribbles: all paint in the tile", "regions": "regions: ≥ 90 % painted"}
#: Export formats in the order of the format box, as :meth:`SlideSession.export` names them.
EXPORT_FORMATS = (
    ("QuPath GeoJSON", "geojson", ".geojson"),
    ("ASAP XML", "asap", ".xml"),
    ("OME-Zarr labels", "ome-zarr", ".zarr"),
)


def facts_html(info: SlideInfo) -> str:
    """The slide's file, vendor, resolution, objective and pyramid levels, as rich text."""
    rows = "".join(
        f"<tr><td>{i}</td><td>{lv.width} × {lv.height}</td><td>{lv.downsample:.3f}</td>"
        f"<td>{fmt_mpp(info.level_mpp(i))}</td></tr>"
        for i, lv in enumerate(info.levels)
    )
    mpp_text = (
        f"{info.mpp_x:.4f} × {info.mpp_y:.4f} µm/px <i>({info.mpp_source})</i>"
        if info.has_mpp
        else "<b style='color:#ffb000'>unknown — enter it below</b>"
    )
    objective = f"{info.objective_power:g}×" if info.objective_power else "not stated"
    return (
        f"<b>{Path(info.path).name}</b> ({info.vendor})<br>Resolution: {mpp_text}<br>"
        f"Objective: {objective}<br><table cellspacing='4'><tr><th>level</th><th>size</th>"
        f"<th>downsample</th><th>µm/px</th></tr>{rows}</table>"
    )


def _row(*widgets: QWidget) -> QHBoxLayout:
    row = QHBoxLayout()
    for widget in widgets:
        row.addWidget(widget)
    return row


class SlideForm(SlideOpener, QWidget):
    """The controls of the slide widget in four numbered sections, over the slide layers of ``viewer``."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = viewer
        self.layer_combo = QComboBox()
        self.open_button = QPushButton("Open slide…")
        self.open_button.setToolTip("Open a whole-slide image with milkd's reader (SVS, NDPI, MRXS, TIFF, …)")
        self.facts = QLabel(NO_SLIDE)
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
        self.projects_root = projects_root()
        self.projects_note = QLabel("")
        self.projects_note.setWordWrap(True)
        self.projects_button = QPushButton("Change…")
        self.projects_button.setToolTip(
            "Choose the folder new projects go to (remembered). Slides are never written to."
        )
        self._show_projects_root()
        self.slide_list = SlideList()  # the slides open, their state, training on all of them
        self.prepare_button = QPushButton("Prepare slide")
        self.prepare_button.setToolTip("Find tissue and tiles at the working resolution; restore saved work.")
        self.result_note = QLabel("")
        self.result_note.setWordWrap(True)
        self.result_note.setTextFormat(Qt.TextFormat.RichText)

        self.paint_tumour = QPushButton("Paint tumour")
        self.paint_tumour.setToolTip("Brush: regions that contain tumour (label 1, red)")
        self.paint_free = QPushButton("Paint tumour-free")
        self.paint_free.setToolTip("Brush: regions without tumour (label 2, green)")
        self.all_free = QPushButton("All tumour-free")
        self.all_free.setToolTip("Mark all tissue tumour-free (a negative slide); painted tumour is kept")
        self.import_button = QPushButton("Import…")
        self.import_button.setToolTip("QuPath GeoJSON or ASAP XML; shows each class and its label first")
        self.undo_import_button = QPushButton("Undo import")
        self.undo_import_button.setToolTip("Put back what the last import changed")
        self.bag_note = QLabel("")
        self.bag_note.setWordWrap(True)
        self.bag_note.setTextFormat(Qt.TextFormat.RichText)
        self.bag_rule_combo = QComboBox()
        for name, text in BAG_RULE_CHOICES.items():
            self.bag_rule_combo.addItem(text, name)
        self.bag_rule_combo.setToolTip(
            "When a painted tile counts as tumour-free (a negative bag). Scribbles: all paint in the tile "
            "is tumour-free and it is mostly tissue. Regions (drawn or imported outlines): ≥ 90 % painted."
        )

        self.training = TrainingPanel()
        self.train_teacher_button = QPushButton("Train teacher")
        self.train_teacher_button.setToolTip("Train the teacher on the weak labels, then predict the slide.")
        self.train_student_button = QPushButton("Distil student")
        self.train_student_button.setToolTip("Distil the student from the teacher and your corrections.")
        self.next_round_button = QPushButton("Next round")
        self.next_round_button.setToolTip(
            "The student (with your corrections) becomes the teacher; distil again."
        )
        self.round_list = RoundList()  # rounds kept in the project, and Go back
        self.use_run_button = QPushButton("Use a trained run…")
        self.use_run_button.setToolTip(
            "Predict this slide with the teacher and student of a run trained elsewhere "
            "(milkd train --slides, or a slide group's checkpoints folder)."
        )

        self.mask_style = MaskStyle()
        #: The prepared slide's workflow (set by the widget); None until *Prepare slide* has run once.
        self.session: SlideSession | None = None
        #: The layers over the chosen slide (masks, weak labels, tiles, the map).
        self.layers = SlideLayers(viewer)
        self.map_view = MapView(self.layers, lambda: self.session)
        self.review_button = QPushButton("Next region to review")
        self.review_button.setToolTip("Go to the tile where the models disagree most (or are least sure).")
        self.review_note = QLabel("")
        self.review_note.setWordWrap(True)
        self.export_stage = QComboBox()
        self.export_stage.addItems(["student", "teacher"])
        self.export_format = QComboBox()
        self.export_format.addItems([text for text, _, _ in EXPORT_FORMATS])
        self.export_button = QPushButton("Export…")
        self.export_button.setToolTip("Write the chosen mask (with your corrections) in the chosen format.")
        #: Each workflow button's own tooltip; a greyed button's tooltip says why instead.
        self._tooltips = {name: getattr(self, name).toolTip() for name in button_reasons(SlideState())}
        self._lay_out()
        self.export_stage.currentIndexChanged.connect(lambda *_: self._update_buttons())
        self.layer_combo.currentIndexChanged.connect(self._show_facts)
        self.target_spin.valueChanged.connect(self._show_facts)
        self.mpp_apply.clicked.connect(self._apply_mpp)
        self.projects_button.clicked.connect(self.choose_projects_folder)
        self.open_button.clicked.connect(self.open_slide_dialog)
        self.viewer.layers.events.inserted.connect(self.warn_about_plain_slide_layers)
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)

    def _lay_out(self) -> None:
        slide_box = QGroupBox("1 · Slide")
        form = QFormLayout(slide_box)
        form.addRow("Layer", _row(self.layer_combo, self.open_button))
        form.addRow("Slides", self.slide_list)
        form.addRow(self.facts)
        form.addRow(self.mpp_spin, self.mpp_apply)
        form.addRow("Work at", self.target_spin)
        form.addRow("", self.level_note)
        form.addRow("Tile size", self.tile_spin)
        form.addRow("Projects in", _row(self.projects_note, self.projects_button))
        form.addRow(self.prepare_button)
        form.addRow(self.result_note)

        weak_box = QGroupBox("2 · Weak labels")
        weak = QVBoxLayout(weak_box)
        weak.addLayout(_row(self.paint_tumour, self.paint_free))
        weak.addLayout(_row(self.all_free, self.import_button, self.undo_import_button))
        weak.addLayout(_row(QLabel("Tumour-free tiles"), self.bag_rule_combo))
        weak.addWidget(self.bag_note)

        train_box = QGroupBox("3 · Teacher and student")
        QVBoxLayout(train_box).addWidget(self.training)
        self.training.form.addRow(_row(self.train_teacher_button, self.train_student_button))
        self.training.form.addRow(_row(self.next_round_button, self.training.cancel_button))
        self.training.form.addRow("Round", self.round_list)
        self.training.form.addRow(self.use_run_button)
        self.training.add_progress_rows()

        review_box = QGroupBox("4 · Review and export")
        rform = QFormLayout(review_box)
        rform.addRow(self.mask_style)
        rform.addRow(self.map_view)
        rform.addRow(self.review_button)
        rform.addRow(self.review_note)
        rform.addRow("Mask", self.export_stage)
        rform.addRow("Format", self.export_format)
        rform.addRow(self.export_button)

        boxes = (slide_box, weak_box, train_box, review_box)
        #: The four collapsible sections: "slide", "weak", "train", "review". Until a slide is prepared
        #: only the slide's is unfolded: the others have nothing to do yet (and, folded, cost the dock's
        #: opening nothing).
        self.sections = dict(zip(SECTIONS, stack_in_scroll_area(self, boxes, unfolded=1), strict=True))

    def focus_section(self, name: str, *, summary: str | None = None, also: tuple[str, ...] = ()) -> None:
        """Fold the slide section into a one-line summary once it is done (``summary`` goes into its
        title), and unfold ``name`` (and the sections ``also`` names, below it), so the section being
        worked in is on screen, even on a laptop."""
        if summary is not None:
            self.sections["slide"].setText(f"1 · Slide — {summary}")
            self.sections["slide"].collapse(animate=False)
        for other in (name, *also):
            self.sections[other].expand(animate=False)
        # After the layout has taken the folding into account.
        QTimer.singleShot(0, lambda: scroll_into_view(self.sections[name]))

    def export_choice(self) -> tuple[str, str, str]:
        """``(stage, format, file suffix)`` chosen in section 4."""
        _, fmt, suffix = EXPORT_FORMATS[self.export_format.currentIndex()]
        return self.export_stage.currentText(), fmt, suffix

    def ask_export_path(self, start: Path, fmt: str) -> str:
        """Where to export (a save dialog starting at ``start``); empty when the user cancels."""
        if fmt == "ome-zarr":
            return QFileDialog.getSaveFileName(
                self, "Export OME-Zarr labels", str(start), "OME-Zarr (*.zarr)"
            )[0]
        return QFileDialog.getSaveFileName(self, "Export mask", str(start), f"*{start.suffix}")[0]

    # --- where projects go --------------------------------------------------------------------------

    def _show_projects_root(self) -> None:
        self.projects_note.setText(f"<i>{self.projects_root.name or self.projects_root}</i>")
        self.projects_note.setToolTip(
            f"New projects (weak labels, masks, models, exports) go to {self.projects_root}; "
            "a slide's existing project is found wherever it was made."
            + (f" (${PROJECTS_ENV} chose it at start-up)" if os.environ.get(PROJECTS_ENV) else "")
        )

    def choose_projects_folder(self) -> None:
        """Ask for the folder new projects go to, and remember it (the next Prepare uses it)."""
        folder = QFileDialog.getExistingDirectory(self, "Folder for milkd projects", str(self.projects_root))
        if not folder:
            return
        try:
            self.projects_root = choose_projects_root(folder)
        except MilkdError as exc:
            notify_error(exc)
            return
        self._show_projects_root()
        notify_info(f"new projects go to {self.projects_root}", "Projects made before are still found.")

    # --- the slide layer ---------------------------------------------------------------------------

    def selected_layer(self) -> Image | None:
        """The slide layer chosen in the combo box."""
        name = self.layer_combo.currentText()
        return next((lay for lay in slide_layers(self.viewer) if lay.name == name), None)

    def _refresh_layers(self, *_: object) -> None:
        current = self.layer_combo.currentText()
        names = [lay.name for lay in slide_layers(self.viewer)]
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        self.layer_combo.addItems(names)
        if current in names:
            self.layer_combo.setCurrentText(current)
        elif names:
            self.layer_combo.setCurrentIndex(len(names) - 1)
        self.layer_combo.blockSignals(False)
        self._show_facts()

    def _apply_mpp(self) -> None:
        """The user gives the µm/px the file lacks: the slide layer gets it (scale, units, facts)."""
        layer = self.selected_layer()
        if layer is None:
            return
        mpp = float(self.mpp_spin.value())
        give_layer_mpp(layer, mpp)
        self.viewer.reset_view()
        notify_info(f"{layer.name}: resolution set to {mpp:g} µm/px")
        self._show_facts()

    def _show_facts(self, *_: object) -> None:
        """Show the selected slide's facts (or how to open one) and which pyramid level will be read."""
        layer = self.selected_layer()
        self._update_buttons()
        info: SlideInfo | None = None if layer is None else info_from_layer(layer)
        if info is None:
            self.facts.setText(NO_SLIDE)
            self.level_note.setText("")
            return
        self.facts.setText(facts_html(info))
        self.mpp_spin.setVisible(not info.has_mpp)
        self.mpp_apply.setVisible(not info.has_mpp)
        if info.has_mpp:
            level = level_for_mpp(info, self.target_spin.value())
            self.level_note.setText(f"reads level {level} ({fmt_mpp(info.level_mpp(level))} µm/px)")
        else:
            self.level_note.setText("needs the slide's µm/px")

    def take_saved_settings(self, settings: dict[str, Any], where: Path) -> None:
        """Set working resolution, tile size, the bag rule and the training settings to what a project
        ``where`` saved (said in one notification when they differ from the form)."""
        changed: list[str] = []
        work_mpp, tile = settings.get("work_mpp"), settings.get("tile")
        if isinstance(work_mpp, int | float) and isinstance(tile, int):
            form = (round(self.target_spin.value(), 2), self.tile_spin.value())
            if (round(float(work_mpp), 2), tile) != form:
                self.target_spin.setValue(float(work_mpp))
                self.tile_spin.setValue(tile)
                changed.append(f"working at {work_mpp:g} µm/px with {tile} px tiles")
        rule = settings.get("bag_rule")
        if rule in BAG_RULES and rule != self.bag_rule_combo.currentData():
            self.bag_rule_combo.setCurrentIndex(self.bag_rule_combo.findData(rule))
            changed.append(f"{rule} rule for tumour-free tiles")
        training = settings.get("training")
        if isinstance(training, dict):
            changed.extend(self.training.apply_settings(training))
        if changed:
            notify_info(f"as saved: {', '.join(changed)}", f"project folder: {where}")

    def show_bags(self, positive: int, negative: int) -> None:
        """Say how many bags (tiles) of each kind the weak labels give, and by which rule."""
        missing = " — paint both kinds to train" if not (positive and negative) else ""
        rule = bag_rule(self.bag_rule_combo.currentData())
        self.bag_note.setText(
            f"<b>{positive}</b> positive and <b>{negative}</b> negative bags (tiles){missing}.<br>"
            f"<small>A tile contains tumour when ≥ {rule.min_positive:.0%} of it is painted so; "
            f"{rule.explanation}. The tiles layer shows which tiles count.</small>"
        )

    def _update_buttons(self) -> None:
        """Enable what may be pressed now (the widget knows more: it overrides this)."""
        layer = self.selected_layer()
        info = None if layer is None else info_from_layer(layer)
        self.enable(SlideState(has_slide=info is not None, has_mpp=info is not None and info.has_mpp))

    def enable(self, state: SlideState) -> None:
        """Enable what may be pressed in ``state``; a greyed button's tooltip says what is missing."""
        enable_with_reasons(self, button_reasons(state), self._tooltips)
        self.training.cancel_button.setEnabled(state.busy)
        self.training.progress.setVisible(state.busy)
