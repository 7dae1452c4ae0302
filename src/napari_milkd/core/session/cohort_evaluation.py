"""Scoring a trained model on whole slides against their ground truth (``milkd evaluate --slides``).

Owns: the ground truth of a slide on the model's working map (:func:`truth_on_map`, from a label image or
tumour polygons), the prediction of a slide in memory at the model's input spec (:func:`predict_slide_map`,
the engine of ``milkd predict``: the same tile grid, overlap, blending and mask policy, restricted to
tissue), and the scores (:func:`score_masks`, :func:`evaluate_slides`).

Scores, all at the working resolution of the model (one map pixel per tile pixel):

* Dice (= F1) and IoU of the tumour class; both masks empty → 1.0;
* HD95 in µm: the 95th percentile of the symmetric distances between the two mask boundaries
  (:func:`~napari_milkd.core.engine.metrics.boundary_distances`), times the map pixel's size in µm;
  ``None`` when either mask is empty (undefined);
* overall: Dice and IoU of the pooled pixels of all slides, HD95 of the pooled boundary distances.

Qt-free; may import numpy, scipy, Pillow, tifffile and core packages; torch only through the engine.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_milkd.core.errors import InputError
from napari_milkd.core.progress import relay
from napari_milkd.core.session.cohort_manifest import TruthSlide, slide_mpp
from napari_milkd.core.slides.geometry import SlideWork, plan_work, tissue_map
from napari_milkd.core.slides.slide import SlideSource, open_slide


@dataclass(frozen=True)
class SlideScore:
    """One slide's scores: ``dice``, ``iou``, ``hd95_um`` (``None`` when a mask is empty), the tumour pixels
    of truth and prediction, the map pixel size ``map_um`` (µm) and the map shape ``(rows, cols)``."""

    slide: str
    dice: float
    iou: float
    hd95_um: float | None
    truth_px: int
    predicted_px: int
    map_um: float
    shape: tuple[int, int]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (``shape`` as a list)."""
        out = asdict(self)
        out["shape"] = list(self.shape)
        return out


