"""The one map layer under the masks: tissue, a stage's tumour probability, or the teacher/student
disagreement, chosen in the dock.

Adding a napari layer costs the GUI thread 0.1–0.2 s whatever its size and whether it is shown (its vispy
visual, the Labels overlays, its Qt controls; ``docs/benchmarks.md``, "GUI responsiveness"). Four maps a
pathologist looks at now and then used to be four hidden layers, added by Prepare and by every finished
stage. They now share one Image layer, added the first time the user picks a map, refilled when the
choice or the session's maps change, hidden (not removed) for "none". Qt and napari layers only; the maps
are the session's (:data:`MAPS`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLabel, QWidget

from napari_milkd.core.session.slide_session import STAGES

if TYPE_CHECKING:
    from napari_milkd._widget.slide_layers import SlideLayers
    from napari_milkd.core.session.slide_session import SlideSession

#: The choices, in the combo's order; "none" shows no map.
MAPS = ("none", "tissue", "teacher probability", "student probability", "disagreement")
#: Colormap, opacity and blending of each map (every map is 0–1); tissue adds green to the tissue only.
MAP_STYLE = {
    "tissue": ("green", 0.4, "additive"),
    "teacher probability": ("magma", 0.5, "translucent"),
    "student probability": ("magma", 0.5, "translucent"),
    "disagreement": ("viridis", 0.6, "translucent"),
}
#: The layer's name after the slide's: ``"<slide> map"``.
LAYER = "map"


def map_available(session: SlideSession | None, choice: str) -> bool:
    """Whether ``session`` has the map ``choice`` (cheap: nothing is computed)."""
    if session is None or choice == "none":
        return choice == "none"
    if choice == "tissue":
        return session.tissue is not None
    if choice == "disagreement":
        return all(stage in session.probabilities for stage in STAGES)
    return choice.split()[0] in session.probabilities


def map_data(session: SlideSession, choice: str) -> np.ndarray | None:
    """The working-resolution map ``choice`` of ``session`` (values 0–1), or None when it has none."""
    if not map_available(session, choice) or choice == "none":
        return None
    if choice == "tissue":
        assert session.tissue is not None
        return session.tissue.astype(np.float32)
    if choice == "disagreement":
        return session.disagreement()
    return session.probabilities[choice.split()[0]]


class MapView(QWidget):
    """The "Show map" combo and the one layer it fills; call :meth:`refresh` whenever the session's maps
    change (Prepare, a finished stage, going back to a round)."""

    def __init__(self, layers: SlideLayers, session: Callable[[], SlideSession | None]) -> None:
        super().__init__()
        self._layers = layers
        self._session = session
        self.combo = QComboBox()
        self.combo.addItems(MAPS)
        self.combo.setToolTip(
            "A map under the masks: the tissue found, a model's tumour probability, or where teacher "
            "and student disagree (greyed until it exists)"
        )
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QLabel("Show map"))
        row.addWidget(self.combo, 1)
        self._grey_out(None)
        self.combo.currentTextChanged.connect(lambda *_: self.refresh())

    def _grey_out(self, session: SlideSession | None) -> None:
        model = self.combo.model()
        for i, choice in enumerate(MAPS):
            model.item(i).setEnabled(map_available(session, choice))

    @property
    def layer(self) -> Any:
        """The map layer of the current slide, or None (not added yet, or deleted by the user)."""
        return self._layers.get(LAYER)

    def refresh(self) -> None:
        """Grey out the maps the session lacks, then show the chosen one (hide the layer for "none" or a
        map that is gone)."""
        session = self._session()
        self._grey_out(session)
        choice = self.combo.currentText()
        data = None if session is None else map_data(session, choice)
        layer = self.layer
        if data is None:
            if layer is not None:
                layer.visible = False
            return
        colormap, opacity, blending = MAP_STYLE[choice]
        if layer is None or layer.data.shape != data.shape:
            layer = self._layers.put_image(LAYER, data, contrast_limits=(0, 1))
        elif layer.data is not data:  # the session's own array again (another stage finished): no refill
            layer.data = data
        layer.colormap, layer.opacity, layer.blending, layer.visible = colormap, opacity, blending, True
