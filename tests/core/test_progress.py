"""The one drain and the one relay of job generators."""

from __future__ import annotations

from collections.abc import Generator

from napari_milkd.core.progress import drain, relay


def _job(log: list[str]) -> Generator[int, None, str]:
    try:
        yield from range(3)
        return "done"
    finally:
        log.append("closed")


def test_relay_rewords_events_and_keeps_the_result() -> None:
    log: list[str] = []
    seen: list[str] = []
    assert drain(relay(_job(log), lambda i: f"event {i}"), seen.append) == "done"
    assert seen == ["event 0", "event 1", "event 2"] and log == ["closed"]


def test_closing_a_relay_closes_the_job_it_relays() -> None:
    """A cancelled outer job (the widget's Cancel closes the generator) stops the inner one at once."""
    log: list[str] = []
    outer = relay(_job(log), str)
    assert next(outer) == "0"
    outer.close()
    assert log == ["closed"]
