"""Every contour box of every upper level set of a uint8 map, scored against ground truth, in two sweeps.

For a uint8 map ``u`` and a level ``v`` in 1..255, ``cv2.findContours({u >= v}, RETR_TREE)``
returns the outer border of each 8-connected foreground component and the border of each
hole (a 4-connected background component that does not touch the image edge). Their
bounding boxes are

- a component's box: its pixel extents;
- a hole's box: the hole's pixel extents grown by one pixel on every side (the foreground
  pixels that enclose it),

so every level's boxes follow from the components of all upper level sets (8-connected,
pixels added in decreasing value) and of all lower level sets (4-connected, increasing
value). A union-find over the pixels in sorted order (the max-tree / min-tree
construction) visits each pixel once per sweep and lists each level's components as it
passes; each box is scored against the ground-truth boxes on the spot. Tracing all 255
level sets instead costs 255 ``findContours`` calls per map.

Compiled with numba (cached on disk after the first call).
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)  # nogil: the box search runs beside the model (evaluator.evaluate)
def _find(parent: np.ndarray, x: int) -> int:
    root = x
    while parent[root] != root:
        root = parent[root]
    while parent[x] != root:  # path compression
        nxt = parent[x]
        parent[x] = root
        x = nxt
    return root


@numba.njit(cache=True, nogil=True)  # nogil: the box search runs beside the model (evaluator.evaluate)
def _sweep(u8: np.ndarray, want: np.ndarray, gt: np.ndarray, upper: bool, count: np.ndarray, best: np.ndarray) -> None:
    """One sweep; raises ``count[v]`` and ``best[v]`` for every wanted level ``v``.

    ``upper``: components of ``{u >= v}`` (8-connected, every one a contour). Otherwise:
    components of ``{u < v}`` (4-connected); those off the image edge are holes of ``{u >= v}``.
    """
    h, w = u8.shape
    w2 = w + 2
    n2 = (h + 2) * w2
    # keys on a grid padded by one pixel of key 256, which is never added: no bounds checks
    key = np.full(n2, 256, np.int32)
    hist = np.zeros(258, np.int64)
    for y in range(h):
        for x in range(w):
            k = 255 - np.int32(u8[y, x]) if upper else np.int32(u8[y, x])
            key[(y + 1) * w2 + x + 1] = k
            hist[k + 1] += 1
    pos = np.cumsum(hist)
    order = np.empty(h * w, np.int32)
    for y in range(h):
        for x in range(w):
            p = (y + 1) * w2 + x + 1
            order[pos[key[p]]] = p
            pos[key[p]] += 1
    if upper:
        offsets = np.array([-w2 - 1, -w2, -w2 + 1, -1, 1, w2 - 1, w2, w2 + 1], np.int32)
    else:
        offsets = np.array([-w2, -1, 1, w2], np.int32)
    parent = np.full(n2, -1, np.int32)
    bx0 = np.empty(n2, np.int32)
    by0 = np.empty(n2, np.int32)
    bx1 = np.empty(n2, np.int32)
    by1 = np.empty(n2, np.int32)
    edge = np.zeros(n2, np.bool_)
    size = np.zeros(n2, np.int32)
    iou = np.zeros(n2, np.float64)  # a root's best IoU, valid while dirty[root] is false
    dirty = np.zeros(n2, np.bool_)
    # doubly linked list of current roots, so each level lists its components in O(components)
    nxt = np.full(n2 + 1, -1, np.int32)
    prv = np.full(n2 + 1, -1, np.int32)
    head = n2  # sentinel
    nxt[head] = head
    prv[head] = head
    ng = gt.shape[0]
    gt_area = np.empty(ng, np.int64)
    for g in range(ng):
        gt_area[g] = (gt[g, 2] - gt[g, 0] + 1) * (gt[g, 3] - gt[g, 1] + 1)
    i = 0
    total = h * w
    grow = 0 if upper else 1
    for k in range(255):
        while i < total and key[order[i]] <= k:
            p = order[i]
            i += 1
            parent[p] = p
            py, px = p // w2 - 1, p % w2 - 1
            bx0[p] = px
            bx1[p] = px
            by0[p] = py
            by1[p] = py
            edge[p] = px == 0 or py == 0 or px == w - 1 or py == h - 1
            size[p] = 1
            nxt[p] = nxt[head]
            prv[p] = head
            prv[nxt[head]] = p
            nxt[head] = p
            a = p  # the root of p's component so far
            for o in offsets:
                q = p + o
                if parent[q] < 0:
                    continue
                b = _find(parent, q)
                if b == a:
                    continue
                if size[a] < size[b]:  # union by size keeps the trees shallow
                    a, b = b, a
                parent[b] = a
                size[a] += size[b]
                bx0[a] = min(bx0[a], bx0[b])
                by0[a] = min(by0[a], by0[b])
                bx1[a] = max(bx1[a], bx1[b])
                by1[a] = max(by1[a], by1[b])
                edge[a] = edge[a] or edge[b]
                nxt[prv[b]] = nxt[b]
                prv[nxt[b]] = prv[b]
            dirty[a] = True
        v = 255 - k if upper else k + 1
        if not want[v]:
            continue
        r = nxt[head]
        c = 0
        top = best[v]
        while r != head:
            if upper or not edge[r]:
                c += 1
                if dirty[r]:  # box changed since it was last scored
                    dirty[r] = False
                    # wsolevaluation's box from the contour's boundingRect (x, y, w, h): x, y, x + w, y + h, clipped
                    x0, y0 = np.int64(bx0[r]) - grow, np.int64(by0[r]) - grow
                    x1 = min(np.int64(bx1[r]) + grow + 1, w - 1)
                    y1 = min(np.int64(by1[r]) + grow + 1, h - 1)
                    area = (x1 - x0 + 1) * (y1 - y0 + 1)
                    score = 0.0
                    for g in range(ng):
                        iw = min(x1, gt[g, 2]) - max(x0, gt[g, 0]) + 1
                        ih = min(y1, gt[g, 3]) - max(y0, gt[g, 1]) + 1
                        if iw <= 0 or ih <= 0:
                            continue
                        inter = iw * ih
                        union = area + gt_area[g] - inter
                        if union > 0 and inter / union > score:
                            score = inter / union
                    iou[r] = score
                if iou[r] > top:
                    top = iou[r]
            r = nxt[r]
        count[v] += c
        best[v] = top


@numba.njit(cache=True, nogil=True)  # nogil: the box search runs beside the model (evaluator.evaluate)
def level_best_iou(u8: np.ndarray, want: np.ndarray, gt: np.ndarray):
    """Score the contour boxes of ``{u8 >= v}`` for every level v in 1..255 where ``want[v]``.

    Args:
        u8: ``(H, W)`` uint8 map.
        want: ``(257,)`` bool, the levels to score.
        gt: ``(G, 4)`` int64 ground-truth boxes, inclusive corners (+1 pixel IoU convention).

    Returns:
        ``(count, best)``, both ``(257,)``: the number of contours (components plus holes) of
        each wanted level and the largest IoU of any of their boxes with any ground-truth box.
    """
    count = np.zeros(257, np.int64)
    best = np.zeros(257, np.float64)
    _sweep(u8, want, gt, True, count, best)
    _sweep(u8, want, gt, False, count, best)
    return count, best
