"""The background import of the dock's core (``napari_milkd._preload``), started by opening a slide."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_opening_a_slide_imports_the_core_in_the_background() -> None:
    # A fresh interpreter: nothing of the core's annotations or session is imported until a slide opens,
    # then a single background thread imports them, and a second slide starts no second thread.
    code = textwrap.dedent(
        """
        import sys
        from napari_milkd._reader import read_slide
        from napari_milkd.core.slides.sample import ensure_sample_slide
        from napari_milkd import _preload
        assert "shapely" not in sys.modules and "napari_milkd.core.session.slide_session" not in sys.modules
        path = str(ensure_sample_slide().path)
        read_slide(path)
        thread = _preload.preload_core()
        thread.join(60)
        assert not thread.is_alive()
        read_slide(path)
        assert _preload.preload_core() is thread
        assert all(name in sys.modules for name in _preload.CORE_MODULES) and "shapely" in sys.modules
        assert "qtpy" not in sys.modules and "torch" not in sys.modules  # Qt-free, no torch
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
