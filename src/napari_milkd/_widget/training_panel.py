"""The training form both widgets share, and how job events show up in it.

:class:`TrainingPanel` shows backbone, MIL net, device, epochs and batch size, a progress bar, a status
line, a loss plot and Cancel. Each setting's label, range, choices and tooltip come from its one
description (:data:`~napari_milkd.core.engine.settings.SETTINGS`, which the CLI flags are made from too);
the numbers are magicgui widgets starting at the preset's
:class:`~napari_milkd.core.engine.config.TrainConfig` values, named after its fields; :meth:`config`
hands them to :func:`~napari_milkd.core.engine.presets.schedule`, which owns the policy (student length,
role reversals), so the widget, the CLI and the demo cannot drift apart. Event text comes from
:func:`~napari_milkd.core.progress.describe`, the bar from :func:`~napari_milkd.core.progress.progress_of`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from magicgui.widgets import create_widget
from magicgui.widgets.bases import ValueWidget
from napari.qt.threading import GeneratorWorker
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QFormLayout, QHBoxLayout, QLabel, QProgressBar, QPushButton, QWidget

from napari_milkd._widget.qt_helpers import LazyComboBox, LossPlot, notify_error
from napari_milkd.core import progress
from napari_milkd.core.engine import presets
from napari_milkd.core.engine.config import EpochEnd, TrainConfig
from napari_milkd.core.engine.settings import SETTINGS
from napari_milkd.core.runtime import free_device_memory

#: The preset the form starts from (what the widget and `milkd demo` use).
PRESET = "quick"
#: The numeric settings the form shows, as spin boxes (label, range and tooltip from their description).
NUMBERS: tuple[str, ...] = ("teacher_epochs", "student_epochs", "batch_size")


def _combo(name: str, current: str) -> QComboBox:
    """A combo box of setting ``name``'s choices, with its description as the tooltip, showing ``current``."""
    combo = QComboBox()
    combo.addItems(SETTINGS[name].choices)
    combo.setCurrentText(current)
    combo.setToolTip(SETTINGS[name].help)
    return combo


def _spin_box(name: str, value: int) -> ValueWidget:
    """A magicgui spin box for the whole-number setting ``name`` (1 to its maximum), starting at ``value``."""
    setting = SETTINGS[name]
    return create_widget(
        value=value,
        annotation=int,
        name=name,
        label=setting.label,
        options={"min": 1, "max": setting.maximum, "tooltip": setting.help},
    )


