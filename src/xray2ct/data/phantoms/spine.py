"""v2 spine from the lower cervical to the upper lumbar vertebrae: bodies with a cortical
rim growing caudally, discs, pedicles and laminae round the canal, spinous and transverse
processes, all on the kyphotic spine line. Patient mm. v1 paints its vertebrae with the same
`paint_vertebra` and `process_tubes`, passing its own proportions."""
from __future__ import annotations

import numpy as np

from .canvas import Canvas
from .habitus import Body
from .shapes import ellipse_sd, polyline
from .skeleton import BoneBuild
from .tissues import Tissue

LEVELS = range(-7, 18)  # index from T1 (0): C1–C7 -7…-1, T12 11, L1–L5 12…16, 17 the sacrum's top (drawn as a body)
CANAL_R = 7.0


def level_z(b: Body, i: int) -> float:
    """z of vertebra i's body centre; T1 sits at the level of the lung apices."""
    return b.apex_z + 5.0 + i * b.p.vertebra_pitch


def paint_vertebra(cv: Canvas, hu, zi: float, ys: float, scale: float, pitch: float,
                   pin_amin: bool = True, cortex_mm: float = 2.5, posterior_fraction: float = 0.85) -> float:
    """Paint one vertebra: the disc below it, the body (cortical rim, cancellous core), the
    pedicles and laminae round the canal, and the cord. Returns yc, the canal centre's y (mm).

    Args:
        zi, ys: z and y (mm) of the body's centre.
        scale: body size, × 13 mm (depth) and 17 mm (width) semi-axes.
        pitch: vertebral body + disc height (mm).
        pin_amin: give the body's ellipse its smallest semi-axis (`ellipse_sd`), so a wider
            grid paints the same values; v1 passes False (its output is pinned by seed).
        cortex_mm: the body's cortical shell; posterior_fraction: the pedicles' and laminae's
            HU × the cortical HU (`skeleton.BoneBuild`).
    """
    disc = 0.22 * pitch
    hh = (pitch - disc) / 2  # half-height of a body
    ry, rx = 13.0 * scale, 17.0 * scale
    yc = ys + ry + 2.0 + CANAL_R  # canal centre
    box = ((zi - pitch, ys - rx, -rx - 5), (zi + pitch, yc + CANAL_R + 8, rx + 5))

    def body(z, y, x, shrink=0.0):
        amin = ry - shrink if pin_amin else None
        return np.maximum(ellipse_sd((y - ys, x), (ry - shrink, rx - shrink), amin=amin),
                          np.abs(z - zi) - hh + shrink)

    def ring(z, y, x):
        rho = np.sqrt((y - yc) ** 2 + x**2)
        return np.maximum(np.abs(rho - CANAL_R - 3.0) - 3.0, np.abs(z - zi) - hh)  # pedicles and laminae

    cv.paint_sd(box, lambda z, y, x: np.maximum(body(z - pitch / 2, y, x, shrink=1.0), np.abs(z - zi - pitch / 2) - disc / 2),
                Tissue.DISC, hu[Tissue.DISC])
    cv.paint_sd(box, body, Tissue.CORTICAL, hu[Tissue.CORTICAL])
    cv.paint_sd(box, lambda z, y, x: body(z, y, x, shrink=cortex_mm), Tissue.CANCELLOUS, hu[Tissue.CANCELLOUS])
    cv.paint_sd(box, ring, Tissue.CORTICAL, posterior_fraction * hu[Tissue.CORTICAL])
    cv.paint_sd(box, lambda z, y, x: np.maximum(np.sqrt((y - yc) ** 2 + x**2) - CANAL_R, np.abs(z - zi) - pitch / 2),
                Tissue.CORD, hu[Tissue.CORD])
    return yc


def process_tubes(zi: float, yc: float, pitch: float, spinous_slope: float, spinous_tip: float,
                  transverse_reach: float) -> list:
    """Capsules of one vertebra's spinous process (back from the laminae, down by
    spinous_slope × pitch, its tip spinous_tip mm behind the canal centre yc) and both
    transverse processes (reaching transverse_reach mm to each side). Mm."""
    tubes = polyline([[zi, yc + CANAL_R + 4.0, 0.0], [zi + spinous_slope * pitch, yc + spinous_tip, 0.0]], [4.5, 3.5])
    for side in (-1.0, 1.0):
        tubes += polyline([[zi, yc, side * (CANAL_R + 4.0)], [zi - 2.0, yc + 6.0, side * transverse_reach]], [4.5, 3.5])
    return tubes


def paint_spine(cv: Canvas, b: Body, hu, build: BoneBuild):
    pitch = b.p.vertebra_pitch
    processes = []
    for i in LEVELS:
        zi = level_z(b, i)
        # Bodies grow from ~ 25 × 17 mm (C) to ~ 45 × 33 mm (L) in width × depth.
        sc = 0.7 + 0.6 * float(np.clip((i + 7) / 24.0, 0.0, 1.0))
        yc = paint_vertebra(cv, hu, zi, float(b.spine_y(zi)), sc, pitch, cortex_mm=build.vertebra_cortex_mm,
                            posterior_fraction=build.posterior_fraction)
        # Thoracic spinous processes slope steeply down over the next level; transverse
        # processes are long in the thorax (rib tubercles), short in the neck and lumbar spine.
        thoracic = 0 <= i < 12
        processes += process_tubes(zi, yc, pitch, spinous_slope=0.9 if thoracic else 0.3, spinous_tip=26.0,
                                   transverse_reach=30.0 if thoracic else 22.0)
    cv.paint_tubes(processes, [(Tissue.CORTICAL, build.posterior_fraction * hu[Tissue.CORTICAL], 0.0)])