@dataclass(frozen=True)
class CohortScore:
    """Every slide's :class:`SlideScore` and the pooled ``overall`` (``dice``, ``iou``, ``hd95_um``,
    ``truth_px``, ``predicted_px``, ``n_slides``), with the checkpoint scored and its µm/px."""

    checkpoint: str
    work_mpp: float
    slides: list[SlideScore]
    overall: dict[str, Any]
    warnings: list[str]

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` object of ``milkd evaluate --slides`` (see ``docs/cli.md``)."""
        return {
            "checkpoint": self.checkpoint,
            "work_mpp": self.work_mpp,
            "slides": [s.to_dict() for s in self.slides],
            "overall": dict(self.overall),
            "warnings": list(self.warnings),
        }


def _read_label_image(path: Path) -> np.ndarray:
    """A label image as a 2-D array (the maximum over channels of a colour image)."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            arr = np.asarray(tifffile.imread(path))
        else:
            from PIL import Image

            with Image.open(path) as im:
                arr = np.asarray(im)
    except Exception as exc:
        raise InputError(f"cannot read truth image {path}: {type(exc).__name__}: {exc}") from None
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=-1) if arr.shape[-1] in (3, 4) else arr.max(axis=0)
    if arr.ndim != 2:
        raise InputError(f"truth image {path} is not a 2-D label image (shape {arr.shape})")
    return arr


def truth_on_map(
    row: TruthSlide,
    source: SlideSource,
    work: SlideWork,
    class_map: Mapping[str, str] | None = None,
) -> np.ndarray:
    """The ground-truth tumour mask of ``row``'s slide on ``work``'s map (bool, ``work.shape``).

    A label image (non-zero = tumour, made at ``row.truth_downsample`` from level 0) is resampled by
    nearest neighbour at the map pixels' centres; its size must be the level-0 size divided by its
    downsample (±1 px), else :class:`InputError`. Tumour polygons are rasterised with the class semantics
    of ``core.annotations.classes`` (``positive`` classes are tumour; exclusions erase; ``class_map``
    overrides).
    """
    h0, w0 = source.info.shape
    if row.truth is not None:
        image = _read_label_image(row.truth)
        ds = row.truth_downsample
        expected = (h0 / ds, w0 / ds)
        if abs(image.shape[0] - expected[0]) > 1 or abs(image.shape[1] - expected[1]) > 1:
            raise InputError(
                f"truth image {row.truth.name} is {image.shape[1]}×{image.shape[0]} px but {row.name} at "
                f"truth_downsample {ds:g} is {expected[1]:.0f}×{expected[0]:.0f} px; check truth_downsample"
            )
        rows = ((np.arange(work.shape[0]) + 0.5) * work.downsample / ds).astype(np.int64)
        cols = ((np.arange(work.shape[1]) + 0.5) * work.downsample / ds).astype(np.int64)
        out = np.zeros(work.shape, bool)
        rr, cc = rows < image.shape[0], cols < image.shape[1]
        out[np.ix_(rr, cc)] = image[np.ix_(rows[rr], cols[cc])] > 0
        return out
    from napari_milkd.core.annotations import POSITIVE, regions_from_annotations
    from napari_milkd.core.annotations.io import read_annotations

    assert row.truth_annotations is not None
    result = read_annotations(
        row.truth_annotations, slide_shape_l0=(h0, w0), offset_l0=source.info.offset_l0, class_map=class_map
    )
    labels, excluded = regions_from_annotations(
        result.annotations, work.shape, work.downsample, class_map, values={POSITIVE: 1}
    )
    return (labels > 0) & ~excluded


def score_masks(predicted: np.ndarray, truth: np.ndarray, map_um: float, slide: str = "") -> SlideScore:
    """Dice, IoU and HD95 (µm, pixels of ``map_um`` µm) of a predicted tumour mask against the truth."""
    from napari_milkd.core.engine.metrics import boundary_distances, f1_score, iou_score

    pred, gt = np.asarray(predicted, bool), np.asarray(truth, bool)
    if pred.shape != gt.shape:
        raise InputError(f"prediction {pred.shape} and truth {gt.shape} differ in shape")
    hd95 = None
    if pred.any() and gt.any():
        hd95 = float(np.percentile(boundary_distances(pred, gt), 95)) * map_um
    return SlideScore(
        slide=slide,
        dice=f1_score(pred, gt),
        iou=iou_score(pred, gt),
        hd95_um=hd95,
        truth_px=int(gt.sum()),
        predicted_px=int(pred.sum()),
        map_um=float(map_um),
        shape=(int(pred.shape[0]), int(pred.shape[1])),
    )


def predict_slide_map(
    model: Any,
    source: SlideSource,
    work: SlideWork,
    *,
    threshold: float,
    batch_size: int = 16,
    device: str = "auto",
    stage: str = "predict",
) -> Generator[Any, None, np.ndarray]:
    """The tumour mask of a slide in memory (a job generator: yields prediction progress, returns uint8
    0/1 at ``work.shape``): :func:`~napari_milkd.core.inference.stream.predict_map` over ``work``'s grid,
    then the mask policy of every front end (:func:`~napari_milkd.core.inference.masks.
    mask_from_probability`: smoothed, thresholded at ``threshold``, inside the tissue, specks removed)."""
    from napari_milkd.core.inference.masks import mask_from_probability
    from napari_milkd.core.inference.stream import predict_map

    probability = yield from relay(
        predict_map(model, source, work.grid, batch_size=batch_size, device=device, stage=stage), lambda e: e
    )
    return mask_from_probability(probability, tissue_map(work), threshold=threshold)


def evaluate_slides(
    rows: Sequence[TruthSlide],
    run: str | os.PathLike[str],
    *,
    model: str = "auto",
    class_map: Mapping[str, str] | None = None,
    device: str = "auto",
    batch_size: int = 16,
) -> Generator[Any, None, CohortScore]:
    """Predict every slide of ``rows`` with a run's model at its input spec and score it (a job generator:
    yields prediction progress, returns the :class:`CohortScore`).

    ``model``: ``"auto"`` (the run's ``student.pt``, else ``teacher.pt``), ``"teacher"`` or ``"student"``.
    The model runs at the µm/px and tile its checkpoint records (a checkpoint without µm/px is refused).
    Slides follow the manifest's µm/px rule (:func:`~.cohort_manifest.slide_mpp`; a contradicting value is
    a warning, not used).
    """
    from napari_milkd.core.engine.checkpoint import load_checkpoint
    from napari_milkd.core.engine.metrics import boundary_distances
    from napari_milkd.core.engine.spec import checkpoint_spec, default_overlap
    from napari_milkd.core.engine.train import load_model
    from napari_milkd.core.inference.cohort import model_mpp, resolve_checkpoint
    from napari_milkd.core.runtime import free_device_memory

    if model == "auto":
        checkpoint = resolve_checkpoint(run)
    elif model in ("teacher", "student"):
        checkpoint = Path(run) / f"{model}.pt"
        if not checkpoint.is_file():
            raise InputError(f"{Path(run)} has no {model}.pt")
    else:
        raise InputError(f"unknown model {model!r}; choose auto, teacher or student")
    spec = checkpoint_spec(load_checkpoint(checkpoint))
    mpp = model_mpp(spec, None, checkpoint)
    net, config = load_model(checkpoint, device=device)
    tile = int(config.size) if spec is None else spec.tile
    overlap = default_overlap(tile) if spec is None or spec.overlap is None else spec.overlap
    scores: list[SlideScore] = []
    warnings: list[str] = []
    inter = union = pred_px = truth_px = 0
    distances: list[np.ndarray] = []
    for row in rows:
        given, warning = slide_mpp(row.slide, row.mpp)
        if warning:
            warnings.append(warning)
        source = open_slide(row.slide, mpp=given)
        try:
            assert source.info.mpp is not None
            work = plan_work(source, work_mpp=mpp, tile=tile, overlap=overlap)
            truth = truth_on_map(row, source, work, class_map)
            predicted = yield from predict_slide_map(
                net,
                source,
                work,
                threshold=config.threshold,
                batch_size=batch_size,
                device=device,
                stage=f"predict {row.name}",
            )
            map_um = float(work.downsample * source.info.mpp)
        finally:
            source.close()
        pred = predicted > 0
        if not truth.any():
            what = row.truth.name if row.truth is not None else f"{row.truth_annotations} (tumour classes)"
            warnings.append(f"{row.name}: its truth {what} has no tumour on the map; scored as tumour-free")
        scores.append(score_masks(pred, truth, map_um, row.name))
        inter += int((pred & truth).sum())
        union += int((pred | truth).sum())
        pred_px += int(pred.sum())
        truth_px += int(truth.sum())
        if pred.any() and truth.any():
            distances.append(boundary_distances(pred, truth) * map_um)
    del net
    free_device_memory()
    total = pred_px + truth_px
    overall = {
        "dice": 1.0 if total == 0 else 2 * inter / total,
        "iou": 1.0 if union == 0 else inter / union,
        "hd95_um": float(np.percentile(np.concatenate(distances), 95)) if distances else None,
        "truth_px": truth_px,
        "predicted_px": pred_px,
        "n_slides": len(scores),
    }
    return CohortScore(str(checkpoint), float(mpp), scores, overall, warnings)
