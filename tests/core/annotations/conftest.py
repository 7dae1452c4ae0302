"""Fixtures of the annotation tests: masks drawn as text, and the tricky mask every format round-trips."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest


def _mask(rows: list[str]) -> np.ndarray:
    return np.array([[ch == "#" for ch in row] for row in rows], dtype=bool)


#: Two components touching diagonally; a ring with a hole; a component inside that hole; a hole that
#: meets the outside at one corner; two holes that meet at one corner.
TRICKY = _mask(
    [
        "#.............",
        ".#..#####.....",
        "....#...#..##.",
        "....#.#.#.#.#.",
        "....#...#.##..",
        "....#####.....",
        "..............",
        ".#####..######",
        ".#.#.#..#....#",
        ".##.##..#.#..#",
        ".#####..#..#.#",
        "........######",
    ]
)


@pytest.fixture
def tricky() -> np.ndarray:
    """:data:`TRICKY` (a fresh copy): diagonal neighbours, holes, an island, holes meeting at corners."""
    return TRICKY.copy()


@pytest.fixture
def make_mask() -> Callable[[list[str]], np.ndarray]:
    """Rows of text → boolean mask (``#`` is foreground)."""
    return _mask
