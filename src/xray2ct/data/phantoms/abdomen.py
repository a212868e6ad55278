"""v2 upper abdomen under the two domes: bowel and visceral fat, liver, spleen, stomach
with its gas bubble, kidneys in perirenal fat, colon gas at the lower edge. Patient mm."""
from __future__ import annotations

import numpy as np

from .canvas import Canvas
from .habitus import Body
from .shapes import ellipse_sd, oriented_ellipsoid_sd, rotation_frame
from .tissues import Tissue


def enhanced(b: Body, tissue: Tissue, hu, share: float) -> float:
    """HU of an organ: unenhanced, plus `share` × the phase's organ enhancement with contrast
    (portal venous liver +50–80 HU; Bae, Radiology 2010)."""
    return hu[tissue] + share * b.p.enhancement * b.p.contrast


def colon_pockets(rng: np.random.Generator, b: Body):
    """Gas pockets (centre (z, y, x), radius) at the hepatic and splenic flexures and the
    transverse colon, anterior and below the liver and stomach."""
    pockets = []
    for _ in range(b.p.colon_gas):
        x = rng.uniform(-0.7, 0.7) * b.aw
        z = max(b.dome_r, b.dome_l) + rng.uniform(90.0, 170.0)
        pockets.append((np.array([z, -0.45 * b.ah * rng.uniform(0.5, 1.0), x]), rng.uniform(12.0, 32.0)))
    return pockets


def paint_abdomen(cv: Canvas, b: Body, hu, pockets):
    p = b.p
    # One distance computation for the abdominal cavity serves bowel, fat, liver and stomach.
    reg = cv.region((min(b.dome_r, b.dome_l) - 10.0, -600, -600), (600, 600, 600))
    if reg is None:
        return
    sl, z, y, x = reg
    cav = b.cavity_sd(z, y, x, grow=2.0)
    below = np.maximum(-b.diaphragm_sd(z, y, x) + 2.0, cav)
    # Bowel and mesentery fill the abdominal cavity, mixed with visceral fat (below a voxel's size).
    bowel = hu[Tissue.BOWEL] + p.visceral_fat * (hu[Tissue.FAT] - hu[Tissue.BOWEL])
    cv.paint(sl, cv.occupancy(below), Tissue.BOWEL, bowel)
    omentum = 2.0 + 0.6 * p.fat_mm  # fat layer inside the abdominal wall
    cv.paint(sl, cv.occupancy(np.maximum(below, omentum - np.abs(cav))), Tissue.FAT, hu[Tissue.FAT])
    _paint_kidneys(cv, b, hu)
    s = p.liver_scale
    c = (b.dome_r + 75.0 * s, 5.0, -0.3 * b.aw)
    ax = (115.0 * s, 0.95 * b.ah, 0.78 * b.aw * s)
    liver = np.maximum(ellipse_sd((z - c[0], y - c[1], x - c[2]), ax, amin=min(ax)), np.maximum(below, x - 0.45 * b.aw))
    cv.paint(sl, cv.occupancy(liver), Tissue.LIVER, enhanced(b, Tissue.LIVER, hu, 0.4))
    # Spleen: posterolateral under the left dome, along the ribs (12 × 7 × 4 cm, scaled).
    cy, _, post, cw = (float(v) for v in b.cavity(b.dome_l + 60.0))
    sc = np.array([b.dome_l + 55.0, cy + 0.55 * post, cw - 35.0])
    frame = rotation_frame([0.3, 0.7, 0.6])
    sax = np.array([60.0, 40.0, 20.0]) * p.spleen_scale
    cv.paint_sd((tuple(sc - 70), tuple(sc + 70)),
                lambda z, y, x: np.maximum(oriented_ellipsoid_sd(z, y, x, sc, frame, sax),
                                           -b.diaphragm_sd(z, y, x) + 1.0),
                Tissue.SPLEEN, enhanced(b, Tissue.SPLEEN, hu, 0.5))
    # Stomach under the left dome; supine, its gas bubble floats anteriorly (small y).
    scale, gas = p.stomach
    c = (b.dome_l + 45.0, -0.3 * b.ah, 0.42 * b.aw)
    ax = tuple(a * scale for a in (50.0, 38.0, 42.0))
    wall = ellipse_sd((z - c[0], y - c[1], x - c[2]), ax, amin=min(ax))
    cv.paint(sl, cv.occupancy(np.maximum(wall, below + 2.0)), Tissue.STOMACH, hu[Tissue.STOMACH])
    y_gas = c[1] - ax[1] + 2 * ax[1] * gas
    cv.paint(sl, cv.occupancy(np.maximum(np.maximum(wall + 4.0, below + 6.0), y - y_gas)), Tissue.GAS, hu[Tissue.GAS])
    for c, r in pockets:
        cv.paint_sd((tuple(c - r), tuple(c + r)),
                    lambda z, y, x, c=c, r=r: np.maximum(ellipse_sd((z - c[0], y - c[1], x - c[2]), (r, 0.7 * r, r),
                                                                    amin=0.7 * r),
                                                         -b.diaphragm_sd(z, y, x) + 8.0),
                    Tissue.GAS, hu[Tissue.GAS])


def _paint_kidneys(cv: Canvas, b: Body, hu):
    """Kidneys beside the spine (upper poles at T12, the right ~1.5 cm lower), in perirenal fat."""
    grow = 6.0 + 0.3 * b.p.fat_mm
    for side, dome in ((-1.0, b.dome_r + 15.0), (1.0, b.dome_l)):
        z = dome + 100.0
        c = np.array([z, float(b.spine_y(z)) - 5.0, side * 62.0])
        frame = rotation_frame([1.0, 0.25, -side * 0.3])  # upper pole medial and posterior
        ax = np.array([55.0, 28.0, 25.0])
        box = (tuple(c - 70), tuple(c + 70))
        cv.paint_sd(box, lambda z, y, x, c=c, f=frame: oriented_ellipsoid_sd(z, y, x, c, f, ax + grow),
                    Tissue.FAT, hu[Tissue.FAT])
        cv.paint_sd(box, lambda z, y, x, c=c, f=frame: oriented_ellipsoid_sd(z, y, x, c, f, ax),
                    Tissue.KIDNEY, enhanced(b, Tissue.KIDNEY, hu, 0.7))
