"""Opening the dock imports the widget's modules on napari's GUI thread: they must not pull in zarr, scipy's
ndimage or torch (0.4 s and more), which the widget only needs once a slide is prepared or annotations
are read (and which ``_preload`` imports in the background when a slide opens)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap


def test_importing_the_dock_leaves_zarr_scipy_and_torch_out() -> None:
    code = textwrap.dedent(
        """
        import sys
        import napari_milkd._widget
        print([m for m in ("zarr", "scipy.ndimage", "torch") if m in sys.modules])
        """
    )
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
