"""v2 spine from the lower cervical to the upper lumbar vertebrae: bodies with a cortical
rim growing caudally, discs, pedicles and laminae round the canal, spinous and transverse
processes, all on the kyphotic spine line. Patient mm."""
from __future__ import annotations

import numpy as np

from .canvas import Canvas
from .habitus import Body
from .shapes import ellipse_sd, polyline
from .tissues import Tissue

LEVELS = range(-7, 18)  # index from T1 (0): C1–C7 -7…-1, T12 11, L1–L5 12…16, 17 the sacrum's top (drawn as a body)
CANAL_R = 7.0


def level_z(b: Body, i: int) -> float:
    """z of vertebra i's body centre; T1 sits at the level of the lung apices."""
    return b.apex_z + 5.0 + i * b.p.vertebra_pitch


def paint_spine(cv: Canvas, b: Body, hu):
    p = b.p
    pitch, disc = p.vertebra_pitch, 0.22 * p.vertebra_pitch
    hh = (pitch - disc) / 2  # half-height of a body
    processes = []
    for i in LEVELS:
        zi = level_z(b, i)
        # Bodies grow from ~ 25 × 17 mm (C) to ~ 45 × 33 mm (L) in width × depth.
        sc = 0.7 + 0.6 * float(np.clip((i + 7) / 24.0, 0.0, 1.0))
        ry, rx = 13.0 * sc, 17.0 * sc
        ys = float(b.spine_y(zi))
        yc = ys + ry + 2.0 + CANAL_R  # canal centre
        box = ((zi - pitch, ys - rx, -rx - 5), (zi + pitch, yc + CANAL_R + 8, rx + 5))

        def body(z, y, x, shrink=0.0, zi=zi, ys=ys, ry=ry, rx=rx):
            return np.maximum(ellipse_sd((y - ys, x), (ry - shrink, rx - shrink), amin=ry - shrink),
                              np.abs(z - zi) - hh + shrink)

        def ring(z, y, x, yc=yc, zi=zi):
            rho = np.sqrt((y - yc) ** 2 + x**2)
            return np.maximum(np.abs(rho - CANAL_R - 3.0) - 3.0, np.abs(z - zi) - hh)  # pedicles and laminae

        cv.paint_sd(box, lambda z, y, x, f=body, zi=zi: np.maximum(f(z - pitch / 2, y, x, shrink=1.0),
                                                                   np.abs(z - zi - pitch / 2) - disc / 2),
                    Tissue.DISC, hu[Tissue.DISC])
        cv.paint_sd(box, body, Tissue.CORTICAL, hu[Tissue.CORTICAL])
        cv.paint_sd(box, lambda z, y, x, f=body: f(z, y, x, shrink=2.5), Tissue.CANCELLOUS, hu[Tissue.CANCELLOUS])
        cv.paint_sd(box, ring, Tissue.CORTICAL, 0.85 * hu[Tissue.CORTICAL])
        cv.paint_sd(box, lambda z, y, x, yc=yc, zi=zi: np.maximum(np.sqrt((y - yc) ** 2 + x**2) - CANAL_R,
                                                                   np.abs(z - zi) - pitch / 2),
                    Tissue.CORD, hu[Tissue.CORD])
        # Thoracic spinous processes slope steeply down over the next level; transverse
        # processes are long in the thorax (rib tubercles), short in the neck and lumbar spine.
        slope = 0.9 if 0 <= i < 12 else 0.3
        reach = 30.0 if 0 <= i < 12 else 22.0
        processes += polyline([[zi, yc + CANAL_R + 4.0, 0.0], [zi + slope * pitch, yc + 26.0, 0.0]], [4.5, 3.5])
        for side in (-1.0, 1.0):
            processes += polyline([[zi, yc, side * (CANAL_R + 4.0)], [zi - 2.0, yc + 6.0, side * reach]], [4.5, 3.5])
    cv.paint_tubes(processes, [(Tissue.CORTICAL, 0.85 * hu[Tissue.CORTICAL], 0.0)])
