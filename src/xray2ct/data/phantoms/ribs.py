"""v2 rib cage: twelve ribs per side from the spine round the chest wall, costal cartilage
to the sternum, and the sternum (manubrium, body). Patient mm. v1 builds its ribs with the same
`rib_tubes`, passing its own rib path and sternum."""
from __future__ import annotations

import math

import numpy as np

from .canvas import Canvas
from .habitus import Body
from .shapes import ellipse_sd, polyline, smoothstep
from .skeleton import BoneBuild
from .spine import level_z
from .tissues import Tissue

N_RIBS = 12  # per side
THETA_END = [2.75] * 7 + [2.6, 2.45, 2.3, 1.9, 1.5]  # how far round the chest each rib reaches (rad)
DROP = [0.45, 0.65, 0.85, 1, 1, 1, 1, 0.95, 0.9, 0.8, 0.6, 0.4]  # rib descent, × rib_drop


def rib_path(b: Body, k: int, side: float, n: int = 10) -> list[np.ndarray]:
    """Points of rib k (0 = first rib): head on vertebra k, tubercle on its transverse
    process, then round the chest wall from the rib angle, sloping down."""
    z_back = level_z(b, k) + 0.3 * b.p.vertebra_pitch
    drop = b.p.rib_drop * DROP[k]
    ys = float(b.spine_y(z_back))
    points = [np.array([z_back, ys + 6.0, side * 16.0]), np.array([z_back, ys + 28.0, side * 30.0])]
    _, _, _, cw0 = b.cavity(z_back)
    theta0 = math.asin(min(0.9, 48.0 / (float(cw0) + 6.0)))
    for f in np.linspace(0.0, 1.0, n):
        theta = theta0 + f * (THETA_END[k] - theta0)
        z = z_back + drop * ((theta - theta0) / (math.pi - theta0)) ** 1.3
        pt = b.cavity_point(z, theta, grow=6.0)
        points.append(np.array([pt[0], pt[1], side * abs(pt[2])]))
    return points


def sternum_y(b: Body, z):
    """y of the sternum's centre: just behind the anterior chest wall's fat and muscle."""
    return b.front_y(z) + b.fat(z) + 9.0


def rib_tubes(path, sternum_y, top: float, bottom: float, n_ribs: int = N_RIBS):
    """Capsules (bones, cartilage) of both sides' ribs, right side first; v1 builds its ribs
    here too, with its own path, sternum and count.

    Args:
        path: (k, side) -> points of rib k (0 = first rib), side -1 right, +1 left (`rib_path`).
        sternum_y: z -> y (mm) of the sternum's centre (`sternum_y`).
        top, bottom: z (mm) of the sternum's ends; the true ribs attach evenly between them.
        n_ribs: ribs per side.
    """
    bones, cartilage = [], []  # bones: cortical tubes with a cancellous core
    for side in (-1.0, 1.0):
        for k in range(n_ribs):
            pts = path(k, side)
            bones += polyline(pts, [5.0] * len(pts))
            if k < 7:  # true ribs reach the sternum through cartilage
                z_att = top + 15.0 + k * (bottom - top - 30.0) / 6
                end = np.array([z_att, float(sternum_y(z_att)), side * 13.0])
                mid = 0.5 * (pts[-1] + end) + np.array([0.0, -4.0, side * 8.0])
                cartilage += polyline([pts[-1], mid, end], [4.5, 4.5, 4.0])
    return bones, cartilage


def paint_ribs_and_sternum(cv: Canvas, b: Body, hu, build: BoneBuild):
    top, bottom = b.sternum_top, b.sternum_bottom
    bones, cartilage = rib_tubes(lambda k, side: rib_path(b, k, side), lambda z: sternum_y(b, z), top, bottom)
    cv.paint_tubes(cartilage, [(Tissue.CARTILAGE, hu[Tissue.CARTILAGE], 0.0)])
    cv.paint_tubes(bones, [(Tissue.CORTICAL, hu[Tissue.CORTICAL], 0.0),
                           (Tissue.CANCELLOUS, hu[Tissue.CANCELLOUS], build.rib_cortex_mm)])

    def sternum(z, y, x, shrink=0.0):
        half_w = 14.0 + 10.0 * smoothstep((top + 50.0 - z) / 30.0)  # the manubrium is wider
        sd = ellipse_sd((y - sternum_y(b, z), x), (6.5 - shrink, half_w - shrink), amin=6.5 - shrink)
        return np.maximum(sd, np.maximum(top - z, z - bottom) + shrink)

    box = ((top, -400, -30), (bottom, 100, 30))
    cv.paint_sd(box, sternum, Tissue.CORTICAL, hu[Tissue.CORTICAL])
    cv.paint_sd(box, lambda z, y, x: sternum(z, y, x, shrink=build.sternum_cortex_mm), Tissue.CANCELLOUS,
                hu[Tissue.CANCELLOUS])
