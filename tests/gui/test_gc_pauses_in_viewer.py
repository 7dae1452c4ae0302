"""The slide widget keeps Python's full collections short (issue 16): once it has warmed up (pandas
imported in a worker), the objects alive at start-up are frozen out of the collector's walks, and
closing the viewer hands them back (napari's fixture fails a test whose viewer is not collected)."""

from __future__ import annotations

import gc
import sys


def test_the_widget_freezes_start_up_objects_and_the_viewer_close_unfreezes(
    make_napari_viewer, qtbot
) -> None:
    viewer = make_napari_viewer(show=True)
    docked = viewer.window.add_plugin_dock_widget("napari-milkd", "Slide masks")[1]
    # The warm-up waits until the dock is laid out and drawn (run beside it, it slowed the opening 2x).
    assert docked._warm_up is None and not docked.warmed_up
    qtbot.waitUntil(lambda: docked.warmed_up, timeout=120_000)
    assert "pandas" in sys.modules
    assert gc.get_freeze_count() > 100_000  # napari and Qt: what a full collection no longer walks

    viewer.close()
    assert gc.get_freeze_count() == 0  # napari's fixture then checks that no viewer leaked
