"""Small Qt pieces the milkd widgets share: a loss plot, a lazily filled combo box, a scrolling stack of
group boxes, and the one way to turn a failure into a notification.

Qt and napari's notifications only; no state, no work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QComboBox, QGroupBox, QScrollArea, QVBoxLayout, QWidget
from superqt import QCollapsible

from napari_milkd.core.errors import MilkdError

#: Every notification the plugin shows starts with this, so users can tell where it came from.
PREFIX = "milkd: "


def enable_with_reasons(owner: object, reasons: dict[str, str | None], tooltips: dict[str, str]) -> None:
    """Enable each button of ``owner`` named in ``reasons`` whose reason is None; a greyed one's tooltip
    says why (``Disabled: <reason>.``), an enabled one's is its own from ``tooltips``."""
    for name, reason in reasons.items():
        button = getattr(owner, name)
        button.setEnabled(reason is None)
        button.setToolTip(tooltips[name] if reason is None else f"Disabled: {reason}.")


def _toast(message: str, detail: str | None) -> str:
    """napari's toast shows the first line (elided); the detail is there when it is expanded."""
    return PREFIX + message + (f"\n{detail}" if detail else "")


def error_text(exc: BaseException) -> str:
    """A user-facing line for an exception: our own messages as they are, others with their type."""
    return str(exc) if isinstance(exc, MilkdError) else f"{type(exc).__name__}: {exc}"


def notify_error(message: str | BaseException, detail: str | None = None) -> str:
    """Show ``message`` (or an exception: :func:`error_text`) as one error notification, ``detail`` on
    the lines below it; return the message."""
    text = error_text(message) if isinstance(message, BaseException) else message
    show_error(_toast(text, detail))
    return text


def notify_warning(message: str, detail: str | None = None) -> None:
    """Show ``message`` as a warning notification (``detail`` below it, seen when expanded)."""
    show_warning(_toast(message, detail))


def notify_info(message: str, detail: str | None = None) -> None:
    """Show ``message`` as an information notification (``detail`` below it, seen when expanded)."""
    show_info(_toast(message, detail))


def fmt_mpp(value: float | None) -> str:
    """µm/px for display: three decimals, ``?`` when unknown."""
    return "?" if value is None else f"{value:.3f}"


class LazyComboBox(QComboBox):
    """A combo box that fills itself (``on_popup``) the first time its list is opened."""

    def __init__(self, on_popup: Callable[[QComboBox], None] | None) -> None:
        super().__init__()
        self._on_popup = on_popup

    def showPopup(self) -> None:
        if self._on_popup is not None:
            callback, self._on_popup = self._on_popup, None
            callback(self)
        super().showPopup()


class LossPlot(QWidget):
    """A small line plot of the training loss per epoch (teacher and student runs in turn)."""

    def __init__(self) -> None:
        super().__init__()
        self.values: list[float] = []
        self.setMinimumHeight(70)
        self.setToolTip("training loss per epoch")

    def set_values(self, values: Iterable[float]) -> None:
        """Replace the plotted values and redraw."""
        self.values = list(values)
        self.update()

    def paintEvent(self, event: Any) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        rect = self.rect().adjusted(6, 6, -6, -14)
        painter.setPen(QPen(QColor("#666666"), 1))
        painter.drawRect(rect)
        if self.values:
            lo, hi = min(self.values), max(self.values)
            span = (hi - lo) or 1.0
            n = max(len(self.values) - 1, 1)
            points = QPolygonF(
                [
                    QPointF(
                        rect.left() + rect.width() * i / n, rect.bottom() - rect.height() * (v - lo) / span
                    )
                    for i, v in enumerate(self.values)
                ]
            )
            painter.setPen(QPen(QColor("#ffb000"), 2))
            painter.drawPolyline(points)
            painter.setPen(QPen(QColor("#bbbbbb"), 1))
            painter.drawText(
                rect.left(), self.height() - 2, f"loss {self.values[-1]:.4f}  ({len(self.values)} ep)"
            )
        painter.end()


class FoldingSection(QCollapsible):
    """A collapsible section whose content is hidden while it is folded, not only squeezed to no height:
    Qt neither styles nor lays out a hidden widget, so folded sections cost the dock's opening nothing
    (their widgets are styled when first unfolded)."""

    def expand(self, animate: bool = True) -> None:
        """Unfold: the content is shown, then given its height."""
        self.content().setVisible(True)
        super().expand(animate=animate)

    def collapse(self, animate: bool = True) -> None:
        """Fold: no height, and the content hidden."""
        super().collapse(animate=animate)
        self.content().setVisible(False)


def stack_in_scroll_area(
    owner: QWidget, boxes: Iterable[QGroupBox], unfolded: int | None = None
) -> list[FoldingSection]:
    """Lay ``boxes`` out top to bottom in a vertically scrolling area filling ``owner``, each in a
    collapsible section titled like the box (so a laptop screen shows the section being worked in);
    return the sections: the first ``unfolded`` expanded (all when None), the rest folded."""
    inner = QWidget()
    layout = QVBoxLayout(inner)
    sections = []
    for i, box in enumerate(boxes):
        section = FoldingSection(box.title(), collapsedIcon="▶")  # folded: points at its title
        section.setDuration(0)
        box.setTitle("")
        section.addWidget(box)
        if unfolded is None or i < unfolded:
            section.expand(animate=False)
        else:
            section.collapse(animate=False)
        layout.addWidget(section)
        sections.append(section)
    layout.addStretch(1)
    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    scroll.setWidget(inner)
    outer = QVBoxLayout(owner)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(scroll)
    owner.setMinimumWidth(440)
    return sections


def scroll_into_view(widget: QWidget) -> None:
    """Scroll the scroll area that holds ``widget`` (if any) so that ``widget`` is in view."""
    parent = widget.parentWidget()
    while parent is not None and not isinstance(parent, QScrollArea):
        parent = parent.parentWidget()
    if parent is not None:
        parent.ensureWidgetVisible(widget, 0, 0)
