"""v2 body habitus: the torso's outline from neck to upper abdomen, subcutaneous fat, the
chest wall, breasts, and the shared landmarks (apex, domes, carina, spine line) the other
organs are placed by. Patient mm, frames as in `params`."""
from __future__ import annotations

import numpy as np

from .canvas import Canvas
from .params import PhantomParamsV2
from .shapes import ellipse_sd, smoothstep, superellipse_sd
from .tissues import Tissue


class Body:
    """Outline, cavity, diaphragm and spine line of one phantom: functions of z (and y, x)."""

    def __init__(self, p: PhantomParamsV2):
        self.p = p
        self.apex_z = p.apex_z
        self.shoulder_z = self.apex_z + 15.0  # top of the full-width chest; the neck narrows above
        # Inspiration widens the chest a little and lowers the domes 3–6 cm.
        self.aw = p.half_w * (1 + 0.02 * p.breath)
        self.ah = p.half_h * (1 + 0.04 * p.breath)
        self.dome_r = self.apex_z + p.apex_to_dome + 45.0 * p.breath
        self.dome_l = self.dome_r + p.dome_drop
        self.carina_z = self.apex_z + 90.0  # T4–T5, about 9 cm below the apices
        self.sternum_top = self.apex_z + 32.0  # jugular notch at T2
        self.sternum_bottom = self.sternum_top + 165.0
        self.thorax_mid = self.apex_z + 130.0

    def lean(self, z):
        """Fat-free outline at z: centre y, anterior and posterior semi-axes, half-width."""
        p = self.p
        neck = smoothstep((self.shoulder_z - z) / 45.0)  # 1 in the neck, 0 in the chest
        chest = smoothstep((z - self.shoulder_z) / 120.0)  # the upper chest is narrower
        belly = smoothstep((z - self.dome_r) / 80.0)
        aw = self.aw * (0.88 + 0.12 * chest)
        ant = self.ah * (0.9 + 0.1 * chest)
        post = ant * p.back_flat
        # Centre the chest's box on y = 0 (as `prepare` centres the body); the neck lies
        # posterior; a belly bulges forward only.
        cy = 0.5 * (ant - post) * (1 - neck) + 15.0 * neck
        ant = ant * (1 + (p.belly - 1) * belly)
        aw = aw + (p.neck[1] - aw) * neck
        ant = ant + (p.neck[0] - ant) * neck
        post = post + (p.neck[0] - post) * neck
        return cy, ant, post, aw

    def centring_shift(self) -> float:
        """y offset that centres the body's antero-posterior box (breasts and belly included)
        on the cube, as `prepare` does with a real CT's body."""
        zs = np.linspace(-self.p.scan_len / 2, self.p.scan_len / 2, 33)
        cy, ant, post, _ = self.lean(zs)
        front = cy - ant - self.fat(zs)
        front = min(float(front.min()), float(self.front_y(self.apex_z + 160.0)) - self.p.breast[0])
        back = float((cy + post + self.fat(zs)).max())
        return -0.5 * (front + back)

    def fat(self, z):
        """Subcutaneous fat thickness at z (thinner over the neck)."""
        return self.p.fat_mm * (1 - 0.6 * smoothstep((self.shoulder_z - z) / 45.0))

    def outline_sd(self, z, y, x, grow=0.0):
        """Signed distance to the skin (grow > 0: outside it, < 0: inside)."""
        cy, ant, post, aw = self.lean(z)
        f = self.fat(z) + grow
        return superellipse_sd(y - cy, x, ant + f, post + f, aw + f, self.p.power)

    def cavity(self, z):
        """Inner surface of the chest wall (ribs just outside): centre y, ant, post, half-width."""
        cy, ant, post, aw = self.lean(z)
        w = self.p.wall_mm
        return cy, ant - w, post - 1.3 * w, aw - w

    def cavity_sd(self, z, y, x, grow=0.0):
        cy, ant, post, aw = self.cavity(z)
        return superellipse_sd(y - cy, x, ant + grow, post + grow, aw + grow, self.p.power)

    def cavity_point(self, z: float, theta: float, grow: float = 0.0) -> np.ndarray:
        """(z, y, x) on the cavity outline grown by `grow` mm at angle theta (0 = posterior
        midline, π = anterior midline, x > 0 for theta in (0, π))."""
        cy, ant, post, aw = (float(v) for v in self.cavity(z))
        c, s = np.cos(theta), np.sin(theta)
        e = 2.0 / self.p.power
        a = post if c > 0 else ant
        return np.array([z, cy + (a + grow) * np.sign(c) * abs(c) ** e, (aw + grow) * np.sign(s) * abs(s) ** e])

    def diaphragm_z(self, y, x):
        """Height of the diaphragm's upper surface (two paraboloid domes, the right one
        usually higher) and its slope (dz/dy, dz/dx)."""
        yd = -0.15 * self.ah  # dome tops a little anterior; the posterior recesses go deepest
        xo = 0.42 * self.aw
        zr = self.dome_r + (x + xo) ** 2 / 140.0 + (y - yd) ** 2 / 130.0
        zl = self.dome_l + (x - xo) ** 2 / 140.0 + (y - yd) ** 2 / 130.0
        right = zr < zl
        return np.where(right, zr, zl), (y - yd) / 65.0, np.where(right, x + xo, x - xo) / 70.0

    def diaphragm_sd(self, z, y, x):
        """Signed distance to the diaphragm's upper surface (negative above it, lung side)."""
        zd, gy, gx = self.diaphragm_z(y, x)
        return (z - zd) / np.sqrt(1.0 + gx**2 + gy**2)

    def spine_y(self, z):
        """y of the vertebral-body centre: 55 mm in front of the back's lean surface (the
        spinous processes end just under the fat), bowed backward by the thoracic kyphosis."""
        cy, _, post, _ = self.lean(z)
        bow = 1.0 - np.clip((np.asarray(z) - self.thorax_mid) / 170.0, -1, 1) ** 2
        return cy + post - 55.0 + self.p.kyphosis_mm * (bow - 1.0)

    def front_y(self, z):
        """y of the skin's anterior midline."""
        cy, ant, _, _ = self.lean(z)
        return cy - ant - self.fat(z)


