"""Polygons from binary masks: the outlines of pixel regions, traced along pixel edges.

A traced outline runs along the pixel borders, so rasterising it again (pycocotools, as the COCO
and YOLO readers do) gives back exactly the same pixels. Diagonal neighbours are joined
(8-connected regions, 4-connected holes). Optional Douglas-Peucker simplification trades vertices
for at most ``tolerance`` pixels of outline displacement.
"""

from __future__ import annotations

import numpy as np

_DIRS = np.array([(1, 0), (0, 1), (-1, 0), (0, -1)])  # E, S, W, N in (x, y) with y down


def mask_to_polygons(mask: np.ndarray, tolerance: float = 0.0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The outer outlines and the hole outlines of a bool mask.

    Args:
        mask: ``H x W`` bool (or 0/1) array.
        tolerance: Douglas-Peucker tolerance in pixels; 0 keeps the exact pixel outline (only
            collinear vertices are dropped).

    Returns:
        ``(outers, holes)``: lists of ``K x 2`` float arrays of ``(x, y)`` vertices in pixel-edge
        coordinates (pixel ``(r, c)`` spans ``[c, c + 1] x [r, r + 1]``); outers run clockwise on
        screen, holes counter-clockwise.
    """
    mask = np.asarray(mask).astype(bool)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return [], []
    r0, c0 = rows[0], cols[0]
    crop = mask[r0:rows[-1] + 1, c0:cols[-1] + 1]
    loops = _trace(crop)
    outers, holes = [], []
    for loop in loops:
        pts = loop + (c0, r0)
        if tolerance > 0:
            pts = simplify(pts, tolerance)
        (outers if _signed_area(loop) > 0 else holes).append(pts.astype(np.float64))
    return outers, holes


def _trace(m: np.ndarray) -> list[np.ndarray]:
    p = np.pad(m, 1)
    h, w = p.shape
    core = p[1:-1, 1:-1]
    r, c = np.meshgrid(np.arange(1, h - 1), np.arange(1, w - 1), indexing="ij")
    starts, dirs = [], []
    # (neighbour offset, start corner offset (dx, dy), direction): foreground on the right of each edge
    for (dr, dc), (sx, sy), d in (((-1, 0), (0, 0), 0), ((0, 1), (1, 0), 1), ((1, 0), (1, 1), 2), ((0, -1), (0, 1), 3)):
        edge = core & ~p[1 + dr:h - 1 + dr, 1 + dc:w - 1 + dc]
        starts.append(np.stack([c[edge] + sx, r[edge] + sy], 1))
        dirs.append(np.full(int(edge.sum()), d))
    start = np.concatenate(starts)  # (E, 2) x, y in padded coordinates
    direction = np.concatenate(dirs)
    end = start + _DIRS[direction]
    key = start[:, 1] * (w + 1) + start[:, 0]
    out: dict[int, list[int]] = {}
    for e, k in enumerate(key.tolist()):
        out.setdefault(k, []).append(e)
    end_key = (end[:, 1] * (w + 1) + end[:, 0]).tolist()
    succ = np.empty(len(start), dtype=np.int64)
    for e in range(len(start)):
        nxt = out[end_key[e]]
        if len(nxt) == 1:
            succ[e] = nxt[0]
        else:  # a pinch vertex: turn left, onto the diagonal neighbour (8-connectivity)
            left = (direction[e] + 3) % 4
            succ[e] = nxt[0] if direction[nxt[0]] == left else nxt[1]
    used = np.zeros(len(start), dtype=bool)
    loops = []
    for e0 in range(len(start)):
        if used[e0]:
            continue
        edges = [e0]
        used[e0] = True
        e = succ[e0]
        while e != e0:
            edges.append(e)
            used[e] = True
            e = succ[e]
        idx = np.asarray(edges)
        turn = direction[idx] != direction[np.roll(idx, 1)]  # keep corners only
        loops.append(start[idx[turn]] - 1)
    return loops


def _signed_area(pts: np.ndarray) -> float:
    x, y = pts[:, 0].astype(np.float64), pts[:, 1].astype(np.float64)
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def polygon_area(pts: np.ndarray) -> float:
    """The area enclosed by a polygon (shoelace, absolute)."""
    return abs(_signed_area(np.asarray(pts, dtype=np.float64).reshape(-1, 2)))


def simplify(pts: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker on a closed polygon (split at the vertex farthest from the first)."""
    pts = np.asarray(pts, dtype=np.float64)
    if len(pts) <= 4:
        return pts
    far = int(np.argmax(((pts - pts[0]) ** 2).sum(1)))
    a = _dp(pts[: far + 1], tolerance)
    b = _dp(np.concatenate([pts[far:], pts[:1]]), tolerance)
    out = np.concatenate([a[:-1], b[:-1]])
    return out if len(out) >= 3 else pts


def _dp(pts: np.ndarray, tolerance: float) -> np.ndarray:
    keep = np.zeros(len(pts), dtype=bool)
    keep[[0, -1]] = True
    stack = [(0, len(pts) - 1)]
    while stack:
        i, j = stack.pop()
        if j <= i + 1:
            continue
        seg = pts[j] - pts[i]
        rel = pts[i + 1:j] - pts[i]
        norm = float(np.hypot(*seg))
        dist = np.abs(seg[0] * rel[:, 1] - seg[1] * rel[:, 0]) / norm if norm else np.hypot(rel[:, 0], rel[:, 1])
        k = int(np.argmax(dist))
        if dist[k] > tolerance:
            keep[i + 1 + k] = True
            stack += [(i, i + 1 + k), (i + 1 + k, j)]
    return pts[keep]
