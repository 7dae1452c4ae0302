"""Masks ↔ polygons: :func:`mask_to_polygons`, :func:`labels_to_polygons`, :func:`polygons_to_mask`.

Owns the pixel-edge tracing (boundary edges, ring ordering), the scanline rasteriser
(:func:`polygons_to_mask`, and :func:`polygons_to_index` for painting in order) and
:func:`polygonal_parts`. May import numpy, scipy, shapely, :mod:`.model` and ``core.errors``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import shapely
from scipy import ndimage
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from napari_milkd.core.annotations.model import Annotation, Geometry
from napari_milkd.core.errors import InputError

# ---------------------------------------------------------------------------------------------------------
# mask → polygons


def _boundary_edges(padded: np.ndarray) -> tuple[np.ndarray, ...]:
    """Directed pixel edges between foreground and background of a zero-padded mask.

    Each edge runs along one side of a foreground pixel with that pixel on its right in image
    coordinates (y down), i.e. counter-clockwise in the numbers: outer rings get a positive signed
    area, holes a negative one. Returns ``(start, end, pixel, direction)``: vertex ids
    ``i·(W+1) + j`` of the padded vertex grid, the padded pixel's flat index, and 0..3 = +x, +y, −x, −y.
    """
    wp = padded.shape[1]
    vw = wp + 1
    inner = padded[1:-1, 1:-1]
    starts, ends, pixels, dirs = [], [], [], []
    neighbours = (
        (padded[:-2, 1:-1], (0, 0), (0, 1)),  # top: TL → TR
        (padded[1:-1, 2:], (0, 1), (1, 1)),  # right: TR → BR
        (padded[2:, 1:-1], (1, 1), (1, 0)),  # bottom: BR → BL
        (padded[1:-1, :-2], (1, 0), (0, 0)),  # left: BL → TL
    )
    for direction, (neighbour, (si, sj), (ei, ej)) in enumerate(neighbours):
        rr, cc = np.nonzero(inner & ~neighbour)
        rr = rr.astype(np.int64) + 1
        cc = cc.astype(np.int64) + 1
        starts.append((rr + si) * vw + cc + sj)
        ends.append((rr + ei) * vw + cc + ej)
        pixels.append(rr * wp + cc)
        dirs.append(np.full(rr.size, direction, np.int8))
    return tuple(np.concatenate(a) for a in (starts, ends, pixels, dirs))


def _order_rings(start: np.ndarray, end: np.ndarray, pixel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Link edges into closed rings; returns the edge order and each ordered edge's ring id.

    At a vertex where two foreground pixels touch only diagonally, the ring stays with the pixel it
    came along, so diagonal neighbours end up in different rings (foreground is 4-connected). The
    cycles of the resulting permutation are ranked by pointer jumping, so nothing loops in Python.
    """
    n = start.size
    order = np.argsort(start, kind="stable")
    start_sorted = start[order]
    first = np.searchsorted(start_sorted, end, side="left")
    count = np.searchsorted(start_sorted, end, side="right") - first
    nxt = order[first]
    saddle = np.flatnonzero(count == 2)
    if saddle.size:
        alternative = order[first[saddle] + 1]
        switch = pixel[nxt[saddle]] != pixel[saddle]
        nxt[saddle[switch]] = alternative[switch]

    # Cycle representative = smallest edge index in the cycle, by pointer jumping (min over 2^k steps).
    # Once a doubling step changes nothing, every window covers its whole cycle.
    rep = np.minimum(np.arange(n), nxt)
    jump = nxt.copy()
    while True:
        new_rep = np.minimum(rep, rep[jump])
        if np.array_equal(new_rep, rep):
            break
        rep, jump = new_rep, jump[jump]
    # Steps from each edge forward to its representative (list ranking; the representative is terminal).
    is_rep = rep == np.arange(n)
    succ = np.where(is_rep, np.arange(n), nxt)
    dist = (~is_rep).astype(np.int64)
    while not is_rep[succ].all():
        dist = dist + dist[succ]
        succ = succ[succ]
    length = np.bincount(rep, minlength=n)[rep]
    position = (length - dist) % length
    ranked = np.lexsort((position, rep))
    _, ring_id = np.unique(rep[ranked], return_inverse=True)
    return ranked, ring_id


