"""The image-folder dock widget: the paper's setting, a folder of images with image-level labels.

Load the bags (images + label CSV, optionally ground-truth masks) in a worker, train teacher and student
in a worker over :func:`~napari_milkd.core.session.folder_jobs.folder_training_job`, then review image by
image. Qt state only (the loaded bags and the job's output, shown as layers); the work is in core.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.qt.threading import create_worker
from napari.utils.colormaps import DirectLabelColormap
from qtpy.QtWidgets import (
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_milkd._widget.qt_helpers import enable_with_reasons, notify_error, stack_in_scroll_area
from napari_milkd._widget.slide_buttons import WAIT, first_reason
from napari_milkd._widget.training_panel import TrainingPanel

if TYPE_CHECKING:
    import napari

NEEDS_PATHS = "choose an image folder and a label CSV first"
LOAD_FIRST = "load the images first"
TRAIN_FIRST = "train teacher and student first"
TOOLTIPS = {
    "load_button": "Read the images, their labels (and masks) in the background.",
    "train_button": "Train the MIL teacher, distil the student, then predict every image.",
    "prev_button": "The previous image, with both masks.",
    "next_button": "The next image, with both masks.",
}


def folder_button_reasons(
    *, busy: bool, has_paths: bool, loaded: bool, trained: bool, index: int, count: int
) -> dict[str, str | None]:
    """For each button of the image-folder widget: None when it may be pressed, else why not."""
    wait = WAIT if busy else None
    review = TRAIN_FIRST if not trained else None
    return {
        "load_button": first_reason(wait, None if has_paths else NEEDS_PATHS),
        "train_button": first_reason(wait, None if loaded else LOAD_FIRST),
        "prev_button": first_reason(review, None if index > 0 else "this is the first image"),
        "next_button": first_reason(review, None if index < count - 1 else "this is the last image"),
    }


class ImageFolderWidget(QWidget):
    """The paper's setting: a folder of images with image-level labels in a CSV (e.g. GlaS).

    Load the bags, train teacher and student in the background, then review the images one by one with
    both masks (and the ground truth when a masks folder is given). Checkpoints go to the image folder's
    project in the user data folder (never beside the images), so a cancelled run continues where it
    stopped.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
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

        self.sections = stack_in_scroll_area(self, (data_box, train_box, review_box))

        self.load_button.clicked.connect(self.start_load)
        self.train_button.clicked.connect(self.start_training)
        self.training.busy_changed.connect(self._update_buttons)
        self.prev_button.clicked.connect(lambda: self.show_image(self.index - 1))
        self.next_button.clicked.connect(lambda: self.show_image(self.index + 1))
        self.images_edit.textChanged.connect(self._update_buttons)
        self.csv_edit.textChanged.connect(self._update_buttons)
        self._update_buttons()

    def _browse(self, edit: QLineEdit, title: str, is_dir: bool) -> None:
        if is_dir:
            path = QFileDialog.getExistingDirectory(self, title)
        else:
            path = QFileDialog.getOpenFileName(self, title, "", "CSV (*.csv *.tsv *.txt)")[0]
        if path:
            edit.setText(path)

    def _update_buttons(self, *_: object) -> None:
        busy = self.training.worker is not None
        reasons = folder_button_reasons(
            busy=busy,
            has_paths=bool(self.images_edit.text().strip() and self.csv_edit.text().strip()),
            loaded=self.bags is not None,
            trained=self.output is not None,
            index=self.index,
            count=0 if self.bags is None else len(self.bags),
        )
        enable_with_reasons(self, reasons, TOOLTIPS)
        self.training.cancel_button.setEnabled(busy)
        self.training.progress.setVisible(busy)

    def run_dir(self) -> Path:
        """Where checkpoints go: the image folder's project, ``<user data>/napari-milkd/projects/
        <folder>-<hash>.milkd`` or under ``$MILKD_PROJECTS`` (see
        :func:`~napari_milkd.core.session.project.default_project_dir`)."""
        from napari_milkd.core.session.project import default_project_dir

        return default_project_dir(self.images_edit.text())

    def start_load(self) -> None:
        """Read images, labels (and masks) in a worker."""
        from napari_milkd.core.engine.datasets import load_image_folder

        if self.training.worker is not None:
            return
        if not self.images_edit.text() or not self.csv_edit.text():
            notify_error("choose an image folder and a label CSV")
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
        self.training.run(worker, self._loaded)

    def _loaded(self, bags: Any) -> None:
        self.bags = bags
        self.output = None
        skipped = f", {len(bags.skipped)} rows skipped" if bags.skipped else ""
        self.load_note.setText(f"{len(bags)} images: {bags.n_pos} positive, {bags.n_neg} negative{skipped}")
        self.training.status.setText("")
        self._update_buttons()

    def start_training(self) -> None:
        """Train teacher then student in a worker, then predict every image."""
        from napari_milkd.core.session.folder_jobs import folder_training_job

        if self.bags is None or self.training.worker is not None:
            return
        self.training.reset("teacher: starting…")
        config = self.training.config(int(self.bags.images.shape[1]))
        worker = create_worker(folder_training_job, self.bags, config, self.run_dir(), _ignore_errors=True)
        self.training.run(worker, self._trained)

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
