"""Step 2 of the slide widget, weak labels: paint, mark all tumour-free, import regions, and the bag note.

A part of :class:`~napari_milkd._widget.slide_widget.SlideWidget` (mixed into it; it uses the widget's
session, layers, jobs and timers). A brush stroke costs the tiles under it: napari's ``paint`` event gives
the box of what changed (:func:`~napari_milkd._widget.weak_edits.paint_box`), and once control returns to
Qt (napari may emit ``paint`` before it writes the pixels) :meth:`SlideSession.weak_edited` recounts only
the tiles under that box. *Import…* reads the file's class table in a worker, then shows it
(:class:`~napari_milkd._widget.class_map_dialog.ClassMapDialog`) on the GUI thread; on OK the import is
read and rasterised in a worker and painted when it is done.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Labels
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QFileDialog

from napari_milkd._widget.class_map_dialog import (
    ClassMapDialog,
    class_map_dialog,
    import_message,
    read_class_report,
    report_dialog,
)
from napari_milkd._widget.qt_helpers import notify_error, notify_info, notify_warning
from napari_milkd._widget.slide_layers import TILE_COLORS, repaint_tiles, tile_map, tile_values
from napari_milkd._widget.weak_edits import Box, paint_box
from napari_milkd.core.errors import MilkdError
from napari_milkd.core.session.slide_session import ImportedRegions
from napari_milkd.core.session.weak_labels import REGIONS_RULE

if TYPE_CHECKING:
    from napari_milkd._widget.background import Background, Steps
    from napari_milkd._widget.slide_layers import SlideLayers
    from napari_milkd.core.annotations.io import AnnotationReport
    from napari_milkd.core.session.slide_session import SlideSession
    from napari_milkd.core.slides.geometry import SlideWork


class WeakLabelsPart:
    """The weak-labels step of the slide widget (see the module docstring)."""

    if TYPE_CHECKING:  # provided by SlideWidget / SlideForm
        viewer: Any
        layers: SlideLayers
        jobs: Background
        _autosave: QTimer
        _bags: tuple[int, int]

        def _prepared(self) -> SlideSession | None: ...
        def _refuse_when_busy(self) -> bool: ...
        def _update_buttons(self) -> None: ...
        def show_bags(self, positive: int, negative: int) -> None: ...
        def show_stage(self, stage: str) -> None: ...
        def _stage_layers(self, session: SlideSession, stage: str) -> Steps: ...

        bag_rule_combo: Any

    def _init_weak_labels(self) -> None:
        # Strokes not counted yet (their boxes; None: somewhere), counted when control returns to Qt.
        self._strokes: list[Box | None] = []
        self._bag_timer = QTimer(self, singleShot=True, interval=0)  # type: ignore[call-overload]
        self._bag_timer.timeout.connect(self._update_bag_note)
        # What the tiles layer shows now, per tile (see slide_layers.tile_values).
        self._tile_values: np.ndarray | None = None
        self.bag_rule_combo.currentIndexChanged.connect(self._bag_rule_chosen)
        # A class table read in a worker, shown once its job has ended (see read_import_classes).
        self._read_report: tuple[SlideSession, str | Path, AnnotationReport] | None = None
        self._watching_reads = False  # self.jobs is made after this: connected at the first read

    def put_tiles_layer(self, work: SlideWork) -> Labels:
        """The tiles layer of a prepared slide: every tile outlined in the colour of the bag it makes
        (grey: does not count, green: tumour-free, red: contains tumour)."""
        session = self._prepared()
        labels = session.bag_labels() if session is not None else None
        self._tile_values = tile_values(work, None if labels is None else labels.labels)
        tiles = self.layers.put_labels(
            "tiles", tile_map(work, None if labels is None else labels.labels), TILE_COLORS, opacity=0.8
        )
        return tiles

    def _show_tile_kinds(self) -> None:
        """Repaint the tiles whose bag changed since the tiles layer was last drawn."""
        session, layer = self._prepared(), self.layers.get("tiles")
        if session is None or layer is None or self._tile_values is None or session.work is None:
            return
        labels = session.bag_labels()
        if labels is None or len(labels.labels) != len(self._tile_values):
            return
        after = tile_values(session.work, labels.labels)
        repaint_tiles(layer, session.work, self._tile_values, after)
        self._tile_values = after

    def _bag_rule_chosen(self, *_: object) -> None:
        """The user chose another rule for tumour-free tiles: recount, redraw the tiles, say it."""
        session = self._prepared()
        if session is not None:
            try:
                session.set_bag_rule(self.bag_rule_combo.currentData())
            except MilkdError as exc:
                notify_error(exc)
        self._update_bag_note()

    def weak_layer(self) -> Labels | None:
        """The weak-labels layer of the prepared slide."""
        return self.layers.get("weak labels") if self._prepared() is not None else None

    def start_painting(self, value: int) -> None:
        """Select the weak-labels layer in paint mode with ``value`` (1 contains tumour, 2 tumour-free)."""
        layer = self.weak_layer()
        if layer is None:
            notify_error("prepare the slide first")
            return
        self.viewer.layers.selection.active = layer
        layer.selected_label = value
        layer.mode = "paint"

    def mark_all_free(self) -> None:
        """Mark all tissue tumour-free (a negative slide); painted tumour regions are kept."""
        layer, session = self.weak_layer(), self._prepared()
        if layer is not None and session is not None:
            session.mark_all_free()
            layer.refresh()
            self._on_weak_edit()

    def import_regions(
        self, path: str | Path, class_map: dict[str, str] | None = None, into: str = "weak"
    ) -> None:
        """Add regions from a QuPath GeoJSON or ASAP XML file; ``class_map`` (class → label) wins.
        ``into``: ``"weak"`` (weak labels), ``"corrections"`` (ground truth in every mask) or
        ``"shapes"`` (a new Shapes layer, nothing painted). The file is read and rasterised in a worker;
        the regions are painted when it is done, and *Undo import* takes them back."""
        session = self._prepared()
        if session is None or self.weak_layer() is None:
            notify_error("prepare the slide first")
            return
        if into == "shapes":
            self._open_as_shapes(path)
            return
        if self._refuse_when_busy():
            return
        name = Path(path).name

        def imported(regions: ImportedRegions) -> Steps:
            """The GUI half, in steps: paint and count, show the layer, then the bags by the rule."""
            layer = self.weak_layer()
            if layer is None or self._prepared() is not session:
                return  # the slide was prepared again meanwhile
            try:
                summary = session.apply_import(regions, into=into)
            except MilkdError as exc:
                notify_error(exc)
                return
            yield
            switched = False
            if into == "weak":
                layer.refresh()
                yield
                switched = self.bag_rule_combo.currentData() != REGIONS_RULE.name
                # Undo import puts the rule back with the labels.
                self._rule_before_import = self.bag_rule_combo.currentData()
                if switched:  # outlines: a tile half outside a "Normal" region may hold tumour
                    self.bag_rule_combo.blockSignals(True)  # one recount and repaint below, not two
                    self.bag_rule_combo.setCurrentIndex(self.bag_rule_combo.findData(REGIONS_RULE.name))
                    self.bag_rule_combo.blockSignals(False)
                    session.set_bag_rule(REGIONS_RULE.name)
                self._on_weak_edit()
            else:
                yield from self._show_masks_again_steps()
            for warning in summary.warnings[:3]:
                notify_warning(warning)
            rule_note = "; tumour-free tiles now follow the regions rule (≥ 90 % covered)" if switched else ""
            where = "" if into == "weak" else " as corrections"
            notify_info(import_message(summary, name, where) + rule_note)
            self._update_buttons()

        read = partial(session.read_import, path, class_map=class_map)
        self.jobs.run(read, text=f"importing {name}…", done=imported, failed="")

    def undo_import(self) -> None:
        """Take the last import back (weak labels or corrections, as they were before it)."""
        session = self._prepared()
        if session is None or self._refuse_when_busy():
            return
        try:
            into = session.undo_import()
        except MilkdError as exc:
            notify_error(exc)
            return
        if into == "weak":
            layer = self.weak_layer()
            if layer is not None:
                layer.refresh()
            rule = getattr(self, "_rule_before_import", None)
            if rule is not None and rule != self.bag_rule_combo.currentData():
                self.bag_rule_combo.setCurrentIndex(self.bag_rule_combo.findData(rule))
            self._on_weak_edit()
        else:
            self._show_masks_again()
        self._autosave.start()
        what = "weak labels" if into == "weak" else "corrections"
        notify_info(f"import undone: the {what} are as before it")
        self._update_buttons()

    def _show_masks_again(self) -> None:
        """The corrections changed other than by painting: show every stage's mask anew."""
        for _ in self._show_masks_again_steps():
            pass

    def _show_masks_again_steps(self) -> Steps:
        """:meth:`_show_masks_again` one layer per step."""
        session = self._prepared()
        for stage in () if session is None else tuple(session.masks):
            yield from self._stage_layers(session, stage)
        self._autosave.start()

    def _open_as_shapes(self, path: str | Path) -> None:
        """Open ``path`` as a Shapes layer over the slide (milkd's annotation reader), nothing painted."""
        try:
            self.viewer.open(str(path), plugin="napari-milkd")
        except (MilkdError, OSError, ValueError) as exc:
            notify_error(exc)

    def review_import(self, path: str | Path) -> ClassMapDialog | None:
        """The class table of ``path``, before anything is painted; OK imports, Cancel paints nothing.
        Reads the file here, on the calling thread (tests, scripts); *Import…* uses
        :meth:`read_import_classes`, which reads it in a worker."""
        return class_map_dialog(self._prepared(), path, self, self.import_regions)

    def read_import_classes(self, path: str | Path) -> None:
        """*Import…* with a chosen file: its class table is read in a worker (the widget busy, the status
        line "reading <name>…"), then the dialog of :meth:`review_import` opens on the GUI thread once
        the job has ended; OK imports (:meth:`import_regions`), Cancel paints nothing. An unreadable
        file is one error notification; a table read for a slide that was prepared again meanwhile is
        dropped."""
        session = self._prepared()
        if session is None:
            notify_error("prepare the slide first")
            return
        if self._refuse_when_busy():
            return
        if not self._watching_reads:
            self.jobs.busy_changed.connect(self._show_read_report)
            self._watching_reads = True

        def read(report: AnnotationReport) -> None:
            """Back on the GUI thread; the dialog opens when the job has ended (so OK can import)."""
            self._read_report = (session, path, report) if self._prepared() is session else None

        self._read_report = None
        job = partial(read_class_report, session, path)
        self.jobs.run(job, text=f"reading {Path(path).name}…", done=read, failed="")

    def _show_read_report(self) -> None:
        """The jobs' busy state changed: once the reading job has ended, show the table it read. Here,
        not in the job's ``done`` (where the job still runs), so that OK can start the import job."""
        if self._read_report is None or self.jobs.busy:
            return
        (session, path, report), self._read_report = self._read_report, None
        if self._prepared() is not session:
            return  # the slide was prepared again meanwhile
        dialog = report_dialog(session, report, path, self, self.import_regions)
        dialog.exec()
        dialog.deleteLater()

    def import_start_folder(self) -> str:
        """Where the Import… dialog opens: the folder of the last import, else the project's folder."""
        session = self._prepared()
        last = getattr(self, "_last_import_folder", None)
        return last or ("" if session is None else str(session.project.root))

    def _import_dialog(self) -> None:
        path = QFileDialog.getOpenFileName(
            self, "Import regions", self.import_start_folder(), "Annotations (*.geojson *.json *.xml)"
        )[0]
        if path:
            self._last_import_folder = str(Path(path).parent)
            self.read_import_classes(path)

    def _on_weak_edit(self, *_: object) -> None:
        """A stroke or a new map in the weak-labels layer (whose data is the session's map)."""
        layer, session = self.weak_layer(), self._prepared()
        if layer is None or session is None:
            return
        if layer.data is not session.weak:  # the whole map was replaced (``layer.data = ...``)
            try:
                session.set_weak_labels(np.asarray(layer.data))
            except MilkdError as exc:
                notify_error(exc)
            layer.data = session.weak  # strokes land in the session again (this comes back here)
            return
        self._update_bag_note()
        self._autosave.start()

    def _on_weak_paint(self, event: Any) -> None:
        """A brush stroke (or fill, erase) in the weak-labels layer: count its tiles soon."""
        layer = self.weak_layer()
        if layer is None:
            return
        self._strokes.append(paint_box(getattr(event, "value", None), layer.data.shape))
        self._bag_timer.start()
        self._autosave.start()

    def _update_bag_note(self) -> None:
        session = self._prepared()
        if session is None:
            self._bags = (0, 0)
        else:
            strokes, self._strokes = self._strokes, []
            for box in strokes:
                session.weak_edited(box)
            self._bags = session.bags
            self._show_tile_kinds()
        self.show_bags(*self._bags)
        self._update_buttons()
