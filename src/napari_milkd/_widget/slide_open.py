"""Opening a slide from the dock, and making sure napari opens slides with milkd.

napari's own reader also claims ``.svs`` and ``.tif``: a slide opened with it is a plain image that
hides every mask and that the widget cannot use. So the dock has an *Open slide…* button (milkd's
reader, always), offers once — with the user's consent — to make milkd napari's reader for the slide
formats only slide scanners write (:data:`VENDOR_PATTERNS`; ``.tif``/``.tiff`` and DICOM stay with
napari's choice, since most such files are not slides), and says so when a slide was opened by another
reader. Qt and napari only; the answer to the offer is kept in milkd's preferences.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import QFileDialog, QMessageBox

from napari_milkd._layers import SLIDE_META
from napari_milkd._widget.qt_helpers import notify_error, notify_warning
from napari_milkd.core.errors import MilkdError
from napari_milkd.core.preferences import load_preferences, save_preferences
from napari_milkd.core.slides.slide import SLIDE_SUFFIXES

if TYPE_CHECKING:
    import napari

PLUGIN = "napari-milkd"
#: Slide formats milkd offers to open by default: those only slide scanners write.
VENDOR_PATTERNS = tuple(f"*{s}" for s in sorted(SLIDE_SUFFIXES - {".tif", ".tiff", ".dcm"}))
#: The open dialog's filter: every format milkd reads.
SLIDE_FILTER = f"Slides ({' '.join('*' + s for s in sorted(SLIDE_SUFFIXES))});;All files (*)"
#: Preference key: the offer was made (answered either way), never ask again.
OFFERED_KEY = "slide_reader_offered"


def napari_settings() -> Any:
    """napari's settings (a function, so tests can give a temporary settings object)."""
    from napari.settings import get_settings

    return get_settings()


def patterns_not_read_by_milkd(settings: Any) -> list[str]:
    """The slide-only patterns napari does not open with milkd today (another reader, or it asks)."""
    current = settings.plugins.extension2reader
    return [pattern for pattern in VENDOR_PATTERNS if current.get(pattern) != PLUGIN]


def make_milkd_the_slide_reader(settings: Any, patterns: list[str]) -> None:
    """Set milkd as napari's reader for ``patterns`` (napari keeps it; Preferences ▸ Plugins undoes it)."""
    settings.plugins.extension2reader = {
        **settings.plugins.extension2reader,
        **dict.fromkeys(patterns, PLUGIN),
    }


def opened_by_another_reader(layer: Any) -> bool:
    """True when ``layer`` shows a slide file that a reader other than milkd's opened."""
    path = getattr(getattr(layer, "source", None), "path", None)
    if not path or SLIDE_META in getattr(layer, "metadata", {}):
        return False
    reader = getattr(layer.source, "reader_plugin", "")
    return Path(path).suffix.lower() in SLIDE_SUFFIXES and reader != PLUGIN


class SlideOpener:
    """The *Open slide…* button's behaviour, mixed into the slide form (``viewer`` is the form's)."""

    if TYPE_CHECKING:
        viewer: napari.viewer.Viewer

    def open_slide_dialog(self) -> None:
        """Ask for a slide file and open it with milkd's reader (after the one-time reader offer)."""
        start = getattr(self, "_last_slide_folder", "")
        path = QFileDialog.getOpenFileName(self, "Open slide", start, SLIDE_FILTER)[0]  # type: ignore[arg-type]
        if not path:
            return
        self._last_slide_folder = str(Path(path).parent)
        self.offer_milkd_as_slide_reader()
        try:
            self.viewer.open(path, plugin=PLUGIN)
        except (MilkdError, OSError, ValueError) as exc:
            notify_error(exc)

    def offer_milkd_as_slide_reader(self) -> bool:
        """Once ever: ask whether napari should open slide-only formats with milkd; True when it now
        does. A "No" is remembered too, and napari's settings are only changed on "Yes"."""
        if load_preferences().get(OFFERED_KEY):
            return False
        settings = napari_settings()
        patterns = patterns_not_read_by_milkd(settings)
        if not patterns:
            return False
        answer = QMessageBox.question(
            self,  # type: ignore[arg-type]
            "Open slides with milkd?",
            "Should napari open slide files with milkd when you drag them in or use File ▸ Open?\n\n"
            f"{', '.join(p[1:] for p in patterns)} files then open as milkd slides (in micrometres, "
            "with their pyramid), never as plain images. Plain .tif/.tiff and DICOM files stay as "
            "they are. You can undo this in napari's Preferences ▸ Plugins.",
        )
        try:
            save_preferences(**{OFFERED_KEY: True})
        except MilkdError as exc:
            notify_warning(f"could not remember the answer: {exc}")
        if answer != QMessageBox.StandardButton.Yes:
            return False
        make_milkd_the_slide_reader(settings, patterns)
        return True

    def warn_about_plain_slide_layers(self, event: Any) -> None:
        """A slide file was opened by another reader: say why the widget does not offer it."""
        layer = getattr(event, "value", None)
        if layer is not None and opened_by_another_reader(layer):
            reader = getattr(layer.source, "reader_plugin", None) or "another reader"
            notify_warning(
                f"{layer.name} was opened by {reader} as a plain image: milkd cannot use it",
                "Use 'Open slide…' in the milkd dock, or choose napari-milkd when napari asks for a reader.",
            )
