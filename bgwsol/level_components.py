"""Boxes of the 8-connected components of every upper level set of a uint8 map, in one pass.

For a uint8 map ``u`` and each level ``v`` in 1..255, the upper level set ``{u >= v}`` has
8-connected components (the outer contours ``cv2.findContours`` traces) and holes (4-connected
background components enclosed by foreground: its hole contours). Tracing all 255 level sets
costs 255 ``findContours`` calls; a union-find over pixels in decreasing value order (the
max-tree construction) visits each pixel once and yields every level's components with
their bounding boxes. The number of holes per level comes from the Euler number
(``components - holes``), counted for every level at once from 2x2 pixel quads (Gray's bit
quads, 8-connectivity). Levels with holes are traced by the caller, so results stay exact.

Compiled with numba (cached on disk after the first call).
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def _find(parent: np.ndarray, x: int) -> int:
    root = x
    while parent[root] != root:
        root = parent[root]
    while parent[x] != root:  # path compression
        nxt = parent[x]
        parent[x] = root
        x = nxt
    return root


@numba.njit(cache=True)
def level_component_boxes(u8: np.ndarray, want: np.ndarray):
    """Components of ``{u8 >= v}`` for the levels v in 1..255 where ``want[v]`` is true.

    Returns ``(count, start, boxes)``: ``count[v]`` components at level ``v`` whose boxes
    ``(xmin, ymin, xmax, ymax)`` (inclusive pixel extents) are ``boxes[start[v]:start[v] + count[v]]``.
    """
    h, w = u8.shape
    n = h * w
    flat = u8.ravel()
    # counting sort by decreasing value (uint8: 256 buckets)
    hist = np.zeros(257, np.int64)
    for k in range(n):
        hist[255 - flat[k] + 1] += 1
    pos = np.cumsum(hist)
    order = np.empty(n, np.int64)
    for k in range(n):
        b = 255 - flat[k]
        order[pos[b]] = k
        pos[b] += 1
    parent = np.full(n, -1, np.int64)
    bx0 = np.empty(n, np.int64)
    by0 = np.empty(n, np.int64)
    bx1 = np.empty(n, np.int64)
    by1 = np.empty(n, np.int64)
    # doubly linked list of current roots, so each level lists its components in O(components)
    nxt = np.full(n + 1, -1, np.int64)
    prv = np.full(n + 1, -1, np.int64)
    head = n  # sentinel
    nxt[head] = head
    prv[head] = head
    count = np.zeros(257, np.int64)
    start = np.zeros(257, np.int64)
    cap = 4 * n + 1024
    out = np.empty((cap, 4), np.int64)
    used = 0
    i = 0
    for v in range(255, 0, -1):
        while i < n and flat[order[i]] >= v:
            p = order[i]
            i += 1
            parent[p] = p
            py, px = p // w, p % w
            bx0[p] = px
            bx1[p] = px
            by0[p] = py
            by1[p] = py
            # link p as a root
            nxt[p] = nxt[head]
            prv[p] = head
            prv[nxt[head]] = p
            nxt[head] = p
            a = p  # p's root: merges below hang the neighbours' roots under it
            for dy in range(-1, 2):
                qy = py + dy
                if qy < 0 or qy >= h:
                    continue
                for dx in range(-1, 2):
                    qx = px + dx
                    if (dy == 0 and dx == 0) or qx < 0 or qx >= w:
                        continue
                    q = qy * w + qx
                    if parent[q] < 0:
                        continue
                    b = _find(parent, q)
                    if a == b:
                        continue
                    parent[b] = a
                    bx0[a] = min(bx0[a], bx0[b])
                    by0[a] = min(by0[a], by0[b])
                    bx1[a] = max(bx1[a], bx1[b])
                    by1[a] = max(by1[a], by1[b])
                    # unlink b
                    nxt[prv[b]] = nxt[b]
                    prv[nxt[b]] = prv[b]
        start[v] = used
        if not want[v]:
            continue
        r = nxt[head]
        while r != head:
            if used >= cap:
                grown = np.empty((cap * 2, 4), np.int64)
                grown[:cap] = out
                out = grown
                cap *= 2
            out[used, 0] = bx0[r]
            out[used, 1] = by0[r]
            out[used, 2] = bx1[r]
            out[used, 3] = by1[r]
            used += 1
            r = nxt[r]
        count[v] = used - start[v]
    return count, start, out[:used]


@numba.njit(cache=True)
def euler_numbers(u8: np.ndarray) -> np.ndarray:
    """Euler number (8-connected components minus holes) of ``{u8 >= v}`` for every v in 0..256.

    Bit-quad counting over the map padded with one background pixel: for 8-connectivity
    ``E = (Q1 - Q3 - 2 QD) / 4``. Each quad's pattern changes at most four times as ``v``
    rises, so the counts for all levels come from difference arrays in one pass.
    """
    h, w = u8.shape
    diff = np.zeros(258, np.int64)  # accumulates 4 * E over level ranges
    for y in range(-1, h):
        for x in range(-1, w):
            # quad pixels: tl, tr, bl, br; outside the image counts as -1 (never foreground)
            a0 = np.int64(u8[y, x]) if (y >= 0 and x >= 0) else -1
            a1 = np.int64(u8[y, x + 1]) if (y >= 0 and x + 1 < w) else -1
            a2 = np.int64(u8[y + 1, x]) if (y + 1 < h and x >= 0) else -1
            a3 = np.int64(u8[y + 1, x + 1]) if (y + 1 < h and x + 1 < w) else -1
            # sorting network: s0 <= s1 <= s2 <= s3
            s0, s1, s2, s3 = a0, a1, a2, a3
            if s0 > s1:
                s0, s1 = s1, s0
            if s2 > s3:
                s2, s3 = s3, s2
            if s0 > s2:
                s0, s2 = s2, s0
            if s1 > s3:
                s1, s3 = s3, s1
            if s1 > s2:
                s1, s2 = s2, s1
            # exactly one foreground pixel: v in (s2, s3] -> +1
            lo, hi = max(s2 + 1, 0), s3
            if hi >= lo:
                diff[lo] += 1
                diff[hi + 1] -= 1
            # exactly three foreground pixels: v in (s0, s1] -> -1
            lo, hi = max(s0 + 1, 0), s1
            if hi >= lo:
                diff[lo] -= 1
                diff[hi + 1] += 1
            # exactly two, on a diagonal: v in (s1, s2] with the two largest at (tl, br) or (tr, bl) -> -2
            lo, hi = max(s1 + 1, 0), s2
            if hi >= lo:
                t0, t1, t2, t3 = a0 >= s2, a1 >= s2, a2 >= s2, a3 >= s2
                if int(t0) + int(t1) + int(t2) + int(t3) == 2 and ((t0 and t3) or (t1 and t2)):
                    diff[lo] -= 2
                    diff[hi + 1] += 2
    e4 = np.cumsum(diff)[:257]
    return e4 // 4
