"""The CLI's progress in a log (stderr not a terminal): lines, not a redrawn bar (issue 17)."""

from __future__ import annotations

import io
from dataclasses import dataclass

import pytest

from napari_milkd.commands import _progress
from napari_milkd.commands._progress import ProgressPrinter


@dataclass
class Tiles:
    stage: str
    done: int
    total: int


@dataclass
class EpochDone:
    stage: str
    epoch: int
    n_epochs: int
    train_loss: float


def test_a_log_gets_whole_lines_at_milestones_and_at_an_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(float(t) for t in range(0, 1000, 2))  # every call is 2 s later
    monkeypatch.setattr(_progress.time, "monotonic", lambda: next(clock))
    log = io.StringIO()  # not a terminal
    with ProgressPrinter(log) as progress:
        for done in range(1, 101):
            progress(Tiles("teacher map", done, 100))
        progress(EpochDone("teacher", 1, 6, 0.25))
    text = log.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and "\x1b" not in text  # no redrawn bar, no escape codes
    assert lines[-2] == "teacher map: 100/100 tiles"  # the stage's completion is always said
    assert lines[-1] == "teacher epoch 1/6 done, loss 0.2500"  # milestones are always said
    # A progress line every LOG_INTERVAL_S (5 s at 2 s a step: every third event), not one per event.
    assert 25 <= len(lines) <= 40, lines
    assert max(len(line) for line in lines) < 80


def test_a_terminal_gets_one_bar() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Terminal()
    with ProgressPrinter(tty) as progress:
        for done in range(1, 11):
            progress(Tiles("student map", done, 10))
    assert "\r" in tty.getvalue() and "10/10" in tty.getvalue()
