"""Waiting for what the slide widget does off the GUI thread (import, export, saving a finished map) and
for the bag count of the last stroke (counted once control returns to Qt)."""

from __future__ import annotations

from typing import Any


def settle(qtbot: Any, widget: Any, timeout: int = 60_000) -> None:
    """Wait until ``widget`` runs no job and shows the bags of every stroke made so far."""
    qtbot.waitUntil(lambda: not widget.busy and not widget._bag_timer.isActive(), timeout=timeout)
