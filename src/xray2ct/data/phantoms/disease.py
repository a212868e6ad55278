"""v2 disease and devices, each in a fraction of phantoms (`params`): nodules and masses,
consolidation, atelectasis, dependent pleural effusion, emphysematous bullae (the density
drop is in `lungs`); a pacemaker with its lead, a central venous line. Patient mm."""
from __future__ import annotations

import numpy as np

from .canvas import Canvas
from .habitus import Body
from .lungs import lung_sd
from .mediastinum import Heart
from .shapes import ellipse_sd, polyline, smoothstep
from .tissues import Tissue


def _lung_point(rng: np.random.Generator, b: Body, upper: float = 0.0) -> np.ndarray:
    """A random (z, y, x) in the lung fields; upper > 0 favours the upper zones."""
    f = rng.uniform(0.15, 0.9) ** (1.0 + upper)
    z = b.apex_z + 25.0 + f * (b.dome_r - b.apex_z - 35.0)
    theta = rng.uniform(0.35, 2.7) * (1 if rng.uniform() < 0.5 else -1)
    rim = b.cavity_point(z, abs(theta))
    cy = float(b.lean(z)[0])
    frac = rng.uniform(0.55, 0.9)
    return np.array([z, cy + frac * (rim[1] - cy), np.sign(theta) * frac * rim[2]])


def draw_lesions(rng: np.random.Generator, b: Body) -> list[tuple]:
    """[(kind, centre (z, y, x), semi-axes (z, y, x), HU)] of this phantom's lung disease."""
    u = rng.uniform
    out = []
    for kind in b.p.diseases:
        if kind == "nodules":  # 1–5 solid nodules, 6–30 mm (Fleischner sizes)
            for _ in range(int(rng.integers(1, 6))):
                r = u(3.0, 15.0)
                out.append(("solid", _lung_point(rng, b), (r, r, r), u(-10.0, 60.0)))
        elif kind == "mass":  # > 3 cm
            r = u(15.0, 35.0)
            out.append(("solid", _lung_point(rng, b), (r, 0.9 * r, 1.1 * r), u(20.0, 50.0)))
        elif kind == "consolidation":  # airspace disease, lower lobes more often
            out.append(("solid", _lung_point(rng, b, upper=-0.5), tuple(u(25.0, 55.0, 3)), u(-150.0, 40.0)))
        elif kind == "atelectasis":  # plate-like, basal and posterior
            side = 1 if u() < 0.5 else -1
            z = b.dome_r - u(10.0, 40.0)
            cy, _, post, cw = (float(v) for v in b.cavity(z))
            out.append(("solid", np.array([z, cy + 0.6 * post, side * 0.5 * cw]), (u(6.0, 14.0), u(25.0, 45.0),
                                                                                    u(30.0, 55.0)), u(0.0, 50.0)))
        elif kind == "effusion":  # fluid layer behind the lung, one or both sides
            sides = ((-1.0,), (1.0,), (-1.0, 1.0))[int(rng.integers(0, 3))]
            for side in sides:
                out.append(("effusion", np.array([0.0, 0.0, side]), (u(15.0, 70.0), 0.0, 0.0), 0.0))
        elif kind == "emphysema":  # bullae in the upper zones
            for _ in range(int(rng.integers(1, 5))):
                r = u(8.0, 25.0)
                out.append(("bulla", _lung_point(rng, b, upper=1.0), (r, r, r), u(-1000.0, -970.0)))
    return out


def paint_disease(cv: Canvas, b: Body, hu, lesions, lungs):
    """Lesions inside the lungs (masked by their occupancy); effusions fill the dependent,
    posterior lung base."""
    for kind, c, ax, value in lesions:
        if kind == "effusion":
            _paint_effusion(cv, b, float(c[2]), ax[0], hu)
            continue
        r = max(ax)
        reg = cv.region(tuple(c - r), tuple(c + r))
        if reg is None:
            continue
        sl, z, y, x = reg
        occ = cv.occupancy(ellipse_sd((z - c[0], y - c[1], x - c[2]), ax, amin=min(ax))) * lungs[sl]
        cv.paint(sl, occ, Tissue.LUNG if kind == "bulla" else Tissue.LESION, value)


def _paint_effusion(cv: Canvas, b: Body, side: float, depth: float, hu):
    """Supine: fluid lies along the posterior chest wall, deepest at the base (a meniscus)."""
    top = b.apex_z + 0.35 * (b.dome_r - b.apex_z)

    def fluid(z, y, x):
        cy, _, post, _ = b.cavity(z)
        level = cy + post - depth * smoothstep((z - top) / (b.dome_r - top))
        return np.maximum(lung_sd(b, z, y, x, side), level - y)

    box = ((top, -50, min(0.0, side * 400)), (b.dome_l + 150, 400, max(0.0, side * 400)))
    cv.paint_sd(box, fluid, Tissue.EFFUSION, hu[Tissue.EFFUSION])


def paint_devices(cv: Canvas, b: Body, hu, h: Heart):
    """A pacemaker (generator under the left clavicle, a lead through the SVC into the right
    ventricle) and/or a central venous line from the jugular vein to the cavo-atrial junction."""
    p = b.p
    metal = hu[Tissue.METAL]
    svc_top = np.array([b.apex_z + 25.0, h.centre[1] - 10.0, -35.0])
    ra = h.point(-0.6, 0.2, 0.35)
    if p.pacemaker:
        z = b.sternum_top + 25.0
        g = np.array([z, float(b.front_y(z) + 0.5 * b.fat(z)) + 4.0, 75.0])
        cv.paint_sd((tuple(g - 30), tuple(g + 30)),
                    lambda z, y, x: ellipse_sd((z - g[0], y - g[1], x - g[2]), (20.0, 4.0, 25.0), amin=4.0),
                    Tissue.METAL, metal)
        lead = polyline([g, np.array([b.sternum_top - 5.0, -0.2 * b.ah, 40.0]), svc_top, ra,
                         h.point(0.55, 0.45, 0.0)], [1.2] * 5)
        cv.paint_tubes(lead, [(Tissue.METAL, metal, 0.0)])
    if p.line:
        line = polyline([np.array([b.apex_z - 90.0, -0.3 * p.neck[0], -30.0]), svc_top, ra], [1.0] * 3)
        cv.paint_tubes(line, [(Tissue.METAL, 0.5 * metal, 0.0)])
