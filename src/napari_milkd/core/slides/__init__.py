"""Slide access: what a slide file holds and how to read it.

Owns :class:`~.slide.SlideSource` (OpenSlide and in-memory), the lazy zarr view (:mod:`.zarr_store`),
tissue detection (:mod:`.tissue`), tile grids at a target µm/px (:mod:`.tiling`), the working-resolution
map geometry (:mod:`.geometry`) and the synthetic sample slide (:mod:`.sample`).

Bottom of the core's layers: may import numpy, openslide, tifffile, zarr, scikit-image and
``core.errors``/``core.atomic``; never torch, napari, Qt, nor any other core package.
"""
