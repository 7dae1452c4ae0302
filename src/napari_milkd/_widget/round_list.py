"""Section 3's kept rounds: a "Round" box listing what the project kept, and *Go back*.

The session keeps a round (models, maps, masks, a figure; :mod:`napari_milkd.core.session.rounds`) before
a finished model is replaced. :class:`RoundList` shows them, newest first ("round 2 · 14:03 · teacher +
student · Dice 0.91 · 120 corrected px"), re-reading the project's ``rounds/`` folder only when it
changed (one ``stat`` per refresh). :func:`go_back` restores the chosen round off the GUI thread (the
widget's :class:`~napari_milkd._widget.background.Background` jobs: the current state is kept as a new
round, files are put in place, maps read back) and then shows its masks; corrections are never rolled
back. No torch here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QPushButton, QSizePolicy, QWidget

from napari_milkd._widget.qt_helpers import notify_error, notify_info
from napari_milkd.core.errors import MilkdError
from napari_milkd.core.session.rounds import list_rounds, rounds_dir
from napari_milkd.core.session.slide_session import STAGES

if TYPE_CHECKING:
    from napari_milkd._widget.background import Steps
    from napari_milkd._widget.slide_widget import SlideWidget
    from napari_milkd.core.session.slide_session import RestoredRound

#: What the box says while the project has kept no round.
NO_ROUND = "no round kept yet"
GO_BACK_TIP = (
    "Bring back the chosen round's teacher and student (models and masks). What you have now is kept as "
    "a new round first; your corrections are never rolled back."
)


class RoundList(QWidget):
    """The rounds a project kept (a combo box, newest first; item data: the round number) and Go back."""

    def __init__(self) -> None:
        super().__init__()
        self.combo = QComboBox()
        self.combo.setPlaceholderText(NO_ROUND)
        self.combo.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.combo.setToolTip("Rounds kept in the project folder, newest first.")
        self.go_back = QPushButton("Go back")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.combo, 1)
        layout.addWidget(self.go_back)
        self._shown: tuple[Path | None, int | None] = (None, None)
        self._ready = False
        self.combo.currentIndexChanged.connect(lambda *_: self._enable())
        self._enable()

    def chosen(self) -> int | None:
        """The number of the round chosen in the box, or None."""
        number = self.combo.currentData()
        return int(number) if isinstance(number, int) else None

    def refresh(self, project_root: Path | None, *, ready: bool) -> None:
        """Show the rounds of ``project_root`` (None: no prepared slide) and let Go back be pressed when
        ``ready`` (a prepared slide, no job running). Reads the folder again only when it changed."""
        self._ready = ready
        folder = rounds_dir(project_root) if project_root is not None else None
        try:
            stamp = folder.stat().st_mtime_ns if folder is not None else None
        except OSError:
            stamp = None
        if (folder, stamp) != self._shown:
            self._shown = (folder, stamp)
            self._fill(project_root)
        self._enable()

    def _fill(self, project_root: Path | None) -> None:
        chosen = self.chosen()
        kept = list_rounds(project_root) if project_root is not None else []
        self.combo.blockSignals(True)
        self.combo.clear()
        for info in reversed(kept):
            self.combo.addItem(info.label(), info.number)
            tip = f"kept {info.date}" + (f" ({info.reason})" if info.reason else "") + f"\n{info.path}"
            self.combo.setItemData(self.combo.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        index = self.combo.findData(chosen) if chosen is not None else -1
        self.combo.setCurrentIndex(index if index >= 0 else (0 if kept else -1))
        self.combo.blockSignals(False)

    def _enable(self) -> None:
        reason = None
        if not self._ready:
            reason = "prepare the slide first, and wait for the running job"
        elif self.chosen() is None:
            reason = "no round kept yet: Next round (or training a stage again) keeps one"
        self.go_back.setEnabled(reason is None)
        self.go_back.setToolTip(GO_BACK_TIP if reason is None else f"Disabled: {reason}.")


def go_back(widget: SlideWidget) -> None:
    """Restore the round chosen in ``widget``'s round list off the GUI thread, then show its masks."""
    session = widget.session if widget.session is not None and widget.session.work is not None else None
    number = widget.round_list.chosen()
    if session is None or number is None:
        notify_error("prepare the slide and choose a round first")
        return
    if widget.busy:
        notify_error("wait for the running job, or cancel it")
        return
    widget._flush_edits()  # strokes made just before count as corrections (they are kept)
    try:
        job = session.restore_round_job(number)
    except (MilkdError, OSError) as exc:
        notify_error(exc)
        return

    def restored(result: RestoredRound) -> Steps | None:
        return shown(result) if widget.session is session else None

    def shown(result: RestoredRound) -> Steps:
        """The round's maps become the session's; its layers follow, one per turn of the event loop."""
        assert session is not None
        session.take_restored(result)
        for stage in STAGES:
            if stage in session.masks:
                yield
                yield from widget._stage_layers(session, stage)
            else:
                widget.layers.remove(f"{stage} mask")
        widget.map_view.refresh()
        kept = f"; what you had is kept as round {result.kept_as.number}" if result.kept_as else ""
        widget.training.status.setText(f"back to round {number}{kept}")
        notify_info(f"back to round {number}{kept} — your corrections are kept", str(session.project.root))

    widget.jobs.run(job, text=f"going back to round {number}…", done=restored, failed="going back failed")
