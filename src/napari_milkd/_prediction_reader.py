"""napari reader contribution: a ``milkd predict`` output (``<name>.zarr``) as multiscale layers.

Owns recognising milkd's own prediction zarr (its marker in ``zarr.json``, read without importing zarr);
any other folder (a user's OME-Zarr, a slide folder) is left to other readers (``None``). The probability
becomes a multiscale image layer and the tumour mask a multiscale labels layer over every level the
zarr's NGFF ``multiscales`` list (lazy zarr arrays: napari reads only the level and tiles on screen),
placed like the slide (:func:`~napari_milkd._layers.mask_layer_kwargs`: µm when the slide's µm/px is
known). Separate from :mod:`._reader` (slides). Imports no torch and touches no Qt.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from napari_milkd._layers import MICROMETRES, LayerDataTuple, mask_layer_kwargs
from napari_milkd.core.inference.stream import prediction_facts, prediction_levels

ReaderFunction = Callable[[str | list[str]], list[LayerDataTuple]]

#: Metadata key under which the prediction's ``milkd`` facts travel with its layers.
PREDICTION_META = "milkd_prediction"


def napari_get_reader(path: str | list[str]) -> ReaderFunction | None:
    """Return :func:`read_prediction` when ``path`` is one prediction zarr written by milkd, else ``None``."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    return read_prediction if prediction_facts(Path(path)) is not None else None


def _data(levels: list[Any]) -> tuple[Any, bool]:
    return (levels, True) if len(levels) > 1 else (levels[0], False)


def read_prediction(path: str | list[str]) -> list[LayerDataTuple]:
    """The probability (image, 0..255 = p·255) and the tumour mask (labels), each multiscale when the
    zarr has a pyramid. Raises :class:`~napari_milkd.core.errors.InputError` when ``path`` is not one."""
    if isinstance(path, list):
        path = path[0]
    folder = Path(path)
    probability, mask, facts = prediction_levels(folder)
    mpp = facts.get("slide_mpp")
    mpp = float(mpp) if isinstance(mpp, int | float) and mpp > 0 else None
    scale = (mpp, mpp) if mpp else (1.0, 1.0)
    units = MICROMETRES if mpp else None
    downsample = float(facts.get("downsample", 1.0))
    stem = folder.name.removesuffix(".zarr") or folder.name
    meta = {PREDICTION_META: facts}
    prob_data, prob_multi = _data(probability)
    mask_data, mask_multi = _data(mask)
    prob_kwargs = mask_layer_kwargs(
        scale,
        downsample,
        f"{stem} probability",
        units=units,
        mpp=mpp,
        multiscale=prob_multi,
        contrast_limits=(0, 255),
        colormap="inferno",
        opacity=0.6,
        metadata=meta,
    )
    mask_kwargs = mask_layer_kwargs(
        scale,
        downsample,
        f"{stem} tumour",
        units=units,
        mpp=mpp,
        multiscale=mask_multi,
        opacity=0.5,
        metadata=meta,
    )
    return [(prob_data, prob_kwargs, "image"), (mask_data, mask_kwargs, "labels")]
