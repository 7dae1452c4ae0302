"""Fixtures of the engine tests: synthetic bags (red squares = tumour) and the GlaS path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_milkd.core.engine.datasets import BagSet

#: ../shared next to the repository (DESIGN.md §7); tests that need it skip when it is absent.
SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
GLAS = SHARED / "data" / "glas_dev"


def make_square_bags(n: int = 16, size: int = 32, seed: int = 0) -> BagSet:
    """``n`` noise bags (size, size, 3); odd ones hold a red square (their mask), even ones are negative."""
    rng = np.random.default_rng(seed)
    images = rng.integers(60, 140, (n, size, size, 3), dtype=np.uint8)
    labels = np.arange(n) % 2
    masks = np.zeros((n, size, size), np.uint8)
    for i in np.flatnonzero(labels):
        s = int(rng.integers(size // 4, size // 2))
        y, x = rng.integers(0, size - s, 2)
        masks[i, y : y + s, x : x + s] = 1
    images[masks == 1] = (220, 40, 40)
    return BagSet.from_arrays(images, labels, groups=np.arange(n) // 2, masks=masks)


@pytest.fixture
def square_bags() -> BagSet:
    """16 synthetic 32-px bags, 8 positive, grouped in pairs."""
    return make_square_bags()


@pytest.fixture
def glas_dir() -> Path:
    """The GlaS development split, or skip."""
    if not (GLAS / "grade_train.csv").is_file():
        pytest.skip("../shared/data/glas_dev is not available")
    return GLAS


@pytest.fixture
def make_bags():
    """The :func:`make_square_bags` factory, for tests that need several sets."""
    return make_square_bags
