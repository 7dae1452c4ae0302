"""Class names → label maps (``core.annotations.classes``)."""

from __future__ import annotations

import numpy as np
import pytest
from shapely.geometry import box

from napari_milkd.core.annotations import (
    Annotation,
    AnnotationWarning,
    labels_from_annotations,
)
from napari_milkd.core.errors import InputError


def test_labels_from_annotations_default_mapping() -> None:
    anns = [
        Annotation(box(0, 0, 40, 40), "Normal"),
        Annotation(box(20, 20, 40, 40), "TUMOUR"),
        Annotation(box(0, 32, 8, 40), "_1"),
        box(36, 0, 40, 4),  # a bare polygon counts as tumour
    ]
    labels = labels_from_annotations(anns, (10, 10), 4.0)
    assert labels.dtype == np.uint8
    assert labels[0, 0] == 2 and labels[9, 9] == 1 and labels[9, 0] == 1 and labels[0, 9] == 1
    assert np.count_nonzero(labels == 1) == 25 + 4 + 1  # 5×5 tumour square, 2×2 corner, 1 px
    with pytest.warns(AnnotationWarning, match="1 annotation\\(s\\) of class 'Necrosis' ignored"):
        ignored = labels_from_annotations([Annotation(box(0, 0, 40, 40), "Necrosis")], (10, 10), 4.0)
    assert not ignored.any()
    custom = labels_from_annotations(
        [Annotation(box(0, 0, 4, 4), "Necrosis"), Annotation(box(4, 0, 8, 4), None)],
        (1, 2),
        4.0,
        {"necrosis": 3},
        unknown_label=9,
    )
    assert custom.tolist() == [[3, 9]]
    with pytest.raises(InputError, match=r"0\.\.255"):
        labels_from_annotations([], (1, 1), 1.0, {"x": 300})
