"""OME-Zarr (NGFF 0.5, zarr v3) labels: :func:`write_ome_zarr_labels`, :func:`read_ome_zarr_labels`.

Owns the NGFF placement of masks (:func:`ome_zarr_transform`, :func:`ome_multiscales`; origin at the
centre of pixel ``(0, 0)``), the label colours and the atomic folder replacement (``_replace_folder``).
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


def ome_multiscales(name: str, mpp: float | None, downsample: float) -> list[dict[str, Any]]:
    """NGFF 0.5 ``multiscales`` for one 2-D level made at ``downsample`` (axes y/x, µm when ``mpp`` is known,
    scale and translation from :func:`ome_zarr_transform`), its array at path ``"0"``."""
    scale, translation = ome_zarr_transform(mpp, downsample)
    unit = {"unit": "micrometer"} if mpp is not None else {}
    return [
        {
            "name": name,
            "axes": [{"name": "y", "type": "space", **unit}, {"name": "x", "type": "space", **unit}],
            "datasets": [
                {
                    "path": "0",
                    "coordinateTransformations": [
                        {"type": "scale", "scale": scale},
                        {"type": "translation", "translation": translation},
                    ],
                }
            ],
        }
    ]


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
    chunk: int = 512,
) -> Path:
    """Write ``labels`` as an OME-Zarr (NGFF 0.5, zarr v3) image-label at ``path/labels/<name>``.

    The root group declares ``ome.version = "0.5"``, ``labels/`` lists ``[name]``, and
    ``labels/<name>`` holds array ``0`` (``uint8``, ``chunk``² chunks, dimension names y, x) with
    ``multiscales`` (axes y/x, unit micrometer when ``mpp`` is known, else pixels; transforms from
    :func:`ome_zarr_transform`: ``scale = mpp·ds``, ``translation = mpp·(ds−1)/2``) and ``image-label``
    (``colors`` as ``label-value``/``rgba``). Also ``milkd`` facts (downsample, mpp) for the round trip.
    The folder is written next to the target under a temporary name and renamed onto it; an existing
    target is moved aside first and deleted only after the rename. Returns ``path``.
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
    palette = dict(DEFAULT_LABEL_COLORS if colors is None else colors)
    ome_label = {
        "version": "0.5",
        "multiscales": ome_multiscales(name, mpp, downsample),
        "image-label": {
            "colors": [
                {"label-value": int(v), "rgba": [int(c) for c in rgba]} for v, rgba in sorted(palette.items())
            ],
        },
    }
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        root.attrs["ome"] = {"version": "0.5"}
        group = root.create_group("labels")
        group.attrs["ome"] = {"version": "0.5", "labels": [name]}
        label_group = group.create_group(name)
        label_group.attrs["ome"] = ome_label
        label_group.attrs["milkd"] = {"downsample": float(downsample), "mpp": mpp}
        side = max(1, int(chunk))
        array = label_group.create_array(
            "0",
            shape=labels.shape,
            chunks=(min(side, max(1, labels.shape[0])), min(side, max(1, labels.shape[1]))),
            dtype="uint8",
            fill_value=0,
            dimension_names=("y", "x"),
        )
        array[...] = labels
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
