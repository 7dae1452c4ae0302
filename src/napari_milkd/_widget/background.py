"""Short jobs of the slide widget (import, export, taking a finished map, Prepare's layers) off the GUI
thread, and their results shown in steps.

The rule: nothing a user does costs more than ~100 ms on the GUI thread. A job here runs one call in a
``create_worker`` thread; while it runs the widget is busy (its buttons greyed, the status line says what
is happening); its result comes back to ``done`` on the GUI thread, and an error becomes one notification
(``failed`` + the error) and the status line. One job at a time; no Cancel (they take seconds).

What must happen on the GUI thread (napari layers: creating one, or replacing its data, costs 0.1–0.3 s
under a software OpenGL) is written as a generator, :meth:`Background.steps`: each ``yield`` hands
control back to Qt, so the canvas draws and input is answered between two layers, and the next step runs
at the next turn of the event loop. ``done`` may return such a generator: the job lasts until its last
step (:attr:`Background.busy`).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from napari.qt.threading import create_worker
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import QLabel

from napari_milkd._widget.qt_helpers import error_text, notify_error

#: GUI work in steps: a generator that yields between pieces of GUI-thread work.
Steps = Generator[None, None, None]


class Background(QObject):
    """Runs one short job at a time off the GUI thread, then its GUI steps; ``busy_changed`` fires when
    it starts and ends."""

    busy_changed = Signal()

    def __init__(self, status: QLabel, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.status = status
        #: The running worker, or None.
        self.worker: Any = None
        self._failed_text = ""
        self._done: Callable[[Any], Steps | None] | None = None
        self._steps: Steps | None = None
        self._next = QTimer(self, singleShot=True, interval=0)
        self._next.timeout.connect(self._step)

    @property
    def busy(self) -> bool:
        """True while a worker runs or GUI steps are left."""
        return self.worker is not None or self._steps is not None

    def run(
        self, call: Callable[[], Any], *, text: str, done: Callable[[Any], Steps | None], failed: str
    ) -> None:
        """Run ``call()`` in a worker; ``done(result)`` on the GUI thread, or ``failed: <error>``. When
        ``done`` returns a generator, its steps follow (:meth:`steps`)."""
        worker = create_worker(call, _ignore_errors=True)
        self.worker, self._failed_text, self._done = worker, failed, done
        self.status.setText(text)
        worker.returned.connect(self._returned)
        worker.errored.connect(self._errored)
        worker.finished.connect(self._finished)
        self.busy_changed.emit()
        worker.start()

    def steps(self, steps: Steps, *, failed: str = "") -> None:
        """Run ``steps`` on the GUI thread, one step (the code up to its next ``yield``) per turn of the
        event loop, the first now; busy until the last. An error ends them as ``failed: <error>``."""
        was_busy = self.busy
        self._steps, self._failed_text = steps, failed
        if not was_busy:
            self.busy_changed.emit()
        self._step()

    # Bound methods, not lambdas: Qt disconnects them when this object is destroyed (viewer closed).
    def _returned(self, result: Any) -> None:
        self.status.setText("")
        if self._done is not None:
            more = self._done(result)
            if more is not None:
                self.steps(more, failed=self._failed_text)

    def _errored(self, exc: BaseException) -> None:
        text = f"{self._failed_text}: {error_text(exc)}" if self._failed_text else exc
        self.status.setText(f"failed: {notify_error(text)}")

    def _finished(self) -> None:
        self.worker, self._done = None, None
        if not self.busy:
            self.busy_changed.emit()

    def _step(self) -> None:
        if self._steps is None:
            return
        try:
            next(self._steps)
        except StopIteration:
            self._end_steps()
        except Exception as exc:  # shown to the user, like a worker's error
            self._end_steps()
            self._errored(exc)
        else:
            self._next.start()

    def _end_steps(self) -> None:
        self._steps = None
        if not self.busy:
            self.busy_changed.emit()
