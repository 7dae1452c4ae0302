"""The import dialog's class map: every class a file holds, its count and the label it will get.

Before an annotation import paints anything, :func:`read_class_report` reads the file's
:class:`~napari_milkd.core.annotations.io.AnnotationReport` (the same core report as ``milkd annotations
FILE --json``) and :class:`ClassMapDialog` shows it as a table: one row per class, its count and a box
with its label (preset from the default semantics: unknown classes are ``ignored``, never tumour-free),
and a line naming the objects that are skipped (detections, cells, …). :meth:`ClassMapDialog.class_map`
is what the user changed, handed to :meth:`SlideSession.read_import` as its class map, and
:meth:`ClassMapDialog.destination` where the regions go (weak labels, corrections, a Shapes layer).
:func:`class_map_dialog` builds it for a file (or notifies why it cannot), :func:`report_dialog` for a
report already read (the dock reads it in a worker); :func:`import_message` is the notification after
the import. Qt, napari notifications and core only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_milkd._widget.qt_helpers import notify_error
from napari_milkd.core.annotations.classes import (
    CLASS_LABELS,
    EXCLUSION,
    IGNORED,
    NEGATIVE,
    POSITIVE,
    UNCLASSIFIED,
)
from napari_milkd.core.errors import MilkdError

if TYPE_CHECKING:
    from napari_milkd.core.annotations.io import AnnotationReport
    from napari_milkd.core.session.slide_session import SlideSession

#: What each label means in the weak-label map, as the label boxes show it.
LABEL_TEXT: dict[str, str] = {
    POSITIVE: "contains tumour",
    NEGATIVE: "tumour-free",
    IGNORED: "ignored (not painted)",
    EXCLUSION: "exclusion (erases labels)",
}
#: Table columns.
NAME, COUNT, LABEL = range(3)
#: Where the imported regions can go, as the dialog offers it (``corrections`` only once a mask exists).
DESTINATIONS: dict[str, str] = {
    "weak": "weak labels (the bags the models train on)",
    "corrections": "corrections of the masks (ground truth in every mask)",
    "shapes": "a new Shapes layer (to look at; nothing is painted)",
}


def read_class_report(session: SlideSession, path: str | Path) -> AnnotationReport:
    """The class table of ``path`` under the default class map, as the slide will read it (clipped to
    the slide, its bounds offset applied); nothing is painted. Raises what the core reader raises."""
    from napari_milkd.core.annotations.io import annotation_report, read_annotations  # off the dock's import

    result = read_annotations(path, slide_shape_l0=session.info.shape, offset_l0=session.info.offset_l0)
    return annotation_report(result)


def skipped_text(skipped: Mapping[str, int] | None) -> str:
    """``"Skipped (not regions): 3 detection, 1 cell"``, or ``"Nothing skipped."``."""
    if not skipped:
        return "Nothing skipped."
    return "Skipped (not regions): " + ", ".join(f"{n} {kind}" for kind, n in skipped.items())


class ClassMapDialog(QDialog):
    """A modal table of the classes in an annotation file; OK imports with :meth:`class_map`, Cancel
    paints nothing. Build it with the file's report, set labels (:meth:`set_label`), then ``accept()``
    (or ``exec()`` for the user)."""

    def __init__(
        self,
        report: AnnotationReport,
        file_name: str,
        parent: QWidget | None = None,
        destinations: Iterable[str] = ("weak", "shapes"),
    ) -> None:
        super().__init__(parent)
        self.report = report
        self.setWindowTitle(f"Import regions from {file_name}")
        self.setModal(True)
        layout = QVBoxLayout(self)
        n = sum(row.count for row in report.classes)
        intro = QLabel(
            f"<b>{file_name}</b>: {n} region{'s' if n != 1 else ''} in {len(report.classes)} "
            f"class{'es' if len(report.classes) != 1 else ''}. Choose the label each class gets; "
            "unknown classes are ignored unless you give them one."
        )
        intro.setWordWrap(True)
        layout.addWidget(intro)
        self.table = QTableWidget(len(report.classes), 3, self)
        self.table.setHorizontalHeaderLabels(["class", "count", "label"])
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(NAME, QHeaderView.ResizeMode.Stretch)
        self.combos: dict[str, QComboBox] = {}
        for i, row in enumerate(report.classes):
            name = QTableWidgetItem(
                row.name if row.known or row.name == UNCLASSIFIED else f"{row.name} (unknown)"
            )
            name.setData(Qt.ItemDataRole.UserRole, row.name)
            count = QTableWidgetItem(str(row.count))
            count.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self.table.setItem(i, NAME, name)
            self.table.setItem(i, COUNT, count)
            combo = QComboBox()
            for label in CLASS_LABELS:
                combo.addItem(LABEL_TEXT[label], label)
            combo.setCurrentIndex(combo.findData(row.label))
            if row.name == UNCLASSIFIED:  # a class map cannot name "no class": always ignored
                combo.setEnabled(False)
                combo.setToolTip("annotations without a class are never painted")
            self.table.setCellWidget(i, LABEL, combo)
            self.combos[row.name] = combo
        self.table.resizeColumnsToContents()
        layout.addWidget(self.table)
        self.skipped_note = QLabel(skipped_text(report.skipped))
        self.skipped_note.setWordWrap(True)
        layout.addWidget(self.skipped_note)
        self.destination_combo = QComboBox()
        for name in destinations:
            self.destination_combo.addItem(DESTINATIONS[name], name)
        where = QHBoxLayout()
        where.addWidget(QLabel("Put the regions into"))
        where.addWidget(self.destination_combo, 1)
        layout.addLayout(where)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel, parent=self
        )
        buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Import")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.resize(480, min(520, 160 + 32 * len(report.classes)))

    def destination(self) -> str:
        """Where the regions go: ``"weak"``, ``"corrections"`` or ``"shapes"``."""
        return str(self.destination_combo.currentData())

    def set_destination(self, name: str) -> None:
        """Choose where the regions go (one of the offered :data:`DESTINATIONS`)."""
        index = self.destination_combo.findData(name)
        if index < 0:
            raise ValueError(f"{name!r} is not offered here")
        self.destination_combo.setCurrentIndex(index)

    def rows(self) -> list[tuple[str, int, str]]:
        """``(class, count, label)`` per row as shown now."""
        return [(row.name, row.count, self.combos[row.name].currentData()) for row in self.report.classes]

    def set_label(self, name: str, label: str) -> None:
        """Give class ``name`` the label ``label``: ``positive``, ``negative``, ``ignored``, ``exclusion``."""
        if label not in CLASS_LABELS:
            raise ValueError(f"label {label!r} is not one of {', '.join(CLASS_LABELS)}")
        self.combos[name].setCurrentIndex(self.combos[name].findData(label))

    def class_map(self) -> dict[str, str]:
        """The labels changed from the defaults, as a class map ``{class: label}`` (empty when none was):
        a class left as preset keeps its default meaning, an unknown one is still reported as ignored."""
        return {
            row.name: self.combos[row.name].currentData()
            for row in self.report.classes
            if row.name != UNCLASSIFIED and self.combos[row.name].currentData() != row.label
        }


def class_map_dialog(
    session: SlideSession | None,
    path: str | Path,
    parent: QWidget | None,
    on_accept: Callable[[str | Path, dict[str, str], str], Any],
) -> ClassMapDialog | None:
    """The dialog for ``path`` (:func:`read_class_report`, here on the calling thread), calling
    ``on_accept(path, class_map, destination)`` on OK; None, after an error notification, when the slide
    is not prepared or the file cannot be read. Corrections are offered once the session has a mask.
    The dock reads in a worker instead and builds the dialog with :func:`report_dialog`."""
    if session is None:
        notify_error("prepare the slide first")
        return None
    try:
        report = read_class_report(session, path)
    except (MilkdError, OSError) as exc:
        notify_error(exc)
        return None
    return report_dialog(session, report, path, parent, on_accept)


def report_dialog(
    session: SlideSession,
    report: AnnotationReport,
    path: str | Path,
    parent: QWidget | None,
    on_accept: Callable[[str | Path, dict[str, str], str], Any],
) -> ClassMapDialog:
    """The dialog for ``path`` from its already-read ``report`` (:func:`read_class_report`), calling
    ``on_accept(path, class_map, destination)`` on OK; corrections are offered once the session has a
    mask. Builds Qt objects: GUI thread only."""
    destinations = ("weak", "corrections", "shapes") if session.masks else ("weak", "shapes")
    dialog = ClassMapDialog(report, Path(path).name, parent, destinations)
    dialog.accepted.connect(lambda: on_accept(path, dialog.class_map(), dialog.destination()))
    return dialog


def _named(classes: Iterable[Any]) -> str:
    return ", ".join(f"{row.name} ×{row.count} → {LABEL_TEXT.get(row.label, row.label)}" for row in classes)


def import_message(summary: Any, file_name: str, where: str = "") -> str:
    """The notification after an import: regions (and ``where`` they went) on the first line; every
    class with its label, and what was skipped, on the next (seen when the toast is expanded)."""
    details = [_named(summary.classes)] if summary.classes else []
    if summary.skipped:
        details.append("skipped " + ", ".join(f"{n} {kind}" for kind, n in summary.skipped.items()))
    first = f"imported {summary.n_regions} regions from {file_name}{where}"
    return "\n".join([first, "; ".join(details)]).strip()
