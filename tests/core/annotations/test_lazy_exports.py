"""The annotations package re-exports its public names lazily: each resolves to its submodule's object,
and reading a class constant imports neither scipy nor shapely's geometry code paths (the dock imports
those constants on the GUI thread)."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap

import pytest

import napari_milkd.core.annotations as annotations


def test_every_exported_name_resolves_to_its_submodule() -> None:
    for module, names in annotations._EXPORTS.items():
        sub = importlib.import_module(f"napari_milkd.core.annotations.{module}")
        for name in names:
            assert getattr(annotations, name) is getattr(sub, name), name
    assert set(annotations.__all__) <= set(dir(annotations))


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'no_such_thing'"):
        annotations.no_such_thing  # noqa: B018


def test_class_constants_do_not_import_scipy_or_zarr() -> None:
    code = textwrap.dedent(
        """
        import sys
        from napari_milkd.core.annotations.classes import CLASS_LABELS, POSITIVE
        from napari_milkd.core.annotations import NEGATIVE
        assert POSITIVE in CLASS_LABELS and NEGATIVE in CLASS_LABELS
        heavy = ("scipy.ndimage", "zarr", "napari_milkd.core.annotations.geometry")
        print([m for m in heavy if m in sys.modules])
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