def _mask_polygon_array(mask: np.ndarray) -> np.ndarray:
    """Exact pixel-edge polygons (with holes) of a boolean mask, in mask pixels, corner origin."""
    padded = np.pad(mask, 1)
    start, end, pixel, direction = _boundary_edges(padded)
    if start.size == 0:
        return np.empty(0, dtype=object)
    ranked, ring_id = _order_rings(start, end, pixel)

    # Keep only corners: drop a vertex whose incoming and outgoing edges run the same way.
    d = direction[ranked]
    ring_start = np.r_[0, np.flatnonzero(np.diff(ring_id)) + 1]
    ring_stop = np.r_[ring_start[1:], ring_id.size]
    previous = np.arange(ring_id.size) - 1
    previous[ring_start] = ring_stop - 1
    corner = d != d[previous]
    vw = padded.shape[1] + 1
    vertex = start[ranked][corner]
    x = (vertex % vw - 1).astype(float)
    y = (vertex // vw - 1).astype(float)
    rid = ring_id[corner]

    # Signed area per ring (shoelace on closed rings), and the component each ring bounds.
    r_start = np.r_[0, np.flatnonzero(np.diff(rid)) + 1]
    r_stop = np.r_[r_start[1:], rid.size]
    following = np.arange(rid.size) + 1
    following[r_stop - 1] = r_start
    cross = x * y[following] - x[following] * y
    signed_area = np.add.reduceat(cross, r_start) / 2.0
    labels, _ = ndimage.label(padded)  # 4-connectivity (the default structure)
    ring_pixel = pixel[ranked][ring_start]
    component = labels.ravel()[ring_pixel]

    rings = shapely.linearrings(np.column_stack([x, y]), indices=rid)
    ring_order = np.lexsort((signed_area < 0, component))  # per component: the shell, then its holes
    _, polygon_index = np.unique(component[ring_order], return_inverse=True)
    polygons = shapely.polygons(rings[ring_order], indices=polygon_index)
    invalid = ~shapely.is_valid(polygons)
    if invalid.any():
        # Rings that touch themselves at a diagonal vertex (a hole meeting the outside or another hole at
        # one corner) are valid as pixel sets but not as OGC rings: split them at the touching vertex.
        polygons[invalid] = shapely.make_valid(polygons[invalid])
    return polygons


def polygonal_parts(geometry: BaseGeometry) -> list[Polygon]:
    """The non-empty polygons of any geometry (polygons, multipolygons, collections), flattened."""
    parts = shapely.get_parts(geometry)
    out: list[Polygon] = []
    for part in parts:
        if isinstance(part, Polygon):
            if not part.is_empty and part.area > 0:
                out.append(part)
        elif isinstance(part, MultiPolygon | shapely.GeometryCollection):
            out.extend(polygonal_parts(part))
    return out


def mask_to_polygons(
    mask: np.ndarray,
    downsample: float = 1.0,
    *,
    simplify_px: float = 0.5,
    min_area_px: float = 0,
) -> list[Polygon]:
    """Polygons (with holes) of a mask made at ``downsample``, in level-0 ``(x, y)`` pixels, corner origin.

    Non-zero pixels are foreground (use :func:`labels_to_polygons` for one class per label value).
    One polygon per 4-connected component; pixels that touch only at a corner are separate polygons.
    The outlines follow pixel edges exactly; they are then simplified (Douglas-Peucker, topology
    preserved) with tolerance ``simplify_px`` mask pixels (0 keeps them exact), and components smaller
    than ``min_area_px`` mask pixels are dropped. Fast: linking edges into rings is vectorised (a
    2000×2000 mask with a few hundred components takes well under a second).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InputError(f"mask must be 2-D (rows, cols), got shape {mask.shape}")
    if not downsample > 0:
        raise InputError(f"downsample must be positive, got {downsample}")
    polygons = _mask_polygon_array(mask != 0)
    if polygons.size == 0:
        return []
    if min_area_px > 0:
        polygons = polygons[shapely.area(polygons) >= min_area_px]
    if simplify_px > 0:
        polygons = shapely.simplify(polygons, simplify_px, preserve_topology=True)
    if downsample != 1:
        polygons = shapely.transform(polygons, lambda xy: xy * float(downsample))
    out: list[Polygon] = []
    for geometry in polygons:
        out.extend(polygonal_parts(geometry))
    return out


def labels_to_polygons(
    labels: np.ndarray,
    downsample: float = 1.0,
    *,
    simplify_px: float = 0.5,
    min_area_px: float = 0,
) -> dict[int, list[Polygon]]:
    """:func:`mask_to_polygons` for each non-zero value of a label image: ``{value: polygons}``."""
    labels = np.asarray(labels)
    values = [int(v) for v in np.unique(labels) if v != 0]
    return {
        v: mask_to_polygons(labels == v, downsample, simplify_px=simplify_px, min_area_px=min_area_px)
        for v in values
    }


# ---------------------------------------------------------------------------------------------------------
# polygons → mask


def _as_polygon_array(polygons: Iterable[Geometry | Annotation]) -> tuple[np.ndarray, np.ndarray]:
    """The polygonal parts of every item, and the index of the item each part came from."""
    parts: list[Polygon] = []
    owner: list[int] = []
    for index, item in enumerate(polygons):
        geometry = item.geometry if isinstance(item, Annotation) else item
        if isinstance(geometry, Polygon) and not geometry.is_empty and geometry.area > 0:
            parts.append(geometry)  # the common case, without get_parts
            owner.append(index)
            continue
        found = polygonal_parts(geometry)
        parts.extend(found)
        owner.extend([index] * len(found))
    return np.array(parts, dtype=object), np.asarray(owner, dtype=np.int64)


#: Pixels one numpy call of the rasterisers handles at most. Large numpy calls hold the GIL for their whole
#: length (``np.maximum.at`` over 8 M pixels: ~35 ms), which stalls the GUI thread when a worker rasterises
#: an import; at 1 M pixels each call is a few milliseconds, and the whole is faster, not slower
#: (``benchmarks/bench_rasterise.py``).
PIXELS_PER_CALL = 1 << 20


def _check_raster(shape: tuple[int, int], downsample: float) -> tuple[int, int]:
    height, width = (int(v) for v in shape)
    if height < 0 or width < 0:
        raise InputError(f"mask shape must be non-negative, got {shape}")
    if not downsample > 0:
        raise InputError(f"downsample must be positive, got {downsample}")
    return height, width


def _spans(
    polys: np.ndarray, height: int, width: int, downsample: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Inside spans of every polygon in one vectorised pass: ``(row, c_start, c_stop, polygon)``.

    Pixel ``(r, c)`` is inside a polygon when its centre is (even-odd rule per polygon, so holes are
    outside); a span covers columns ``c_start <= c < c_stop`` of row ``r``. Each polygon only costs
    the rows and edges it has, whatever the size of the map.
    """
    empty = np.zeros(0, np.int64)
    if polys.size == 0 or height == 0 or width == 0:
        return empty, empty, empty, empty
    rings, ring_polygon = shapely.get_rings(polys, return_index=True)
    coords, coord_ring = shapely.get_coordinates(rings, return_index=True)
    u = coords[:, 0] / downsample - 0.5  # pixel-centre units: centre of column c is at u = c
    v = coords[:, 1] / downsample - 0.5
    same = coord_ring[:-1] == coord_ring[1:]
    u0, u1, v0, v1 = u[:-1][same], u[1:][same], v[:-1][same], v[1:][same]
    edge_polygon = ring_polygon[coord_ring[:-1][same]]
    # Rows r crossed by an edge: min(v0, v1) <= r < max(v0, v1) (half open, so vertices count once).
    lo = np.maximum(np.ceil(np.minimum(v0, v1)), 0).astype(np.int64)
    hi = np.minimum(np.ceil(np.maximum(v0, v1)), height).astype(np.int64)
    n = np.maximum(hi - lo, 0)
    if n.sum() == 0:
        return empty, empty, empty, empty
    edge = np.repeat(np.arange(n.size), n)
    row = lo[edge] + (np.arange(edge.size) - np.repeat(np.cumsum(n) - n, n))
    t = (row - v0[edge]) / (v1[edge] - v0[edge])
    x = u0[edge] + t * (u1[edge] - u0[edge])
    crossing_polygon = edge_polygon[edge]
    # Order by (polygon, row, x): sort by x, then a stable (radix) sort by one integer key; much faster
    # than a three-key lexsort on millions of crossings.
    by_x = np.argsort(x)
    key = crossing_polygon[by_x].astype(np.int64) * (height + 1) + row[by_x]
    order = by_x[np.argsort(key, kind="stable")]
    row, x, crossing_polygon = row[order], x[order], crossing_polygon[order]
    # Each polygon crosses each row an even number of times: consecutive pairs are inside spans.
    row_pair = row[0::2]
    c_start = np.clip(np.ceil(x[0::2]), 0, width).astype(np.int64)
    c_stop = np.clip(np.ceil(x[1::2]), 0, width).astype(np.int64)
    keep = c_stop > c_start
    return row_pair[keep], c_start[keep], c_stop[keep], crossing_polygon[0::2][keep]


def polygons_to_mask(
    polygons: Iterable[Geometry | Annotation],
    shape: tuple[int, int],
    downsample: float = 1.0,
) -> np.ndarray:
    """Rasterise level-0 polygons into a boolean mask of ``shape`` made at ``downsample``.

    Mask pixel ``(r, c)`` is inside when its centre ``((c+0.5)·ds, (r+0.5)·ds)`` is inside a polygon
    (holes excluded; overlapping polygons are united). A scanline fill, vectorised over all edges of
    all polygons at once and done in bands of rows, so memory stays near the size of the mask and a
    polygon costs only its own rows.
    """
    height, width = _check_raster(shape, downsample)
    mask = np.zeros((height, width), dtype=bool)
    polys, _ = _as_polygon_array(polygons)
    row_pair, c_start, c_stop, _ = _spans(polys, height, width, downsample)
    if row_pair.size == 0:
        return mask
    band = max(1, PIXELS_PER_CALL // (width + 1))
    for top in range(0, height, band):
        bottom = min(height, top + band)
        sel = (row_pair >= top) & (row_pair < bottom)
        if not sel.any():
            continue
        base = (row_pair[sel] - top) * (width + 1)
        size = (bottom - top) * (width + 1)
        diff = np.bincount(base + c_start[sel], minlength=size) - np.bincount(
            base + c_stop[sel], minlength=size
        )
        mask[top:bottom] = np.cumsum(diff.reshape(bottom - top, width + 1), axis=1)[:, :width] > 0
    return mask


def polygons_to_index(
    polygons: Iterable[Geometry | Annotation],
    shape: tuple[int, int],
    downsample: float = 1.0,
) -> np.ndarray:
    """For each pixel of a map of ``shape`` made at ``downsample``: 1 + the index of the **last** item
    of ``polygons`` whose area holds the pixel centre (0 where none does); ``int32``.

    Painting items in order, later over earlier, in one pass: a lookup table turns the result into
    labels (``lut[index]``). Same pixel-centre rule as :func:`polygons_to_mask`.
    """
    height, width = _check_raster(shape, downsample)
    out = np.zeros(height * width, dtype=np.int32)
    polys, owner = _as_polygon_array(polygons)
    row, c_start, c_stop, part = _spans(polys, height, width, downsample)
    if row.size == 0:
        return out.reshape(height, width)
    value = (owner[part] + 1).astype(np.int32)
    length = c_stop - c_start
    # Expand spans to pixels in chunks; np.maximum.at keeps the last item.
    limit = PIXELS_PER_CALL
    ends = np.cumsum(length)
    first = 0
    while first < row.size:
        stop = int(np.searchsorted(ends, (ends[first - 1] if first else 0) + limit, side="right"))
        stop = max(stop, first + 1)
        n = length[first:stop]
        offsets = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
        flat = np.repeat(row[first:stop] * width + c_start[first:stop], n) + offsets
        np.maximum.at(out, flat, np.repeat(value[first:stop], n))
        first = stop
    return out.reshape(height, width)
