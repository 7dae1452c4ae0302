"""How long work reports: the one way to drain a job generator and the one way to put its events in words.

Every long job in the core (training, prediction, slide jobs, cohort jobs) is a generator that yields small
event dataclasses and returns its result. The widget runs it in a worker thread; the CLI, the headless
demo, benchmarks and tests call :func:`drain`; :func:`relay` re-words one job's events inside another.
:func:`describe` turns any of those events into the one line a status bar, a log or a progress bar
shows. Events are recognised by their fields, so this module imports nothing from the engine or
inference (bottom layer: the standard library only).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

R = TypeVar("R")


def drain(gen: Generator[Any, None, R], on_event: Callable[[Any], None] | None = None) -> R:
    """Run a job generator to its end, passing each event to ``on_event``; return the job's result."""
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_event is not None:
            on_event(event)


def relay(gen: Generator[Any, None, R], transform: Callable[[Any], Any]) -> Generator[Any, None, R]:
    """A job generator whose events are ``transform(event)`` and whose result is ``gen``'s; closing it
    (a cancelled job) closes ``gen``."""
    try:
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                return stop.value
            yield transform(event)
    finally:
        gen.close()


def progress_of(event: Any) -> tuple[int, int] | None:
    """``(done, total)`` of an event in its own unit (batches over all epochs, or tiles); None if none."""
    if hasattr(event, "n_batches") and hasattr(event, "n_epochs"):
        return (event.epoch - 1) * event.n_batches + event.batch, event.n_epochs * event.n_batches
    if hasattr(event, "done") and hasattr(event, "total"):
        return int(event.done), int(event.total)
    return None


def describe(event: Any) -> str:
    """One line describing a job event, for status bars, logs and progress bars."""
    if hasattr(event, "done") and hasattr(event, "total"):
        activity = getattr(event, "activity", None)
        return f"{event.stage}: {activity + ' ' if activity else ''}{event.done}/{event.total} tiles"
    if hasattr(event, "n_batches"):
        loss = f", loss {event.loss:.4f}" if getattr(event, "loss", None) is not None else ""
        return (
            f"{event.stage} epoch {event.epoch}/{event.n_epochs}, batch {event.batch}/{event.n_batches}{loss}"
        )
    if hasattr(event, "train_loss"):
        return f"{event.stage} epoch {event.epoch}/{event.n_epochs} done, loss {event.train_loss:.4f}"
    if hasattr(event, "old") and hasattr(event, "new"):
        return f"{event.stage}: out of GPU memory, batch size {event.old} → {event.new}"
    if hasattr(event, "student_epoch"):
        return (
            f"role reversal at epoch {event.epoch}: best student (epoch {event.student_epoch}) is the teacher"
        )
    return str(event)
