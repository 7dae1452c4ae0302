"""The milkd dock widgets: the Qt face of the plugin, and the only package that touches Qt.

Owns forms, buttons, progress and layer updates, and nothing else: the workflow lives in the headless
:class:`~napari_milkd.core.session.slide_session.SlideSession` and the core job generators, which the
widgets drive (long work in napari workers, results taken back on the main thread). May import qtpy,
napari, magicgui, superqt, numpy and :mod:`napari_milkd.core`; never torch (import-linter contract "the
widget never imports torch"), so opening the widget does not load CUDA.

Modules: :mod:`.slide_widget` (:class:`SlideWidget`, one slide's workflow over a ``SlideSession``),
:mod:`.slide_form` (its controls and slide facts), :mod:`.slide_buttons` (which buttons
may be pressed, and why not), :mod:`.slide_layers` (working-resolution layers over
the slide, preview, camera), :mod:`.class_map_dialog` (an import's class table, shown before painting),
:mod:`.training_panel` (the shared training form and job runner), :mod:`.folder_widget`
(:class:`ImageFolderWidget`, image folders with image-level labels) and :mod:`.qt_helpers` (loss plot,
lazy combo box, notifications).
"""

from __future__ import annotations

from napari_milkd._widget.folder_widget import ImageFolderWidget
from napari_milkd._widget.slide_widget import SlideWidget

__all__ = ["ImageFolderWidget", "SlideWidget"]
