"""Headless engine of napari-milkd.

May import numpy, torch, zarr, openslide, scikit-image, shapely; never napari, Qt, magicgui or superqt
(enforced by the import-linter contracts in ``pyproject.toml``). Submodules are imported explicitly,
so ``import napari_milkd.core`` stays cheap and torch-free.
"""
