"""The image-folder mode: load images + label CSV, train teacher and student, review image by image."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
from napari.utils.notifications import notification_manager

from napari_milkd._widget import ImageFolderWidget


def _image_folder(root: Path, n: int = 12) -> tuple[Path, Path, Path]:
    """Positive images carry a purple blob (masked), negatives are plain pink; two images per patient."""
    images, masks = root / "images", root / "masks"
    images.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(0)
    rows = ["file,diagnosis,patient"]
    yy, xx = np.mgrid[0:96, 0:96]
    for i in range(n):
        image = np.clip(np.array([230, 150, 190]) + rng.integers(-12, 12, (96, 96, 3)), 0, 255).astype(
            np.uint8
        )
        mask = np.zeros((96, 96), np.uint8)
        positive = i % 2 == 0
        if positive:
            blob = (yy - 30 - 3 * i) ** 2 + (xx - 50) ** 2 < 20**2
            image[blob] = (110, 60, 160)
            mask[blob] = 255
        iio.imwrite(images / f"img{i}.png", image)
        iio.imwrite(masks / f"img{i}.png", mask)
        rows.append(f"img{i},{'tumour' if positive else 'normal'},p{i // 2}")
    csv = root / "labels.csv"
    csv.write_text("\n".join(rows) + "\n")
    return images, csv, masks


def test_folder_widget_load_train_review(make_napari_viewer, qtbot, tmp_path: Path, save_screenshot) -> None:
    images, csv, masks = _image_folder(tmp_path)
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1400, 950)
    _, widget = viewer.window.add_plugin_dock_widget("napari-milkd", "Image-folder masks")
    assert isinstance(widget, ImageFolderWidget)
    # Greyed buttons say what is missing (issue #17).
    assert not widget.train_button.isEnabled() and "load the images first" in widget.train_button.toolTip()
    assert not widget.load_button.isEnabled()
    assert "choose an image folder and a label CSV first" in widget.load_button.toolTip()
    assert "train teacher and student first" in widget.next_button.toolTip()
    widget.images_edit.setText(str(images))
    assert not widget.load_button.isEnabled()
    before = len(notification_manager.records)
    widget.start_load()  # reached without the button (e.g. a script): refused with a notification
    assert widget.training.worker is None
    assert any("choose an image folder" in str(n.message) for n in notification_manager.records[before:])
    widget.csv_edit.setText(str(csv))
    assert widget.load_button.isEnabled() and widget.load_button.toolTip().startswith("Read the images")
    widget.masks_edit.setText(str(masks))
    widget.label_column.setText("diagnosis")
    widget.name_column.setText("file")
    widget.patient_column.setText("patient")
    widget.size_spin.setValue(64)
    widget.load_button.click()
    qtbot.waitUntil(lambda: widget.training.worker is None and widget.bags is not None, timeout=30_000)
    assert "12 images: 6 positive, 6 negative" in widget.load_note.text()

    widget.training.backbone_combo.setCurrentText("tiny")
    widget.training.device_combo.setCurrentIndex(widget.training.device_combo.findData("cpu"))
    widget.training.teacher_epochs.value = 1
    widget.training.student_epochs.value = 1
    widget.train_button.click()
    qtbot.waitUntil(lambda: widget.training.worker is None and widget.output is not None, timeout=120_000)
    assert (widget.run_dir() / "teacher.pt").exists() and (widget.run_dir() / "student.pt").exists()
    assert widget.output.teacher.shape == (12, 64, 64)

    image = viewer.layers["milkd folder image"]
    assert image.rgb and image.data.shape == (64, 64, 3)
    assert "1/12" in widget.review_note.text() and "F1 vs ground truth" in widget.review_note.text()
    widget.next_button.click()
    assert "2/12" in widget.review_note.text()
    assert np.array_equal(viewer.layers["milkd folder image"].data, widget.bags.images[1])
    widget.prev_button.click()
    assert widget.index == 0 and not widget.prev_button.isEnabled()
    assert "this is the first image" in widget.prev_button.toolTip()
    viewer.reset_view()
    qtbot.wait(200)
    save_screenshot(viewer.screenshot(canvas_only=False, flash=False), "folder-widget")
