"""Import the plugin's Qt-free core in a background thread once a slide is open, before the dock is.

napari imports a plugin's widget module on the GUI thread when the user opens its dock; the core it pulls
in (annotations with shapely, the session, the inference runtime) took ~0.2 s of that (shapely alone
0.17–0.19 s on the 2-core bench machine). The dock's own import no longer needs them (it imports the
annotation readers and geometry where it uses them: ~0.13 s with the viewer up, against ~0.55 s when it
pulled in zarr, scipy and shapely), but its first Import… or Prepare does. The reader and the
sample-data contribution call :func:`preload_core` after opening a slide, so by the time the dock opens
those modules are imported. An import the GUI thread asks for while this thread is still busy with it
simply waits for it (Python's per-module import locks); core never imports the widget, so the two threads
import in one direction and cannot deadlock. May import the standard library only (and, in its thread,
``napari_milkd.core``).
"""

from __future__ import annotations

import importlib
import threading

#: What the thread imports, in order (each pulls in what it needs).
CORE_MODULES = (
    "napari_milkd.core.annotations.io",
    "napari_milkd.core.annotations.geometry",
    "napari_milkd.core.session.slide_session",
)

_started = threading.Lock()
_thread: list[threading.Thread] = []


def _import_core() -> None:
    for name in CORE_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:  # the GUI thread's own import will report it
            return


def preload_core() -> threading.Thread:
    """Start the background import (once per process) and return its thread."""
    with _started:
        if not _thread:
            thread = threading.Thread(target=_import_core, name="milkd-preload-core", daemon=True)
            thread.start()
            _thread.append(thread)
        return _thread[0]
