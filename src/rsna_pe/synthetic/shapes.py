"""Drawing primitives of the phantom: ellipses, capsules and a canvas of one slice in HU.

Coordinates are normalised: the image spans -1..1 in x (right = patient left) and in y
(down = posterior), so 1 is half the field of view (about 160-190 mm).
"""
from dataclasses import dataclass

import numpy as np


@dataclass
class Disk:
    """An axis-aligned ellipse (an axial cut through a tube crossing the slice)."""
    cx: float
    cy: float
    rx: float
    ry: float

    def bbox(self):
        return self.cx - self.rx, self.cx + self.rx, self.cy - self.ry, self.cy + self.ry

    def mask(self, x, y):
        return ((x - self.cx) / self.rx) ** 2 + ((y - self.cy) / self.ry) ** 2 <= 1


@dataclass
class Capsule:
    """Points within r of the segment p-q (an axial cut through a tube lying in the slice)."""
    px: float
    py: float
    qx: float
    qy: float
    r: float

    def bbox(self):
        return (min(self.px, self.qx) - self.r, max(self.px, self.qx) + self.r,
                min(self.py, self.qy) - self.r, max(self.py, self.qy) + self.r)

    def mask(self, x, y):
        dx, dy = self.qx - self.px, self.qy - self.py
        u = np.clip(((x - self.px) * dx + (y - self.py) * dy) / (dx * dx + dy * dy + 1e-12), 0, 1)
        return (x - self.px - u * dx) ** 2 + (y - self.py - u * dy) ** 2 <= self.r ** 2


class Canvas:
    """One slice in HU; shapes are painted inside their bounding boxes only (cheap)."""

    def __init__(self, n, fill):
        self.n = n
        self.c = ((np.arange(n) + 0.5) * 2 / n - 1).astype(np.float32)  # pixel centres
        self.img = (np.array(fill, np.float32) if np.ndim(fill) == 2
                    else np.full((n, n), fill, np.float32))

    def box(self, bbox):
        x0, x1, y0, y1 = bbox
        n = self.n
        c0, c1 = max(0, int((x0 + 1) * n / 2 - 0.5)), min(n, int((x1 + 1) * n / 2 + 0.5) + 1)
        r0, r1 = max(0, int((y0 + 1) * n / 2 - 0.5)), min(n, int((y1 + 1) * n / 2 + 0.5) + 1)
        if c1 <= c0 or r1 <= r0:
            return None
        return (slice(r0, r1), slice(c0, c1)), self.c[None, c0:c1], self.c[r0:r1, None]

    def paint(self, shape, value, within=(), where=None):
        """Set ``value`` (number or f(x, y)) on ``shape`` intersected with ``within`` shapes,
        and where ``where(current HU)`` holds."""
        b = self.box(shape.bbox())
        if b is None:
            return
        sl, x, y = b
        m = shape.mask(x, y)
        for w in within:
            m &= w.mask(x, y)
        region = self.img[sl]
        if where is not None:
            m &= where(region)
        if not m.any():
            return
        if callable(value):  # a field over the box; keep the masked part
            region[m] = np.broadcast_to(value(x, y), region.shape)[m]
        else:
            region[m] = value


def lerp(a, b, u):
    return a + (b - a) * u
