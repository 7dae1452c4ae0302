"""The npe2 manifest: every contribution imports; importing the package stays light."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from npe2 import PluginManifest

import napari_milkd

MANIFEST = Path(napari_milkd.__file__).parent / "napari.yaml"


def test_manifest_is_valid_and_registered() -> None:
    manifest = PluginManifest.from_file(MANIFEST)
    assert manifest.name == "napari-milkd"
    found = PluginManifest.from_distribution("napari-milkd")
    assert found.name == "napari-milkd"


@pytest.mark.parametrize(
    "python_name", [c.python_name for c in PluginManifest.from_file(MANIFEST).contributions.commands or []]
)
def test_every_python_name_imports(python_name: str) -> None:
    module_name, attr = python_name.split(":")
    module = importlib.import_module(module_name)
    assert callable(getattr(module, attr))


def test_import_does_not_load_torch_or_qt() -> None:
    code = (
        "import sys, napari_milkd, napari_milkd._reader, napari_milkd._prediction_reader, "
        "napari_milkd._annotation_reader, "
        "napari_milkd._sample_data, napari_milkd.cli, "
        "napari_milkd.core.slides.slide, napari_milkd.core.slides.zarr_store, "
        "napari_milkd.core.slides.tiling; "
        "bad = [m for m in ('torch', 'qtpy', 'PyQt5', 'napari') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
