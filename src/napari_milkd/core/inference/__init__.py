"""Prediction over whole slides: tiled, blended, streamed into OME-Zarr, on Dask for cohorts.

Owns the inference loop (:mod:`.stream`), the mask policy that turns a probability map into the mask and
polygons users see (:mod:`.masks`), and ``milkd predict``'s per-slide job and cohort runner
(:mod:`.cohort`). May import the engine, annotations and slides packages; never session, napari or Qt.
"""
