"""v2 mediastinum: fat between the lungs, the heart (myocardium, four chambers, epicardial
fat) and the great vessels (aorta, pulmonary trunk, SVC, IVC, brachiocephalic vessels),
with IV contrast in a fraction of cases. Patient mm."""
from __future__ import annotations

import math

import numpy as np

from .canvas import Canvas
from .habitus import Body
from .lungs import hilum, trachea_y
from .params import blood_hu
from .shapes import ellipse_sd, oriented_ellipsoid_sd, polyline
from .tissues import Tissue

HEART_AXES = (60.0, 48.0, 42.0)  # semi-axes: long, antero-posterior short, the other short


def paint_mediastinal_fat(cv: Canvas, b: Body, hu):
    """Fat filling the mediastinum from the thoracic inlet to the diaphragm (lungs, heart
    and vessels are painted over it)."""
    half_w = 38.0 + 0.5 * b.p.fat_mm
    top = b.sternum_top - 10.0

    def fat(z, y, x):
        yc = 0.5 * (b.front_y(z) + b.spine_y(z))
        return np.maximum(ellipse_sd((y - yc, x), (0.42 * b.ah, half_w), amin=half_w),
                          np.maximum(top - z, b.diaphragm_sd(z, y, x)))

    cv.paint_sd(((top, -300, -half_w), (b.dome_l + 60, 300, half_w)), fat, Tissue.FAT, hu[Tissue.FAT])


class Heart:
    """Placement of the heart: centre (z, y, x), frame rows (long axis toward the apex,
    anterior, inferior-ish) and semi-axes."""

    def __init__(self, b: Body):
        p = b.p
        self.axes = np.array(HEART_AXES) * p.heart_scale * (0.8 + 0.2 * p.half_w / 140.0)
        yc = -0.25 * b.ah + p.heart_offset[0]
        xc = 0.18 * b.aw + p.heart_offset[1]
        zc = float(np.asarray(b.diaphragm_z(yc, xc)[0])) - 0.55 * self.axes[1]  # resting on the diaphragm
        self.centre = np.array([zc, yc, xc])
        # Long axis points left, anterior and down (apex on the left dome).
        yaw, tilt = math.radians(p.heart_yaw_deg), math.radians(p.heart_tilt_deg)
        e1 = np.array([math.sin(tilt), -math.sin(yaw) * math.cos(tilt), math.cos(yaw) * math.cos(tilt)])
        ant = np.array([0.0, -1.0, 0.0]) - e1 * -e1[1]  # anterior, made orthogonal to e1
        ant /= np.linalg.norm(ant)
        self.frame = np.stack([e1, ant, np.cross(e1, ant)])

    def point(self, l1: float, l2: float, l3: float) -> np.ndarray:
        """Patient (z, y, x) of local coordinates given as fractions of the semi-axes."""
        return self.centre + (np.array([l1, l2, l3]) * self.axes) @ self.frame


def paint_heart(cv: Canvas, b: Body, hu, h: Heart):
    """Epicardial fat, myocardium, then the chambers (left: LV, LA; right: RV, RA)."""
    a = h.axes
    dia = lambda z, y, x: b.diaphragm_sd(z, y, x) - 6.0  # noqa: E731 (inferior wall flattened on the diaphragm)

    def shell(z, y, x, grow=0.0):
        return np.maximum(oriented_ellipsoid_sd(z, y, x, h.centre, h.frame, a + grow), dia(z, y, x))

    r = float(a.max()) + b.p.epicardial_fat + 5.0
    box = (tuple(h.centre - r), tuple(h.centre + r))
    cv.paint_sd(box, lambda z, y, x: shell(z, y, x, b.p.epicardial_fat), Tissue.FAT, hu[Tissue.FAT])
    cv.paint_sd(box, shell, Tissue.HEART, hu[Tissue.HEART])
    # Chambers: (centre in semi-axis fractions, semi-axes in fractions, side). The LV wall is
    # ~10 mm, the RV's ~4 mm; the RV wraps the septum anteriorly.
    lv_c, lv_ax = (0.12, -0.12, 0.0), (0.62, 0.5, 0.55)
    chambers = [(lv_c, lv_ax, "left"), ((-0.05, 0.52, 0.05), (0.62, 0.3, 0.62), "right"),
                ((-0.72, -0.42, -0.2), (0.32, 0.4, 0.45), "left"), ((-0.6, 0.2, 0.35), (0.35, 0.42, 0.45), "right")]
    lv = lambda z, y, x: oriented_ellipsoid_sd(z, y, x, h.point(*lv_c), h.frame, np.array(lv_ax) * a)  # noqa: E731
    for i, (c, ax, side) in enumerate(chambers):
        def chamber(z, y, x, c=c, ax=ax, i=i):
            sd = oriented_ellipsoid_sd(z, y, x, h.point(*c), h.frame, np.array(ax) * a)
            sd = np.maximum(sd, shell(z, y, x) + 3.5)
            return sd if i == 0 else np.maximum(sd, 9.0 - lv(z, y, x))  # the septum and LV wall stay muscle
        cv.paint_sd(box, chamber, Tissue.BLOOD, blood_hu(b.p, side))


