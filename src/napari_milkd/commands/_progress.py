"""Job progress on a terminal or in a log: the CLI's one way to show events (their text comes from
:func:`napari_milkd.core.progress.describe`, their extent from :func:`~napari_milkd.core.progress.
progress_of`)."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from napari_milkd.core.progress import describe, progress_of

#: Seconds between progress lines when stderr is not a terminal (a log gets lines, not a redrawn bar).
LOG_INTERVAL_S = 5.0


class ProgressPrinter:
    """Call with each job event. On a terminal: a progress bar (tqdm) described by the latest event, and
    milestone events (epoch ends, role reversals, batch-size changes) printed above it. In a log: every
    milestone, and a progress line every :data:`LOG_INTERVAL_S` seconds and when a stage completes.
    Use as a context manager (closes the bar)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._bar: Any = None
        self._last_write = 0.0

    def __call__(self, event: Any) -> None:
        text, progress = describe(event), progress_of(event)
        if progress is None:
            self._line(text)
        elif self.tty:
            self._draw(text, *progress)
        elif progress[0] >= progress[1] or time.monotonic() - self._last_write >= LOG_INTERVAL_S:
            self._line(text)

    def _line(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()
        self._last_write = time.monotonic()

    def _draw(self, text: str, done: int, total: int) -> None:
        from tqdm import tqdm

        if self._bar is None or self._bar.total != total:
            self.close()
            self._bar = tqdm(total=total, file=self.stream, dynamic_ncols=True, leave=True)
        self._bar.set_description_str(text, refresh=False)
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        """Finish the current bar, if any."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> ProgressPrinter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
