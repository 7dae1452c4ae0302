"""Screenshots of the real widget for docs/: drives napari like a user on the sample slide.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/make_screenshots.py [--backbone NAME]

Writes docs/images/*.png. Uses a pretrained EfficientNet-Lite0 by default so the masks look like what a
user gets (a few minutes on a CPU); the GUI tests run the same steps with a tiny model.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from napari_milkd.core.session.project import default_project_dir
from napari_milkd.core.slides.geometry import tissue_map
from napari_milkd.core.slides.sample import coarse_regions, ensure_sample_slide

OUT = Path(__file__).resolve().parents[1] / "docs" / "images"


def wait(condition, timeout: float = 1800) -> None:
    end = time.monotonic() + timeout
    while not condition():
        QApplication.processEvents()
        time.sleep(0.05)
        if time.monotonic() > end:
            raise TimeoutError("step did not finish")
    for _ in range(20):
        QApplication.processEvents()


def shot(viewer: napari.Viewer, name: str) -> None:
    import imageio.v3 as iio

    for _ in range(10):
        QApplication.processEvents()
        time.sleep(0.05)
    iio.imwrite(OUT / f"{name}.png", viewer.screenshot(canvas_only=False, flash=False))
    print("wrote", OUT / f"{name}.png")


def folder_screenshot(glas: Path, backbone: str, epochs: int) -> None:
    """The image-folder widget on GlaS (images + grade CSV + masks), reviewing a malignant image."""
    viewer = napari.Viewer(title="napari-milkd")
    viewer.window._qt_window.resize(1500, 950)
    _, widget = viewer.window.add_plugin_dock_widget("napari-milkd", "Image-folder masks")
    widget.images_edit.setText(str(glas / "images"))
    widget.csv_edit.setText(str(glas / "grade_train.csv"))
    widget.masks_edit.setText(str(glas / "masks"))
    widget.label_column.setText("grade_glas")
    widget.positive_value.setText("malignant")
    widget.patient_column.setText("patient_id")
    widget.training.backbone_combo.setCurrentText(backbone)
    widget.training.device_combo.setCurrentIndex(widget.training.device_combo.findData("cpu"))
    widget.training.teacher_epochs.value = epochs
    widget.training.student_epochs.value = 2 * epochs
    widget.load_button.click()
    wait(lambda: widget.training.worker is None and widget.bags is not None)
    widget.train_button.click()
    wait(lambda: widget.training.worker is None and widget.output is not None)
    positives = [i for i in range(len(widget.bags)) if widget.bags.labels[i]]
    widget.show_image(positives[len(positives) // 2])
    viewer.layers["milkd folder ground truth"].visible = True
    viewer.layers["milkd folder teacher mask"].visible = False
    viewer.reset_view()
    shot(viewer, "folder-widget")
    viewer.close()


def import_dialog_screenshot(widget: object) -> None:
    """The Import… class table for a QuPath export with derived classes, an unknown class and cells."""
    import json
    import tempfile

    def feature(x: int, kind: str, classification: object) -> dict:
        ring = [[x, 600], [x + 400, 600], [x + 400, 1000], [x, 1000], [x, 600]]
        return {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"objectType": kind, "classification": classification},
        }

    features = [
        feature(800, "annotation", {"name": "Tumor", "color": [200, 0, 0]}),
        feature(1400, "annotation", {"names": ["Stroma", "Positive"], "color": [150, 200, 150]}),
        feature(2000, "annotation", {"name": "Ignore*", "color": [180, 180, 180]}),
        feature(2600, "annotation", {"name": "Margin"}),
        *[feature(3000 + 10 * i, "cell", {"names": ["Tumor", "Positive"]}) for i in range(12)],
    ]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "qupath-export.geojson"
        path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
        dialog = widget.review_import(path)
        dialog.show()
        wait(lambda: True)
        dialog.grab().save(str(OUT / "import-classes.png"))
        print("wrote", OUT / "import-classes.png")
        dialog.reject()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--glas", type=Path, default=None, help="only the image-folder shot, on GlaS")
    args = parser.parse_args()
    if args.glas is not None:
        folder_screenshot(args.glas, args.backbone, args.epochs)
        return
    import shutil

    shutil.rmtree(default_project_dir(ensure_sample_slide().path), ignore_errors=True)
    viewer = napari.Viewer(title="napari-milkd")
    viewer.window._qt_window.resize(1500, 950)
    viewer.open_sample("napari-milkd", "sample_slide")
    _, widget = viewer.window.add_plugin_dock_widget("napari-milkd", "Slide masks")
    training = widget.training
    training.backbone_combo.setCurrentText(args.backbone)
    training.device_combo.setCurrentIndex(training.device_combo.findData("cpu"))
    training.teacher_epochs.value = args.epochs
    training.student_epochs.value = 2 * args.epochs  # the presets' ratio
    viewer.reset_view()
    shot(viewer, "slide-widget")

    prefix = "milkd synthetic sample"
    widget.prepare_button.click()
    wait(lambda: f"{prefix} weak labels" in viewer.layers and training.worker is None)
    viewer.layers["true tumour (sample)"].visible = True
    viewer.layers[f"{prefix} weak labels"].visible = False
    viewer.reset_view()
    shot(viewer, "slide-widget-tiles")

    import_dialog_screenshot(widget)

    viewer.layers[f"{prefix} weak labels"].visible = True
    viewer.layers[f"{prefix} tiles"].visible = False
    work = widget.session.work
    regions = coarse_regions(work.downsample, work.shape, tissue_map(work))
    widget.paint_tumour.click()
    viewer.layers[f"{prefix} weak labels"].data = regions  # the session's map follows the layer
    shot(viewer, "weak-labels")

    widget.train_teacher_button.click()
    wait(lambda: training.worker is None and f"{prefix} teacher mask" in viewer.layers)
    viewer.layers[f"{prefix} weak labels"].visible = False
    shot(viewer, "teacher")

    mask = viewer.layers[f"{prefix} teacher mask"]
    viewer.layers.selection.active = mask
    mask.brush_size = 30
    mask.mode = "paint"
    ones = np.argwhere(np.asarray(mask.data) == 1)
    if len(ones):
        r, c = ones[len(ones) // 3]
        for dc in range(0, 120, 10):
            mask.paint((int(r), int(c) + dc), 0)
        camera = getattr(viewer, "scene", viewer).camera
        sy = float(mask.scale[-2])
        camera.center = (float(r) * sy, (float(c) + 60) * sy)
        camera.zoom = 600 / (300 * sy)
    wait(lambda: True)
    shot(viewer, "teacher-corrected")
    viewer.reset_view()

    widget.train_student_button.click()
    wait(lambda: training.worker is None and f"{prefix} student mask" in viewer.layers)
    viewer.layers[f"{prefix} teacher mask"].visible = False
    shot(viewer, "student")

    widget.map_view.combo.setCurrentText("disagreement")
    viewer.layers[f"{prefix} map"].opacity = 0.45
    viewer.layers[f"{prefix} student mask"].visible = False
    widget.review_button.click()
    shot(viewer, "review")
    out = widget.session.export(
        "student", "geojson", default_project_dir(ensure_sample_slide().path) / "student.geojson"
    )
    print("exported", out)
    viewer.close()


if __name__ == "__main__":
    main()
