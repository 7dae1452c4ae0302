"""OME-Zarr (NGFF 0.5, zarr v3) labels: :func:`write_ome_zarr_labels`, :func:`read_ome_zarr_labels`.

Owns the NGFF placement of masks and their pyramids (:func:`ome_zarr_transform`, :func:`ome_multiscales`,
:func:`pyramid_levels`, :func:`extend_pyramid`; origin at the centre of pixel ``(0, 0)``), the label
colours and class names, and the atomic folder replacement (``_replace_folder``).
May import numpy, zarr (lazily), the standard library, :mod:`.model` and ``core.errors``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from napari_milkd.core.annotations.model import RGBA
from napari_milkd.core.errors import InputError, write_error

DEFAULT_LABEL_COLORS: dict[int, RGBA] = {1: (200, 0, 0, 255), 2: (112, 112, 225, 255)}
#: Class names written to ``image-label`` ``properties`` (QuPath's names for these colours); values
#: without one are ``"label N"``.
DEFAULT_CLASS_NAMES: dict[int, str] = {1: "Tumor", 2: "Normal"}
#: A pyramid stops once its longer side is at most this many pixels.
PYRAMID_SMALLEST = 256


def ome_zarr_transform(mpp: float | None, downsample: float) -> tuple[list[float], list[float]]:
    """``(scale, translation)`` per axis (y, x) of a mask made at ``downsample`` in NGFF terms.

    NGFF puts the origin at the centre of pixel (0, 0) of the full-resolution grid. Mask pixel ``r``
    covers level-0 ``[r·ds, (r+1)·ds)`` (corner origin), so its centre is at level-0 ``(r + ½)·ds`` in
    the corner convention, ``(r + ½)·ds − ½ = r·ds + (ds − 1)/2`` in the centre convention: hence
    ``scale = u·ds`` and ``translation = u·(ds − 1)/2`` with ``u = mpp`` (µm) or 1 (level-0 pixels when
    the µm/px is unknown). The same placement napari gets from ``_layers.mask_layer_kwargs``.
    """
    unit = float(mpp) if mpp is not None else 1.0
    s = unit * float(downsample)
    t = unit * (float(downsample) - 1.0) / 2.0
    return [s, s], [t, t]


def ome_multiscales(
    name: str, mpp: float | None, downsample: float, *, levels: int = 1, channel: bool = False
) -> list[dict[str, Any]]:
    """NGFF 0.5 ``multiscales`` for a 2-D image made at ``downsample``: axes y/x (µm when ``mpp`` is
    known), preceded by a ``c`` channel axis when ``channel``; ``levels`` arrays at paths ``"0"``,
    ``"1"``, ... where level ``k`` is level 0 halved ``k`` times, so it sits at downsample ``ds·2ᵏ``
    (scale and translation from :func:`ome_zarr_transform`: ``scale = u·ds·2ᵏ``,
    ``translation = u·(ds·2ᵏ − 1)/2``, the centre of level-``k`` pixel 0 in NGFF's centre-origin frame)."""
    unit = {"unit": "micrometer"} if mpp is not None else {}
    axes: list[dict[str, Any]] = [
        {"name": "y", "type": "space", **unit},
        {"name": "x", "type": "space", **unit},
    ]
    if channel:
        axes.insert(0, {"name": "c", "type": "channel"})
    datasets = []
    for k in range(max(1, int(levels))):
        scale, translation = ome_zarr_transform(mpp, float(downsample) * 2**k)
        if channel:
            scale, translation = [1.0, *scale], [0.0, *translation]
        datasets.append(
            {
                "path": str(k),
                "coordinateTransformations": [
                    {"type": "scale", "scale": scale},
                    {"type": "translation", "translation": translation},
                ],
            }
        )
    return [{"name": name, "axes": axes, "datasets": datasets}]


def pyramid_levels(
    shape: tuple[int, ...], *, smallest: int = PYRAMID_SMALLEST, most: int = 12, least: int = 2
) -> int:
    """How many levels a 2-D pyramid over ``shape`` (rows, cols) gets: level 0, then halvings (rounding
    up) until the longer side is at most ``smallest`` px; at least ``least`` levels, at most ``most``."""
    rows, cols = int(shape[0]), int(shape[1])
    n = 1
    while n < most and (n < least or max(rows, cols) > smallest):
        rows, cols = -(-rows // 2), -(-cols // 2)
        n += 1
    return n


def _halve_nearest(labels: np.ndarray) -> np.ndarray:
    """Next pyramid level of a label map (y, x): every second pixel (nearest, values stay labels)."""
    return labels[::2, ::2]


def _halve_mean(image: np.ndarray) -> np.ndarray:
    """Next pyramid level of an image (c, y, x) or (y, x): the mean of each 2×2 block (edge pixels
    repeated when a side is odd), rounded back to the image's dtype for integers."""
    rows, cols = image.shape[-2:]
    pad = [(0, 0)] * (image.ndim - 2) + [(0, rows % 2), (0, cols % 2)]
    padded = np.pad(image, pad, mode="edge")
    if np.issubdtype(image.dtype, np.integer) and image.dtype.itemsize <= 2:
        wide = padded.astype(np.int32 if image.dtype.itemsize == 2 else np.uint16)
        total = wide[..., 0::2, 0::2] + wide[..., 1::2, 0::2] + wide[..., 0::2, 1::2] + wide[..., 1::2, 1::2]
        return ((total + 2) // 4).astype(image.dtype)
    wide = padded.astype(np.float64)
    mean = (wide[..., 0::2, 0::2] + wide[..., 1::2, 0::2] + wide[..., 0::2, 1::2] + wide[..., 1::2, 1::2]) / 4
    return (np.rint(mean) if np.issubdtype(image.dtype, np.integer) else mean).astype(image.dtype)


def _write_pyramid(
    group: Any, levels: list[np.ndarray], dims: tuple[str, ...], chunk: int, fill_value: int | float = 0
) -> None:
    side = max(1, int(chunk))
    for k, data in enumerate(levels):
        chunks = tuple(min(side, max(1, n)) for n in data.shape[-2:])
        if len(dims) == 3:
            chunks = (data.shape[0], *chunks)
        array = group.create_array(
            str(k),
            shape=data.shape,
            chunks=chunks,
            dtype=data.dtype,
            fill_value=fill_value,
            dimension_names=dims,
        )
        array[...] = data


def extend_pyramid(group: Any, levels: int, *, mean: bool) -> list[Any]:
    """Write arrays ``"1"`` .. ``str(levels - 1)`` of the zarr ``group`` from its array ``"0"`` (2-D, y/x):
    level ``k`` is level ``k − 1`` halved (rounding up) by :func:`_halve_mean` (``mean``: 2×2 mean, for
    images) or :func:`_halve_nearest` (every second pixel, for labels), the same halving
    :func:`write_ome_zarr_labels` uses. Level ``k − 1`` is read in bands of two rows of level-``k``
    chunks, so memory is a band, never a level; chunks, dtype and fill value follow level 0. Existing
    arrays of those names are replaced (a resumed run rewrites what a killed one left). Returns the
    arrays, level 0 first; the caller lists them in the ``multiscales`` (:func:`ome_multiscales`)."""
    halve = _halve_mean if mean else _halve_nearest
    base = group["0"]
    arrays = [base]
    for k in range(1, max(1, int(levels))):
        prev = arrays[-1]
        rows, cols = (int(n) for n in prev.shape)
        shape = (-(-rows // 2), -(-cols // 2))
        chunks = tuple(min(int(c), max(1, n)) for c, n in zip(base.chunks, shape, strict=True))
        array = group.create_array(
            str(k),
            shape=shape,
            chunks=chunks,
            dtype=base.dtype,
            fill_value=base.fill_value,
            dimension_names=("y", "x"),
            overwrite=True,
        )
        band = 2 * chunks[0]
        for r0 in range(0, rows, band):
            block = np.asarray(prev[r0 : r0 + band, :])
            array[r0 // 2 : r0 // 2 + -(-block.shape[0] // 2), :] = halve(block)
        arrays.append(array)
    return arrays


def _check_label_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
        raise InputError(f"label name {name!r} is not a plain folder name")


def write_ome_zarr_labels(
    path: str | os.PathLike[str],
    labels: np.ndarray,
    *,
    name: str,
    mpp: float | None,
    downsample: float,
    colors: Mapping[int, RGBA] | None = None,
    class_names: Mapping[int, str] | None = None,
    image: np.ndarray | None = None,
    chunk: int = 512,
) -> Path:
    """Write an OME-Zarr (NGFF 0.5, zarr v3) image with ``labels`` as image-label ``labels/<name>``.

    The root is a multiscales image: ``image`` (the slide at the mask's resolution, ``(y, x, c)`` RGB
    stored as ``(c, y, x)`` with a channel axis, or ``(y, x)``), or, when none is given, the labels
    themselves as a single-channel ``uint8`` image, so every reader (ome-zarr-py, napari-ome-zarr, the
    NGFF validators) finds an image with its labels. ``labels/`` lists ``[name]``; ``labels/<name>``
    holds ``uint8`` arrays (``chunk``² chunks, dimension names y, x) with ``multiscales`` and
    ``image-label``: ``colors`` (``label-value``/``rgba``), ``properties`` (``label-value``/``class``:
    ``class_names`` over :data:`DEFAULT_CLASS_NAMES`, else ``"label N"``) for every coloured value, and
    ``source`` pointing at the root image. Image and labels share one pyramid (:func:`pyramid_levels`):
    level ``k`` is level 0 halved ``k`` times (labels: nearest, image: 2×2 mean), placed by
    :func:`ome_multiscales` (level 0: ``scale = mpp·ds``, ``translation = mpp·(ds−1)/2``; axes in µm
    when ``mpp`` is known, else level-0 pixels). Also ``milkd`` facts (downsample, mpp) for the round
    trip. The folder is written next to the target under a temporary name and renamed onto it; an
    existing target is moved aside first and deleted only after the rename. Returns ``path``.
    """
    import zarr

    _check_label_name(name)
    target = Path(path)
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise InputError(f"{target}: labels must be 2-D (rows, cols), got shape {labels.shape}")
    if labels.dtype != np.uint8:
        if labels.size and (labels.min() < 0 or labels.max() > 255):
            raise InputError(f"{target}: label values must be 0..255")
        labels = labels.astype(np.uint8)
    if not downsample > 0 or (mpp is not None and not mpp > 0):
        raise InputError(f"{target}: downsample and µm/px must be positive")
    if image is None:
        root_image, channel = labels, False
    else:
        image = np.asarray(image)
        if image.ndim not in (2, 3) or image.shape[:2] != labels.shape:
            raise InputError(
                f"{target}: image must be (rows, cols[, channels]) of the labels' shape {labels.shape}, "
                f"got {image.shape}"
            )
        root_image, channel = (np.moveaxis(image, -1, 0), True) if image.ndim == 3 else (image, False)
    palette = dict(DEFAULT_LABEL_COLORS if colors is None else colors)
    names = {**DEFAULT_CLASS_NAMES, **(class_names or {})}
    levels = pyramid_levels(labels.shape)
    label_levels, image_levels = [labels], [np.ascontiguousarray(root_image)]
    for _ in range(levels - 1):
        label_levels.append(_halve_nearest(label_levels[-1]))
        image_levels.append(_halve_mean(image_levels[-1]))
    ome_label = {
        "version": "0.5",
        "multiscales": ome_multiscales(name, mpp, downsample, levels=levels),
        "image-label": {
            "colors": [
                {"label-value": int(v), "rgba": [int(c) for c in rgba]} for v, rgba in sorted(palette.items())
            ],
            "properties": [
                {"label-value": int(v), "class": names.get(int(v), f"label {int(v)}")}
                for v in sorted(palette)
            ],
            "source": {"image": "../../"},
        },
    }
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        root.attrs["ome"] = {
            "version": "0.5",
            "multiscales": ome_multiscales("image", mpp, downsample, levels=levels, channel=channel),
        }
        _write_pyramid(root, image_levels, ("c", "y", "x") if channel else ("y", "x"), chunk)
        group = root.create_group("labels")
        group.attrs["ome"] = {"version": "0.5", "labels": [name]}
        label_group = group.create_group(name)
        label_group.attrs["ome"] = ome_label
        label_group.attrs["milkd"] = {"downsample": float(downsample), "mpp": mpp}
        _write_pyramid(label_group, label_levels, ("y", "x"), chunk)
        _replace_folder(tmp, target)
    except OSError as exc:
        raise write_error(target, exc) from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _replace_folder(tmp: Path, target: Path) -> None:
    """Rename the finished folder ``tmp`` onto ``target``; an existing target is moved aside first."""
    aside = None
    if target.exists() or target.is_symlink():
        aside = target.with_name(f"{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, aside)
    try:
        os.replace(tmp, target)
    except BaseException:
        if aside is not None:
            os.replace(aside, target)
        raise
    if aside is not None:
        if aside.is_dir() and not aside.is_symlink():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            aside.unlink(missing_ok=True)


def read_ome_zarr_labels(path: str | os.PathLike[str], name: str) -> tuple[np.ndarray, float]:
    """Read label image ``name`` written by :func:`write_ome_zarr_labels`: ``(labels, downsample)``.

    The downsample comes from our ``milkd`` attributes, else from the NGFF scale when the axes have no
    unit (level-0 pixels). Raises :class:`InputError` when the folder, the label or its metadata is
    missing.
    """
    import zarr

    _check_label_name(name)
    folder = Path(path)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such OME-Zarr folder")
    try:
        group = zarr.open_group(str(folder / "labels" / name), mode="r")
        array = group["0"]
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError, ValueError) as exc:
        raise InputError(f"{folder}: no label image {name!r} ({exc.__class__.__name__})") from None
    attrs = group.attrs.asdict()
    milkd = attrs.get("milkd")
    if isinstance(milkd, dict) and isinstance(milkd.get("downsample"), int | float):
        downsample = float(milkd["downsample"])
    else:
        try:
            multiscale = attrs["ome"]["multiscales"][0]
            transforms = multiscale["datasets"][0]["coordinateTransformations"]
            scale = next(t["scale"] for t in transforms if t["type"] == "scale")
            if any("unit" in a for a in multiscale["axes"]):
                raise InputError(f"{folder}: label {name!r} is in µm and does not say its downsample")
            downsample = float(scale[-1])
        except (KeyError, IndexError, TypeError, StopIteration):
            raise InputError(f"{folder}: label {name!r} has no NGFF multiscales metadata") from None
    return np.asarray(array[...]), downsample