class TrainingPanel(QWidget):
    """Training controls shared by the slide and image-folder widgets: backbone, device, epochs, batch,
    a progress bar, a status line, a loss plot and Cancel. Runs its widget's one worker at a time
    (:meth:`run`) and turns its events into progress; ``busy_changed`` fires when a job starts or ends."""

    busy_changed = Signal()

    def __init__(self, preset: str = PRESET) -> None:
        super().__init__()
        self.preset = preset
        #: The running napari worker, or None.
        self.worker: Any = None
        self._holder: list[Any] = [None]
        self._aborted_text = ""
        defaults = presets.schedule(preset)
        self.backbone_combo = _combo("backbone", defaults.backbone)
        self.net_combo = _combo("net", defaults.net)
        self.device_combo = LazyComboBox(self._fill_devices)
        self.device_combo.addItem("auto", "auto")
        self.device_combo.addItem("cpu", "cpu")
        #: magicgui spin boxes named after TrainConfig fields, starting at the preset's values.
        self.numbers: dict[str, ValueWidget] = {
            name: _spin_box(name, getattr(defaults, name)) for name in NUMBERS
        }
        self.teacher_epochs = self.numbers["teacher_epochs"]
        self.student_epochs = self.numbers["student_epochs"]
        self.batch_size = self.numbers["batch_size"]
        self.cancel_button = QPushButton("Cancel")
        self.progress = QProgressBar()
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.loss_plot = LossPlot()

        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow(SETTINGS["backbone"].label, self.backbone_combo)
        form.addRow(SETTINGS["net"].label, self.net_combo)
        form.addRow("Device", self.device_combo)
        epochs = QHBoxLayout()
        for name in ("teacher_epochs", "student_epochs"):
            epochs.addWidget(QLabel(self.numbers[name].label))
            epochs.addWidget(self.numbers[name].native)
        form.addRow("Epochs", epochs)
        form.addRow(self.batch_size.label, self.batch_size.native)
        self.form = form
        self.cancel_button.clicked.connect(self.cancel)
        # Closing the viewer destroys the panel: stop the worker at its next batch (checkpoints are on disk).
        self.destroyed.connect(lambda *_, holder=self._holder: holder[0] and holder[0].quit())

    def apply_settings(self, saved: dict[str, Any]) -> list[str]:
        """Set the backbone, the MIL net and the numbers to what a project saved
        (``SlideSession.training_settings``); values that are missing or out of range are left as they
        are. Returns what changed, in words."""
        changed: list[str] = []
        backbone = saved.get("backbone")
        if backbone in SETTINGS["backbone"].choices and backbone != self.backbone_combo.currentText():
            self.backbone_combo.setCurrentText(backbone)
            changed.append(f"backbone {backbone}")
        net = saved.get("net")
        if net in SETTINGS["net"].choices and net != self.net_combo.currentText():
            self.net_combo.setCurrentText(net)
            changed.append(f"MIL net {net}")
        for name, widget in self.numbers.items():
            value = saved.get(name)
            valid = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= widget.max
            if valid and value != widget.value:
                widget.value = value
                changed.append(f"{widget.label.lower()} {'epochs ' if 'epochs' in name else ''}{value}")
        return changed

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

    def config(self, size: int) -> TrainConfig:
        """The training configuration the form describes, for ``size``-px inputs (see
        :func:`~napari_milkd.core.engine.presets.schedule` for what follows from the numbers)."""
        return presets.schedule(
            self.preset,
            backbone=self.backbone_combo.currentText(),
            net=self.net_combo.currentText(),
            size=int(size),
            device=str(self.device_combo.currentData() or "auto"),
            **{name: int(widget.value) for name, widget in self.numbers.items()},
        )

    def reset(self, text: str) -> None:
        """Clear the loss plot and show ``text`` with a busy bar."""
        self.loss_plot.set_values([])
        self.progress.setRange(0, 0)
        self.status.setText(text)

    def on_event(self, event: Any) -> None:
        """Show a job event: batch or prediction progress in the bar, its description in the status line,
        and each finished epoch's loss in the plot."""
        self.status.setText(progress.describe(event))
        done_total = progress.progress_of(event)
        if done_total is not None:
            done, total = done_total
            self.progress.setRange(0, total)
            self.progress.setValue(done)
        elif isinstance(event, EpochEnd):
            self.loss_plot.set_values([*self.loss_plot.values, float(event.train_loss)])

    # --- the one running job ---------------------------------------------------------------------

    def run(
        self,
        worker: Any,
        on_done: Callable[[Any], None],
        *,
        aborted: str = "cancelled — train again to continue from the last epoch",
    ) -> None:
        """Start ``worker`` (made with ``_ignore_errors=True``): ``on_done`` gets its result; an error
        becomes one notification and the status line; a cancelled job shows ``aborted``."""
        self.worker = self._holder[0] = worker
        self._aborted_text = aborted
        worker.returned.connect(on_done)
        worker.errored.connect(self._failed)
        if isinstance(worker, GeneratorWorker):  # only generator workers yield and can be aborted
            worker.yielded.connect(self.on_event)
            worker.aborted.connect(self._aborted)
        worker.finished.connect(self._finished)
        self.busy_changed.emit()
        worker.start()

    def cancel(self) -> None:
        """Stop the running job at its next batch; the last finished epoch stays on disk."""
        if self.worker is not None:
            self.status.setText("cancelling after this batch…")
            self.worker.quit()

    # Bound methods, not lambdas: Qt disconnects them when the panel is destroyed (viewer closed).
    def _aborted(self) -> None:
        self.status.setText(self._aborted_text)

    def _failed(self, exc: BaseException) -> None:
        self.status.setText(f"failed: {notify_error(exc)}")

    def _finished(self) -> None:
        self.worker = self._holder[0] = None
        self.busy_changed.emit()
        free_device_memory()  # also after Cancel: the abandoned job's GPU memory goes back
