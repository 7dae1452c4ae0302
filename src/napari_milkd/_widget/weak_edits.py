"""Where a brush stroke changed a Labels layer: the box around a napari ``paint`` event's history atoms.

napari 0.9 emits ``Labels.events.paint`` with ``value`` = the undo item just committed: a list of atoms,
each either a ``_MaskedPaintAtom`` (``slice_key``: the bounding box of the edit) or the legacy 3-tuple
``(indices, old_values, new_values)`` (fancy indices of the changed pixels). The slide widget hands the
box to :meth:`SlideSession.weak_edited`, so a stroke recounts only the tiles under it.
"""

from __future__ import annotations

from typing import Any

Box = tuple[int, int, int, int]
#: Nothing changed.
EMPTY: Box = (0, 0, 0, 0)


def paint_box(atoms: Any, shape: tuple[int, ...]) -> Box | None:
    """``(row0, col0, row1, col1)`` (end exclusive) around every pixel the atoms changed in a 2-D map of
    ``shape``; :data:`EMPTY` when none changed; None when an atom is of a form not known here (the caller
    then recounts everything)."""
    boxes: list[Box] = []
    try:
        for atom in atoms:
            slice_key = getattr(atom, "slice_key", None)
            if slice_key is not None:
                rows, cols = slice_key[-2], slice_key[-1]
                r0, r1, _ = rows.indices(shape[-2])
                c0, c1, _ = cols.indices(shape[-1])
                boxes.append((r0, c0, r1, c1))
                continue
            indices = atom[0]
            rows, cols = indices[-2], indices[-1]
            if len(rows):
                boxes.append((int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1))
    except (TypeError, AttributeError, IndexError, ValueError):
        return None
    if not boxes:
        return EMPTY
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )
