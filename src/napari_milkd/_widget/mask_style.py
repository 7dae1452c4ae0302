"""How the mask layers look: one colour per layer, outlines by default, a fill toggle, an opacity slider
and a legend in the dock.

H&E is pink and purple: a yellow fill at half opacity turns it orange and hides the histology, and a
teacher and a student drawn in the same colour cannot be told apart. So each mask layer gets its own
colour (:data:`STAGE_COLORS`), is drawn as an outline (:data:`OUTLINE_PX` data pixels) until the user
asks for a fill, and one slider sets the opacity of every mask layer. :class:`MaskStyle` is the row of
controls and the legend; the widget calls :meth:`MaskStyle.apply` on each mask layer it shows.
Qt and napari layers only; no session state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QSlider, QVBoxLayout, QWidget

from napari_milkd._widget.slide_layers import WEAK_COLORS
from napari_milkd.core.session.weak_labels import REGION_FREE, REGION_TUMOUR

#: The colour of each stage's mask layer: sky blue for the teacher, yellow for the student.
STAGE_COLORS = {"teacher": "#3fa7ff", "student": "#ffd400"}
#: Outline width of a mask drawn as an outline, in working-resolution pixels.
OUTLINE_PX = 2
#: Opacity of the mask layers until the user moves the slider.
DEFAULT_OPACITY = 0.85
#: What the legend shows, in order: (colour, meaning).
LEGEND = (
    (STAGE_COLORS["teacher"], "teacher mask"),
    (STAGE_COLORS["student"], "student mask"),
    (WEAK_COLORS[REGION_TUMOUR], "weak label: contains tumour"),
    (WEAK_COLORS[REGION_FREE], "weak label: tumour-free"),
)


def mask_colors(stage: str) -> dict[Any, str]:
    """The label → colour map of ``stage``'s mask layer (label 1 = tumour)."""
    return {None: "transparent", 1: STAGE_COLORS[stage]}


def legend_html() -> str:
    """The legend as rich text: a coloured square and a meaning per line."""
    return "<br>".join(f"<span style='color:{color}'>■</span> {text}" for color, text in LEGEND)


class MaskStyle(QWidget):
    """Fill toggle, opacity slider and legend for the mask layers; ``changed`` fires when either control
    moves, so the owner re-applies the style to its layers."""

    changed = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.fill_box = QCheckBox("Fill masks")
        self.fill_box.setToolTip("Off: masks are outlines, so the tissue under them stays visible.")
        self.opacity_slider = QSlider(Qt.Orientation.Horizontal)
        self.opacity_slider.setRange(0, 100)
        self.opacity_slider.setValue(round(DEFAULT_OPACITY * 100))
        self.opacity_slider.setToolTip("Opacity of the teacher and student masks")
        self.legend = QLabel(legend_html())
        self.legend.setTextFormat(Qt.TextFormat.RichText)
        self.legend.setMinimumHeight(self.legend.sizeHint().height())  # never squeezed to fewer lines
        row = QHBoxLayout()
        row.addWidget(self.fill_box)
        row.addWidget(QLabel("Opacity"))
        row.addWidget(self.opacity_slider)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.legend)
        self.fill_box.toggled.connect(lambda *_: self.changed.emit())
        self.opacity_slider.valueChanged.connect(lambda *_: self.changed.emit())

    @property
    def opacity(self) -> float:
        """The opacity the slider sets, 0–1."""
        return self.opacity_slider.value() / 100

    def apply(self, layer: Any) -> None:
        """Draw the mask ``layer`` as the controls say: an outline or a fill, at the slider's opacity."""
        layer.contour = 0 if self.fill_box.isChecked() else OUTLINE_PX
        layer.opacity = self.opacity

    def apply_all(self, layers: Iterable[Any]) -> None:
        """:meth:`apply` to every layer of ``layers`` that is there (None is skipped)."""
        for layer in layers:
            if layer is not None:
                self.apply(layer)

    def follow(self, layers: Callable[[], Iterable[Any]]) -> None:
        """Re-apply the style to ``layers()`` whenever a control moves."""
        self.changed.connect(lambda: self.apply_all(layers()))
