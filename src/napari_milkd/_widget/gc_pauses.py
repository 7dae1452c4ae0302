"""Keep Python's full garbage collections from freezing the viewer.

A full (generation-2) collection walks every container object the process holds: with napari and Qt
loaded that is ~220 000 objects and ~0.12 s (~0.2 s once torch is in too) on a laptop CPU, during which
the GIL is held, so the GUI stops, whichever thread allocated. Almost all of those objects are modules,
classes and the viewer itself, alive until the process ends. :func:`warm_up` imports pandas (napari's
first Labels layer does) and fills vispy's dash-pattern cache in a worker, then
:func:`freeze_long_lived` moves every object alive at that moment into the collector's permanent
generation (``gc.freeze``), so later collections walk only what was made since. The price: a cycle of
frozen objects that becomes garbage is not collected while frozen. Freezing once, before any session,
layer or map of ours exists, keeps that to the start-up objects; :func:`unfreeze_on_close` hands them
back to the collector when the viewer window closes (napari's tests count leaked viewers there).

Qt is imported; no core module imports this one.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

from napari.qt.threading import create_worker
from qtpy.QtCore import QEvent, QObject

#: Set once :func:`freeze_long_lived` has frozen the start-up objects (one freeze per process).
_frozen = [False]


def _warm_up_work() -> None:
    """The worker's part: pandas (napari's first Labels layer imports it: ~0.4 s) and vispy's dash
    patterns (every Labels layer's polygon-tool overlay builds 13 of them, ~0.1 s of Python loops the
    first time; vispy caches them per process). Not torch: loading its libraries holds the GIL for
    0.3–1 s whichever thread imports it, so it stays with the first job that needs it."""
    import pandas  # noqa: F401

    try:
        from vispy.visuals.line.dash_atlas import DashAtlas

        DashAtlas()
    except Exception:  # a vispy without it: the first layer pays, as before
        pass


def freeze_long_lived() -> bool:
    """``gc.freeze()`` what lives now (once per process); True when this call froze."""
    if _frozen[0]:
        return False
    gc.freeze()
    _frozen[0] = True
    return True


def unfreeze() -> None:
    """Hand the frozen objects back to the collector (the viewer closes)."""
    if _frozen[0]:
        gc.unfreeze()
        _frozen[0] = False


def warm_up(done: Callable[[], None] | None = None) -> Any:
    """Import the heavy modules in a napari worker, then (on the GUI thread) freeze what lives: the
    start-up objects. Returns the started worker; ``done`` runs after the freeze."""

    def frozen(*_: object) -> None:
        freeze_long_lived()
        if done is not None:
            done()

    worker = create_worker(_warm_up_work, _ignore_errors=True)
    worker.finished.connect(frozen)
    worker.start()
    return worker


class _CloseWatcher(QObject):
    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.Close:
            unfreeze()
        return False


def unfreeze_on_close(window: QObject) -> QObject:
    """Call :func:`unfreeze` when ``window`` (the viewer's main window) gets its close event; returns
    the event filter (parented to the window, so it lives as long as it)."""
    watcher = _CloseWatcher(window)
    window.installEventFilter(watcher)
    return watcher