def paint_body(cv: Canvas, b: Body, hu):
    """Skin-deep fat, the muscle and soft tissue inside it, and breasts."""
    sl, z, y, x = cv.region()
    skin = b.outline_sd(z, y, x)
    cv.paint(sl, cv.occupancy(skin), Tissue.FAT, hu[Tissue.FAT])
    cv.paint(sl, cv.occupancy(skin + b.fat(z)), Tissue.MUSCLE, hu[Tissue.MUSCLE])  # the fascia: skin offset inward
    proj, radius, fall = b.p.breast
    if proj:
        zc = b.apex_z + 160.0  # 4th–6th rib level
        for side in (-1.0, 1.0):
            xc = side * (0.45 * b.aw + fall)  # supine: breasts fall laterally
            yc = float(b.front_y(zc))
            box = ((zc - radius, yc - proj - 5, xc - radius - 5), (zc + radius, yc + 60, xc + radius + 5))

            def breast(z, y, x, shrink=0.0, xc=xc, yc=yc):
                sd = ellipse_sd((z - zc, y - yc, x - xc), (radius - shrink, proj - shrink, radius - shrink),
                                amin=min(radius, proj) - shrink)
                return np.maximum(sd, -b.outline_sd(z, y, x, grow=-b.fat(z)))  # not into the chest wall

            cv.paint_sd(box, breast, Tissue.FAT, hu[Tissue.FAT])
            cv.paint_sd(box, lambda z, y, x, f=breast: f(z, y, x, shrink=0.35 * min(radius, proj)),
                        Tissue.BREAST, hu[Tissue.BREAST])
