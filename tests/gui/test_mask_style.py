"""Masks you can read through (issue #16): teacher and student in their own colours, outlines by
default (the tissue stays visible), a fill toggle and one opacity slider for both, a legend in the dock."""

from __future__ import annotations

import numpy as np

from napari_milkd._sample_data import SAMPLE_LAYER_NAME
from napari_milkd._widget import SlideWidget
from napari_milkd._widget.mask_style import OUTLINE_PX, STAGE_COLORS
from napari_milkd.core.engine.config import TrainResult
from napari_milkd.core.session.jobs import StageOutput


def _hex(rgba: np.ndarray) -> str:
    return "#" + "".join(f"{round(float(v) * 255):02x}" for v in np.ravel(rgba)[:3])


def test_teacher_and_student_masks_are_distinct_outlines_with_fill_opacity_and_legend(
    make_napari_viewer, qtbot, fresh_project
) -> None:
    viewer = make_napari_viewer(show=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-milkd", "Slide masks")
    assert isinstance(widget, SlideWidget)
    viewer.open_sample("napari-milkd", "sample_slide")
    widget.prepare_button.click()
    qtbot.waitUntil(lambda: widget.session is not None and widget.training.worker is None, timeout=60_000)
    work = widget.session.work
    for stage, level in (("teacher", 0.9), ("student", 0.8)):
        probability = np.zeros(work.shape, np.float32)
        probability[: work.shape[0] // 2] = level
        result = TrainResult(stage=stage, epochs=1, best_epoch=1, best_score=None, checkpoint=None)
        widget.session.accept(StageOutput(stage, probability, result, 1, 1))
        widget.show_stage(stage)

    teacher = viewer.layers[f"{SAMPLE_LAYER_NAME} teacher mask"]
    student = viewer.layers[f"{SAMPLE_LAYER_NAME} student mask"]
    assert _hex(teacher.colormap.map(1)) == STAGE_COLORS["teacher"]
    assert _hex(student.colormap.map(1)) == STAGE_COLORS["student"]
    assert STAGE_COLORS["teacher"] != STAGE_COLORS["student"]
    # Outlines by default, so the histology under the mask stays visible.
    assert teacher.contour == student.contour == OUTLINE_PX
    legend = widget.mask_style.legend.text()
    for color in STAGE_COLORS.values():
        assert color in legend
    assert "teacher mask" in legend and "student mask" in legend and "tumour-free" in legend
    # Every line of the legend on screen once laid out, none cut off by a squeezed dock.
    label = widget.mask_style.legend
    qtbot.waitUntil(
        lambda: (
            label.isVisible()
            and label.height() >= label.sizeHint().height() >= 4 * label.fontMetrics().height()
        ),
        timeout=5_000,
    )

    widget.mask_style.fill_box.setChecked(True)
    assert teacher.contour == student.contour == 0
    widget.mask_style.opacity_slider.setValue(30)
    assert teacher.opacity == student.opacity == 0.3
    widget.mask_style.fill_box.setChecked(False)
    assert teacher.contour == OUTLINE_PX and teacher.opacity == 0.3

    # A mask shown again (a new round, a restored project) keeps the chosen look.
    widget.show_stage("teacher")
    assert viewer.layers[f"{SAMPLE_LAYER_NAME} teacher mask"].contour == OUTLINE_PX
    assert viewer.layers[f"{SAMPLE_LAYER_NAME} teacher mask"].opacity == 0.3
