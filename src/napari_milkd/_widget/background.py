"""Short jobs of the slide widget (import, export, taking a finished map) in a napari worker thread.

The rule: nothing a user does costs more than ~100 ms on the GUI thread. A job here runs one call in a
``create_worker`` thread; while it runs the widget is busy (its buttons greyed, the status line says what
is happening); its result comes back to ``done`` on the GUI thread, and an error becomes one notification
(``failed`` + the error) and the status line. One job at a time; no Cancel (they take seconds).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from napari.qt.threading import create_worker
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QLabel

from napari_milkd._widget.qt_helpers import error_text, notify_error


class Background(QObject):
    """Runs one short job at a time off the GUI thread; ``busy_changed`` fires when it starts and ends."""

    busy_changed = Signal()

    def __init__(self, status: QLabel, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.status = status
        #: The running worker, or None.
        self.worker: Any = None
        self._failed_text = ""
        self._done: Callable[[Any], None] | None = None

    def run(self, call: Callable[[], Any], *, text: str, done: Callable[[Any], None], failed: str) -> None:
        """Run ``call()`` in a worker; ``done(result)`` on the GUI thread, or ``failed: <error>``."""
        worker = create_worker(call, _ignore_errors=True)
        self.worker, self._failed_text, self._done = worker, failed, done
        self.status.setText(text)
        worker.returned.connect(self._returned)
        worker.errored.connect(self._errored)
        worker.finished.connect(self._finished)
        self.busy_changed.emit()
        worker.start()

    # Bound methods, not lambdas: Qt disconnects them when this object is destroyed (viewer closed).
    def _returned(self, result: Any) -> None:
        self.status.setText("")
        if self._done is not None:
            self._done(result)

    def _errored(self, exc: BaseException) -> None:
        text = f"{self._failed_text}: {error_text(exc)}" if self._failed_text else exc
        self.status.setText(f"failed: {notify_error(text)}")

    def _finished(self) -> None:
        self.worker, self._done = None, None
        self.busy_changed.emit()
