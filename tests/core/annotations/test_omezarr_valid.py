"""The OME-Zarr that napari-milkd writes is a valid OME-NGFF 0.5 dataset (issue 12): an image at the root,
its labels under ``labels/``, a multiscale pyramid, class names in ``image-label`` properties. Checked
with ``ome-zarr-models`` (a dev dependency), the validator behind the NGFF tools."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_milkd.core.annotations import read_ome_zarr_labels, write_ome_zarr_labels

pytest.importorskip("ome_zarr_models")
zarr = pytest.importorskip("zarr")
from ome_zarr_models.v05.image import Image  # noqa: E402
from ome_zarr_models.v05.image_label import ImageLabel  # noqa: E402


def _validated(path: Path, label: str) -> tuple[Image, ImageLabel]:
    """The root as an NGFF image (with its labels) and ``labels/<label>`` as an image-label; raises when
    either is invalid."""
    group = zarr.open_group(str(path), mode="r")
    image = Image.from_zarr(group)
    assert image.labels is not None and image.labels.label_paths == [label]
    return image, ImageLabel.from_zarr(group[f"labels/{label}"])


@pytest.mark.parametrize("with_image", [False, True], ids=["mask-as-image", "rgb-image"])
def test_widget_ome_zarr_export_is_valid_ngff(tmp_path: Path, with_image: bool) -> None:
    labels = np.zeros((600, 301), np.uint8)
    labels[100:300, 50:200] = 1
    rgb = np.random.default_rng(0).integers(0, 256, (*labels.shape, 3), dtype=np.uint8)
    target = write_ome_zarr_labels(
        tmp_path / "slide.zarr",
        labels,
        name="teacher",
        mpp=0.5,
        downsample=4.0,
        image=rgb if with_image else None,
        class_names={2: "Stroma"},
    )
    image, image_label = _validated(target, "teacher")

    # a pyramid, the same levels for image and labels, each level halving and placed by its pixel centres
    (multiscale,) = image.ome_attributes.multiscales
    assert [d.path for d in multiscale.datasets] == ["0", "1", "2"]
    assert [a.name for a in multiscale.axes] == (["c", "y", "x"] if with_image else ["y", "x"])
    (label_ms,) = image_label.ome_attributes.multiscales
    for k, dataset in enumerate(label_ms.datasets):
        scale, translation = dataset.coordinateTransformations
        ds = 4.0 * 2**k
        assert (
            list(scale.scale) == [0.5 * ds] * 2 and list(translation.translation) == [0.5 * (ds - 1) / 2] * 2
        )
    group = zarr.open_group(str(target), mode="r")
    assert [group[f"labels/teacher/{k}"].shape for k in range(3)] == [(600, 301), (300, 151), (150, 76)]
    assert group["0"].shape == ((3, 600, 301) if with_image else (600, 301))
    if with_image:
        np.testing.assert_array_equal(group["0"][...], np.moveaxis(rgb, -1, 0))

    # class names in image-label properties, one per coloured value
    meta = image_label.ome_attributes.image_label
    assert meta is not None and meta.properties is not None
    classes = {p.label_value: p.model_dump(by_alias=True)["class"] for p in meta.properties}
    assert classes == {1: "Tumor", 2: "Stroma"}
    assert meta.source is not None and meta.source.image == "../../"

    back, downsample = read_ome_zarr_labels(target, "teacher")
    np.testing.assert_array_equal(back, labels)
    assert downsample == 4.0


def test_ome_zarr_export_refuses_an_image_of_another_shape(tmp_path: Path) -> None:
    from napari_milkd.core.errors import InputError

    with pytest.raises(InputError, match="image must be"):
        write_ome_zarr_labels(
            tmp_path / "m.zarr",
            np.zeros((4, 4), np.uint8),
            name="m",
            mpp=None,
            downsample=1,
            image=np.zeros((4, 5, 3)),
        )


def test_milkd_predict_output_is_valid_ngff(tmp_path: Path) -> None:
    """The zarr ``milkd predict`` writes (:func:`predict_slide`): probability image at the root, the mask
    under ``labels/``."""
    torch = pytest.importorskip("torch")
    from napari_milkd.core.engine.models.dws_mil import SegOutput
    from napari_milkd.core.inference.stream import MASK_LABEL, predict_slide
    from napari_milkd.core.progress import drain
    from napari_milkd.core.slides.slide import ArraySlideSource
    from napari_milkd.core.slides.tiling import tile_grid

    class Ramp(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor) -> SegOutput:
            prob = (x[:, :1] * 0.5 + 0.25).clamp(0.01, 0.99) + 0 * self.p
            logit = torch.logit(prob)
            return SegOutput(sides=(logit, logit, logit), fused_logit=logit, fused_prob=prob)

    image = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    source = ArraySlideSource(image, mpp=0.5)
    grid = tile_grid(source.info, mpp=1.0, tile=64, overlap=16)
    result = drain(
        predict_slide(Ramp(), source, grid, tmp_path / "s0.zarr", chunk=64, device="cpu"), lambda _: None
    )
    image_model, image_label = _validated(result.path, MASK_LABEL)
    assert image_model.ome_attributes.multiscales[0].name == "probability"
    meta = image_label.ome_attributes.image_label
    assert meta is not None and meta.properties is not None
    assert [p.model_dump(by_alias=True)["class"] for p in meta.properties] == ["Tumor"]


def _slide(path: Path) -> Path:
    """A 512×640 generated slide: textured 'tissue' on white glass (as in tests/test_predict_outputs.py)."""
    from napari_milkd.core.slides.sample import write_pyramidal_tiff

    rng = np.random.default_rng(0)
    image = np.full((512, 640, 3), 240, np.uint8)
    yy, xx = np.mgrid[0:360, 0:440].astype(np.float32)
    tissue = np.stack([150 + 60 * np.sin(xx / 17), 80 + 50 * np.cos(yy / 13), 170 + 40 * np.sin(xx / 9)], -1)
    image[80:440, 100:540] = np.clip(tissue + rng.normal(0, 10, tissue.shape), 0, 255).astype(np.uint8)
    write_pyramidal_tiff(path, [image, image[::4, ::4].copy()], mpp=0.5, tile=128)
    return path


def _run(folder: Path) -> Path:
    """A `milkd train`-like run folder with a tiny random student (1 µm/px, 64-px tiles)."""
    torch = pytest.importorskip("torch")
    from napari_milkd.core.engine.checkpoint import save_checkpoint
    from napari_milkd.core.engine.config import TrainConfig
    from napari_milkd.core.engine.models import build_model
    from napari_milkd.core.engine.spec import ModelSpec

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    payload = {
        "stage": "student",
        "backbone": "tiny",
        "config": TrainConfig(backbone="tiny", size=64, device="cpu").to_dict(),
        "epoch": 1,
        "complete": True,
        "model": build_model("tiny", "random").state_dict(),
        "history": [],
        "best_epoch": 1,
        "best_score": None,
        "spec": ModelSpec(mpp=1.0, tile=64, backbone="tiny").to_dict(),
    }
    save_checkpoint(folder / "student.pt", payload)
    return folder


def test_milkd_predict_cli_output_is_valid_ngff(tmp_path: Path) -> None:
    """End to end: the finished ``<slide>.zarr`` of ``milkd predict`` validates."""
    from napari_milkd.cli import main
    from napari_milkd.core.inference.stream import MASK_LABEL

    slide = _slide(tmp_path / "s0.tiff")
    out = tmp_path / "out"
    argv = ["predict", "--run", str(_run(tmp_path / "run")), str(slide), "--out", str(out), "--device", "cpu"]
    assert main(argv) == 0
    image, _ = _validated(out / "s0.zarr", MASK_LABEL)
    assert image.ome_attributes.multiscales[0].name == "probability"