def paint_great_vessels(cv: Canvas, b: Body, hu, h: Heart):
    """Aorta (ascending, arch, descending, abdominal), its arch branches, pulmonary trunk and
    arteries, SVC with the brachiocephalic veins, IVC."""
    p = b.p
    zc, yc, xc = h.centre
    top = h.point(-0.7, 0.0, 0.0)  # the base of the heart
    r_asc, r_desc = p.aorta_r
    left, right, svc = (blood_hu(p, s) for s in ("left", "right", "svc"))
    # Pulmonary trunk: from the right ventricle's outflow up, left and back to both hila.
    outflow = h.point(-0.3, 0.75, -0.1)
    bif = np.array([b.carina_z + 12.0, yc + 8.0, 10.0])
    pulm = polyline([outflow, bif], [p.trunk_r, p.trunk_r - 1.0])
    for side in (-1.0, 1.0):
        pulm += polyline([bif, hilum(b, side)], [0.7 * p.trunk_r, 0.5 * p.trunk_r])
    # Aorta: ascending on the right, arch over the left bronchus, descending left of the spine.
    z_arch = b.carina_z - 25.0
    asc = np.array([z_arch + 15.0, yc - 5.0, -8.0])
    desc_y = lambda z: float(b.spine_y(z)) - 0.8 * r_desc - 16.0  # noqa: E731
    desc = np.array([z_arch + 15.0, desc_y(z_arch), 22.0])
    arch = [0.5 * (asc + desc) + np.array([-25.0 * math.sin(t), *(0.5 * (desc - asc)[1:] * -math.cos(t))])
            for t in np.linspace(0, math.pi, 7)]
    down = [np.array([z, desc_y(z), 22.0 - 18.0 * np.clip((z - desc[0]) / 250.0, 0, 1)])
            for z in np.linspace(desc[0] + 40.0, b.apex_z + 700.0, 6)]
    aorta = polyline([top, asc] + arch + down, [r_asc, r_asc] + list(np.linspace(r_asc, r_desc, 7)) + [r_desc] * 6)
    neck_z = b.apex_z - 80.0
    branches = []
    for t, x_top, rad in ((1, -28.0, 6.5), (2, -10.0, 4.5), (3, 28.0, 5.0)):  # brachiocephalic, carotid, subclavian
        branches += polyline([arch[t], np.array([neck_z, arch[t][1] - 10.0, x_top])], [rad, 0.8 * rad])
    # Veins: SVC right of the ascending aorta from the brachiocephalic confluence to the RA.
    svc_top = np.array([b.apex_z + 25.0, yc - 10.0, -8.0 - r_asc - 12.0])
    ra = h.point(-0.6, 0.2, 0.35)
    veins = polyline([svc_top, np.array([ra[0] - 25.0, ra[1], svc_top[2]]), ra], [10.0, 10.0, 9.0])
    bcv = polyline([np.array([b.apex_z - 10.0, svc_top[1] - 5.0, 60.0]), svc_top], [7.0, 8.0])
    bcv += polyline([np.array([b.apex_z - 30.0, svc_top[1], -50.0]), svc_top], [7.0, 8.0])
    ivc_y = lambda z: float(b.spine_y(z)) - 35.0  # noqa: E731
    ivc = polyline([h.point(-0.2, 0.1, 0.8)] + [np.array([z, ivc_y(z), -28.0]) for z in
                                                (zc + 60.0, zc + 200.0, b.apex_z + 700.0)], [12.0, 12.0, 11.0, 11.0])
    # With contrast the IVC carries unenhanced blood from the legs mixed with recirculation.
    ivc_hu = 0.5 * (hu[Tissue.BLOOD] + right)
    for segs, value in ((aorta + branches, left), (pulm, right), (veins + bcv, svc), (ivc, ivc_hu)):
        cv.paint_tubes(segs, [(Tissue.BLOOD, value, 0.0)])
    # Esophagus: behind the trachea and the left atrium, down to the stomach.
    eso = polyline([np.array([neck_z, float(trachea_y(b, neck_z)) + 15.0, -3.0]),
                    np.array([b.carina_z, float(trachea_y(b, b.carina_z)) + 16.0, 6.0]),
                    np.array([b.dome_l + 15.0, float(b.spine_y(b.dome_l)) - 30.0, 30.0])], [8.0, 8.0, 8.0])
    cv.paint_tubes(eso, [(Tissue.MUSCLE, hu[Tissue.MUSCLE], 0.0)])
