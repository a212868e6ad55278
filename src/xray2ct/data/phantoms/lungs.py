"""v2 lungs: parenchyma (dependent and perihilar density, emphysema), pulmonary vessel trees
whose calibre and density fall toward the periphery, and the airways. Patient mm. v1 builds its
vessel trees and airways with the same `vessel_segments` and `airway_tubes`, passing its own
constants and landmarks."""
from __future__ import annotations

import math

import numpy as np

from .canvas import Canvas
from .habitus import Body
from .params import blood_hu
from .shapes import ellipse_sd, polyline, smoothstep
from .tissues import Tissue

VESSEL_ROOTS = 8  # pulmonary vessel trees per lung
VESSEL_GENERATIONS = 6  # each branch splits in two: 2**6 - 1 segments per tree


def hilum(b: Body, side: float) -> np.ndarray:
    """(z, y, x) of the right (side -1) or left (+1) hilum, just below the carina."""
    return np.array([b.carina_z + 20.0, -0.1 * b.ah, side * (b.p.mediastinum_mm + 30.0)])


def shared_sd(b: Body, z, y, x):
    """Signed distance to the space both lungs share: chest cavity above the diaphragm,
    outside the wedge of paraspinal muscle behind the vertebral bodies."""
    sd = np.maximum(b.cavity_sd(z, y, x), b.diaphragm_sd(z, y, x))
    ys = b.spine_y(z)
    spine_wedge = np.maximum(np.abs(x) - 22.0 - 0.6 * np.maximum(y - ys, 0.0), ys - 5.0 - y)
    return np.maximum(sd, -spine_wedge)


def lung_sd(b: Body, z, y, x, side: float, shared=None):
    """Signed distance to one lung: the shared space, lateral of the mediastinum, under a
    dome whose top is the apex. `shared`: `shared_sd` of the same points, if computed."""
    shared = shared_sd(b, z, y, x) if shared is None else shared
    # The upper mediastinum (trachea, great vessels) is wider than the space in front of the heart.
    med = b.p.mediastinum_mm + 12.0 * smoothstep((b.carina_z + 15.0 - z) / 40.0)
    cy, _, post, cw = (float(v) for v in b.cavity(b.dome_r))
    dome = ellipse_sd((z - (b.apex_z + 240.0), y - cy, x - side * 0.3 * cw), (240.0, post + 10.0, 0.8 * cw),
                      amin=0.8 * cw)
    return np.maximum(np.maximum(shared, dome), med - side * x)


def paint_lungs(cv: Canvas, b: Body, hu, emphysema: bool):
    """Both lungs; returns their occupancy over the whole grid (keeps vessels and disease inside)."""
    p = b.p
    # The posterior recesses reach ~ 11 cm below the dome tops (`Body.diaphragm_z`).
    reg = cv.region((b.apex_z - 10, -400, -400), (max(b.dome_r, b.dome_l) + 130, 400, 400))
    full = np.zeros_like(cv.hu)
    if reg is None:
        return full
    sl, z, y, x = reg
    shared = shared_sd(b, z, y, x)
    occ = np.zeros(np.broadcast_shapes(z.shape, y.shape), np.float32)
    value = hu[Tissue.LUNG] + p.lung_gradient_hu * (y / b.ah)  # supine: dependent lung is denser
    for side in (-1.0, 1.0):
        np.maximum(occ, cv.occupancy(lung_sd(b, z, y, x, side, shared)), out=occ)
        h = hilum(b, side)
        dist2 = (z - h[0]) ** 2 + (y - h[1]) ** 2 + (x - h[2]) ** 2
        value = value + p.perihilar_hu * np.exp(-dist2 / (2 * 45.0**2))  # denser near the hila
    if emphysema:  # centrilobular emphysema: lower density, upper zones first
        value = value - 70.0 * (1 - smoothstep((z - b.apex_z) / (b.dome_r - b.apex_z)))
    cv.paint(sl, occ, Tissue.LUNG, value)
    full[sl] = occ
    return full


def vessel_segments(rng: np.random.Generator, hila, *, roots: int = VESSEL_ROOTS,
                    generations: int = VESSEL_GENERATIONS, root_r_mm=(4.0, 5.5),
                    length_ratio: float = 0.75, radius_ratio: float = 0.66):
    """Random branching trees from each hilum: radius and length shrink each generation, so
    calibre and the number of vessels per volume fall toward the periphery.

    Args:
        hila: (z, y, x) mm of the right then the left hilum (`hilum`).
        roots: trees per lung.
        generations: tree depth; each branch splits in two, 2**generations - 1 segments a tree.
        root_r_mm: (low, high) of the uniform radius of a tree's first segment.
        length_ratio, radius_ratio: a child branch's length and radius over its parent's.

    The defaults are v2's. v1 passes every one of its own, so retuning v2 here cannot change
    v1's output, which stays byte-identical per seed."""
    segs = []
    for side, root in zip((-1.0, 1.0), hila):
        for k in range(roots):
            # Spread the roots over the lobes: from up-lateral to down-lateral.
            phi = math.pi * (k + rng.uniform(0.2, 0.8)) / roots
            d0 = np.array([-math.cos(phi), rng.uniform(-0.6, 0.6), side * (0.4 + math.sin(phi))])
            stack = [(root, d0 / np.linalg.norm(d0), rng.uniform(25.0, 35.0), rng.uniform(*root_r_mm), 0)]
            while stack:
                a, d, length, r, gen = stack.pop()
                end = a + d * length
                segs.append((a, end, r, 0.85 * r))
                if gen + 1 < generations:
                    for _ in range(2):
                        nd = d + rng.normal(0.0, 0.45, 3)
                        stack.append((end, nd / np.linalg.norm(nd), length_ratio * length, radius_ratio * r, gen + 1))
    return segs


def paint_vessels(cv: Canvas, b: Body, hu, segments, lungs):
    """Pulmonary vessels, inside the lungs only; enhanced like the right heart with contrast."""
    value = hu[Tissue.VESSEL] + (blood_hu(b.p, "right") - hu[Tissue.BLOOD]) if b.p.contrast else hu[Tissue.VESSEL]
    cv.paint_tubes(segments, [(Tissue.VESSEL, value, 0.0)], mask=lungs)


def trachea_y(b: Body, z):
    return b.spine_y(z) - 32.0


def airway_tubes(top, carina, hila) -> list:
    """Capsules of the trachea from `top` to the `carina`, the main bronchi to just behind each
    hilum, and the upper and lower lobe bronchi; points (z, y, x) mm, `hila` right then left.
    v1 builds its airways here too, from its own landmarks."""
    segs = polyline([top, carina], [9.0, 8.5])
    for side, root in zip((-1.0, 1.0), hila):
        hil = root + np.array([0.0, 12.0, 0.0])  # bronchi run behind the arteries
        segs += polyline([carina, hil], [6.5, 5.5])
        for dz in (-35.0, 35.0):  # upper and lower lobe bronchi
            segs += polyline([hil, hil + np.array([dz, 5.0, side * 25.0])], [4.5, 3.0])
    return segs


def paint_airways(cv: Canvas, b: Body, hu):
    """Trachea from the neck to the carina, main and lobar bronchi."""
    car = np.array([b.carina_z, float(trachea_y(b, b.carina_z)), 0.0])
    top = np.array([b.apex_z - 400.0, float(trachea_y(b, b.apex_z - 60.0)), 0.0])
    segs = airway_tubes(top, car, [hilum(b, side) for side in (-1.0, 1.0)])
    cv.paint_tubes(segs, [(Tissue.GAS, hu[Tissue.GAS], 0.0)])
