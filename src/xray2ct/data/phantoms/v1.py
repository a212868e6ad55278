"""Chest phantoms v1: one tidy adult torso with random proportions (the generator of the
bundled weights, kept byte-identical per seed).

Every structure is an analytic shape in patient millimetres (`shapes`), painted in
anatomical order (body, abdomen, lungs, vessels, heart, bones) onto the `Canvas`. Nothing
is drawn on the voxel grid itself, so one seed gives the same anatomy at any resolution,
and tubes thinner than a voxel keep their cross-section (they are widened to half a voxel
and dimmed by the area ratio) instead of vanishing, so ribs still show at 32³.

Frames (DESIGN.md): volume index (d, h, w) = head→feet, anterior→posterior, patient
right→left. `patient_mm` coordinates use the same axes, written (z, y, x) in the code:
z along d, y along h, x along w (x > 0 is the patient's left). The patient is placed in
the world frame (origin at the volume centre) with a small random shift and rotation
about d.

The vessel trees, airways, ribs and vertebrae come from v2's `lungs`, `ribs` and `spine`,
with v1's constants passed explicitly; `tests/test_phantoms.py` pins the output by seed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .canvas import Canvas
from .lungs import airway_tubes, vessel_segments
from .ribs import rib_tubes
from .shapes import ellipse_sd, polyline, smoothstep
from .spine import paint_vertebra, process_tubes
from .tissues import TEXTURE_HU, TISSUE_HU, Tissue

N_RIBS = 12  # per side
VESSEL_ROOTS = 8  # pulmonary vessel trees per lung
VESSEL_GENERATIONS = 5  # each branch splits in two: 2**5 - 1 segments per tree


@dataclass(frozen=True)
class PhantomParams:
    """The random anatomy of one phantom (mm in the patient frame, see module docstring)."""

    torso_w: float  # chest half-width (x semi-axis)
    torso_h: float  # chest half-depth (y semi-axis)
    fat_mm: float  # subcutaneous fat thickness
    shoulder_z: float  # top of the full-width chest; the neck narrows above it
    rotation_deg: float  # patient rotation about d, world vs patient frame
    shift_mm: tuple  # (z, y, x) patient offset from the volume centre
    breath: float  # 0 full expiration … 1 deep inspiration
    dome_right_z: float  # top of the right diaphragm dome at expiration
    dome_left_drop: float  # the left dome sits this much lower (toward the feet)
    mediastinum_mm: float  # half-width of the soft tissue between the lungs
    lung_gradient_hu: float  # supine patient: posterior (dependent) lung is denser
    heart_scale: float
    heart_offset: tuple  # (y, x) shift of the heart from its typical place
    heart_yaw_deg: float  # long axis turned from patient-left toward anterior
    kyphosis_mm: float  # posterior bow of the thoracic spine
    vertebra_pitch: float  # vertebral body + disc height
    rib_drop: float  # how far a mid rib descends from back to front
    stomach_gas: float  # fraction of the stomach depth filled with gas (anterior, supine)
    hu: dict  # Tissue -> HU of this phantom

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "PhantomParams":
        u = rng.uniform
        return cls(
            torso_w=130.0 * u(0.88, 1.12),
            torso_h=95.0 * u(0.88, 1.12),
            fat_mm=u(5.0, 22.0),
            shoulder_z=u(-125.0, -108.0),
            rotation_deg=u(-5.0, 5.0),
            shift_mm=tuple(u(-1, 1, 3) * np.array([12.0, 8.0, 8.0])),
            breath=u(0.0, 1.0),
            dome_right_z=u(20.0, 45.0),
            dome_left_drop=u(8.0, 25.0),
            mediastinum_mm=u(8.0, 18.0),
            lung_gradient_hu=u(20.0, 80.0),
            heart_scale=u(0.85, 1.15),
            heart_offset=(u(-10.0, 10.0), u(-10.0, 10.0)),
            heart_yaw_deg=u(20.0, 45.0),
            kyphosis_mm=u(4.0, 16.0),
            vertebra_pitch=u(22.0, 27.0),
            rib_drop=u(35.0, 65.0),
            stomach_gas=u(0.1, 0.4),
            hu={t: m + u(-j, j) for t, (m, j) in TISSUE_HU.items()},
        )


# --- anatomy helpers (patient mm) ------------------------------------------------------
class _Body:
    """Shape functions shared by several organs, derived from the parameters."""

    def __init__(self, p: PhantomParams):
        self.p = p
        self.aw = p.torso_w * (1 + 0.02 * p.breath)  # inspiration widens the chest a little
        self.ah = p.torso_h * (1 + 0.04 * p.breath)
        self.dome_r = p.dome_right_z + 20.0 * p.breath  # inspiration flattens/lowers the domes
        self.dome_l = self.dome_r + p.dome_left_drop
        self.carina_z = p.shoulder_z + 75.0
        self.sternum_top = p.shoulder_z + 12.0

    def outline(self, z):
        """Body ellipse at height z: centre y, semi-axes (y, x), fat thickness; arrays like z."""
        t = smoothstep((self.p.shoulder_z - z) / 45.0)  # 0 in the chest, 1 in the neck
        cy = 15.0 * t
        ah = self.ah + (52.0 - self.ah) * t
        aw = self.aw + (58.0 - self.aw) * t
        fat = self.p.fat_mm * (1 - 0.5 * t)
        return cy, ah, aw, fat

    def cavity(self, z):
        """Inner surface of the chest wall (ribs lie just outside it): centre y, semi-axes."""
        cy, ah, aw, fat = self.outline(z)
        return cy - 4.0, ah - fat - 10.0, aw - fat - 14.0

    def diaphragm_z(self, y, x):
        """Height of the diaphragm's upper surface (two paraboloid domes, the right one
        higher) and its slope (dz/dy, dz/dx)."""
        yd = -0.15 * self.ah  # dome tops a little anterior; the posterior recesses go deepest
        zr = self.dome_r + (x + 60.0) ** 2 / 140.0 + (y - yd) ** 2 / 130.0
        zl = self.dome_l + (x - 60.0) ** 2 / 140.0 + (y - yd) ** 2 / 130.0
        right = zr < zl
        return np.where(right, zr, zl), (y - yd) / 65.0, np.where(right, x + 60.0, x - 60.0) / 70.0

    def diaphragm_sd(self, z, y, x):
        """Signed distance to the diaphragm's upper surface (negative above it, lung side)."""
        zd, gy, gx = self.diaphragm_z(y, x)
        return (z - zd) / np.sqrt(1.0 + gx**2 + gy**2)

    def spine_y(self, z):
        """y of the vertebral-body centre: thoracic kyphosis bows the spine backward."""
        bow = 1.0 - np.clip(np.asarray(z) / 170.0, -1, 1) ** 2
        return self.ah - self.p.fat_mm - 50.0 + self.p.kyphosis_mm * (bow - 1.0)


# --- painters, in painting order --------------------------------------------------------
def _paint_body(cv: Canvas, b: _Body, hu):
    sl, z, y, x = cv.region()
    # The outline only changes with z in the neck taper: compute each distinct slice once.
    rows = np.stack(np.broadcast_arrays(*b.outline(z[:, 0, 0])), -1)  # (n, 4): cy, ah, aw, fat
    uniq, inv = np.unique(rows, axis=0, return_inverse=True)
    cy, ah, aw, fat = (v[:, None, None] for v in uniq.T.astype(np.float32))
    skin = cv.occupancy(ellipse_sd((y - cy, x), (ah, aw)))[inv.ravel()]
    fascia = cv.occupancy(ellipse_sd((y - cy, x), (ah - fat, aw - fat)))[inv.ravel()]
    cv.paint(sl, skin, Tissue.FAT, hu[Tissue.FAT])
    cv.paint(sl, fascia, Tissue.MUSCLE, hu[Tissue.MUSCLE])


def _paint_abdomen(cv: Canvas, b: _Body, hu):
    big = 400.0

    def below_diaphragm(z, y, x, margin=0.0):
        cy, ah, aw, fat = b.outline(z)
        wall = ellipse_sd((y - cy, x), (ah - fat - 8.0, aw - fat - 8.0))
        return np.maximum(-b.diaphragm_sd(z, y, x) + margin, wall)

    liver_c = (b.dome_r + 65.0, 5.0, -40.0)
    liver_ax = (110.0, b.ah, 105.0)
    cv.paint_sd(((b.dome_r - 10, -big, -big), (big, big, 80.0)),
                lambda z, y, x: np.maximum(ellipse_sd((z - liver_c[0], y - liver_c[1], x - liver_c[2]), liver_ax),
                                           below_diaphragm(z, y, x)),
                Tissue.LIVER, hu[Tissue.LIVER])
    c = (b.dome_l + 45.0, -0.3 * b.ah, 60.0)
    ax = (50.0, 38.0, 42.0)

    def stomach(z, y, x, shrink=0.0):
        e = ellipse_sd((z - c[0], y - c[1], x - c[2]), tuple(a - shrink for a in ax))
        return np.maximum(e, below_diaphragm(z, y, x, margin=4.0))

    box = ((c[0] - ax[0], c[1] - ax[1], c[2] - ax[2]), (c[0] + ax[0], c[1] + ax[1], c[2] + ax[2]))
    cv.paint_sd(box, stomach, Tissue.STOMACH, hu[Tissue.STOMACH])
    # Supine patient: the gas bubble floats to the anterior (small y) side.
    y_gas = c[1] - ax[1] + 2 * ax[1] * b.p.stomach_gas
    cv.paint_sd(box, lambda z, y, x: np.maximum(stomach(z, y, x, shrink=4.0), y - y_gas), Tissue.GAS, hu[Tissue.GAS])


def _paint_lungs(cv: Canvas, b: _Body, hu):
    """Both lungs; returns their occupancy (full grid), used to keep vessels inside."""
    apex_z = b.p.shoulder_z - 15.0
    sl, z, y, x = cv.region((apex_z - 10, -300, -300), (300, 300, 300))
    cy, ch, cw = b.cavity(z)
    cavity = ellipse_sd((y - cy, x), (ch, cw))
    shared = np.maximum(cavity, b.diaphragm_sd(z, y, x))
    # Nothing behind the vertebral bodies: paraspinal muscles fill a wedge widening backward.
    ys = b.spine_y(z)
    spine_wedge = np.maximum(np.abs(x) - 22.0 - 0.6 * np.maximum(y - ys, 0.0), ys - 5.0 - y)
    shared = np.maximum(shared, -spine_wedge)
    # Upper mediastinum (trachea, great vessels) is wider than the space in front of the heart.
    med = b.p.mediastinum_mm + 12.0 * smoothstep((b.carina_z + 15.0 - z) / 40.0)
    value = hu[Tissue.LUNG] + b.p.lung_gradient_hu * (y / b.ah)
    occ = np.zeros(np.broadcast_shapes(z.shape, y.shape), np.float32)
    for side in (-1.0, 1.0):
        # An ellipsoid whose top is the apex; below, the cavity and diaphragm bound the lung.
        dome = ellipse_sd((z - (apex_z + 220.0), y - cy, x - side * 50.0), (220.0, ch + 10.0, 85.0))
        sd = np.maximum(np.maximum(shared, dome), med - side * x)
        np.maximum(occ, cv.occupancy(sd), out=occ)
    cv.paint(sl, occ, Tissue.LUNG, value)
    full = np.zeros_like(cv.hu)
    full[sl] = occ
    return full


def _hilum(b: _Body, side: float):
    return np.array([b.carina_z + 20.0, -0.1 * b.ah, side * (b.p.mediastinum_mm + 30.0)])


def _paint_airways(cv: Canvas, b: _Body, hu):
    car = np.array([b.carina_z, b.spine_y(b.carina_z) - 32.0, 0.0])
    top = np.array([-400.0, b.spine_y(-150.0) - 30.0, 0.0])
    segs = airway_tubes(top, car, [_hilum(b, side) for side in (-1.0, 1.0)])
    cv.paint_tubes(segs, [(Tissue.GAS, hu[Tissue.GAS], 0.0)])


def _paint_heart_and_vessels(cv: Canvas, b: _Body, hu):
    p = b.p
    yc = -0.25 * b.ah + p.heart_offset[0]
    xc = 28.0 + p.heart_offset[1]
    axes = np.array([62.0, 50.0, 44.0]) * p.heart_scale  # long axis, then the two short ones
    zc = float(b.diaphragm_z(yc, xc)[0]) - 0.55 * axes[1]  # resting on the diaphragm
    # Long axis points left, anterior and down (apex on the left dome).
    yaw, tilt = math.radians(p.heart_yaw_deg), math.radians(25.0)
    e1 = np.array([math.sin(tilt), -math.sin(yaw) * math.cos(tilt), math.cos(yaw) * math.cos(tilt)])
    e2 = np.cross(e1, [0.0, 0.0, 1.0])
    e2 /= np.linalg.norm(e2)
    e3 = np.cross(e1, e2)
    frame = np.stack([e1, e2, e3])  # rows: heart axes in (z, y, x)

    def heart(z, y, x, shrink=0.0):
        dz, dy, dx = z - zc, y - yc, x - xc
        local = [f[0] * dz + f[1] * dy + f[2] * dx for f in frame]
        return np.maximum(ellipse_sd(local, tuple(axes - shrink)), b.diaphragm_sd(z, y, x) - 6.0)

    r = float(axes.max())
    box = ((zc - r, yc - r, xc - r), (zc + r, yc + r, xc + r))
    cv.paint_sd(box, heart, Tissue.HEART, hu[Tissue.HEART])
    cv.paint_sd(box, lambda z, y, x: heart(z, y, x, shrink=10.0), Tissue.BLOOD, hu[Tissue.BLOOD])

    top = np.array([zc - 0.8 * axes[1], yc, xc - 15.0])
    # Pulmonary trunk: from the right ventricle's outflow up and back to both hila.
    bif = np.array([b.carina_z + 10.0, yc + 5.0, 8.0])
    segs = polyline([top + [0.0, -10.0, 12.0], bif], [12.0, 11.0])
    for side in (-1.0, 1.0):
        segs += polyline([bif, _hilum(b, side)], [9.0, 6.0])
    # Aorta: ascending on the right, arch over the left bronchus, descending left of the spine.
    z_arch = b.carina_z - 20.0
    asc = np.array([z_arch + 15.0, yc - 5.0, -5.0])
    desc_y = lambda z: float(b.spine_y(z)) - 20.0  # noqa: E731
    desc = np.array([z_arch + 15.0, desc_y(z_arch), 24.0])
    arch = [0.5 * (asc + desc) + np.array([-25.0 * math.sin(t), *(0.5 * (desc - asc)[1:] * -math.cos(t))])
            for t in np.linspace(0, math.pi, 7)]
    down = [np.array([z, desc_y(z), 24.0 - 14.0 * (z - desc[0]) / (400.0 - desc[0])])
            for z in np.linspace(desc[0] + 40.0, 400.0, 5)]
    aorta = [top + [0.0, 5.0, -5.0], asc] + arch + down
    segs += polyline(aorta, [14.0, 14.0] + [12.5] * 7 + [11.0] * 5)
    cv.paint_tubes(segs, [(Tissue.BLOOD, hu[Tissue.BLOOD], 0.0)])


def _paint_spine(cv: Canvas, b: _Body, hu):
    """Vertebrae (body with cortical rim, disc below, arch, processes) and the canal."""
    p = b.p
    pitch = p.vertebra_pitch
    processes = []
    for i in range(-6, 16):
        zi = p.shoulder_z + i * pitch  # the first thoracic body sits at the shoulder line
        sc = 0.75 + 0.4 * float(np.clip((zi - p.shoulder_z + 100.0) / 400.0, 0.0, 1.0))  # bodies grow caudally
        ys = float(b.spine_y(zi))
        yc = paint_vertebra(cv, hu, zi, ys, sc, pitch, pin_amin=False)
        processes += process_tubes(zi, yc, pitch, spinous_slope=0.6, spinous_tip=28.0, transverse_reach=30.0)
    cv.paint_tubes(processes, [(Tissue.CORTICAL, 0.85 * hu[Tissue.CORTICAL], 0.0)])


def _rib_path(b: _Body, k: int, side: float, n: int = 10):
    """Points of rib k (0 = first rib): from the spine around the chest wall, sloping down."""
    p = b.p
    z_back = p.shoulder_z + (k + 0.6) * p.vertebra_pitch
    theta_end = [2.75] * 7 + [2.6, 2.45, 2.3, 1.9, 1.5]
    drop = p.rib_drop * [0.45, 0.65, 0.85, 1, 1, 1, 1, 0.95, 0.9, 0.8, 0.6, 0.4][k]
    ys = float(b.spine_y(z_back))
    # Head on the vertebral body, tubercle on the transverse process tip (see _paint_spine),
    # then around the chest wall from the rib angle on.
    points = [np.array([z_back, ys + 6.0, side * 16.0]), np.array([z_back, ys + 28.0, side * 30.0])]
    _, _, cw0 = b.cavity(z_back)
    theta0 = math.asin(min(0.9, 48.0 / (float(cw0) + 6.0)))
    for f in np.linspace(0.0, 1.0, n):
        theta = theta0 + f * (theta_end[k] - theta0)
        z = z_back + drop * ((theta - theta0) / (math.pi - theta0)) ** 1.3
        cy, ch, cw = (float(v) for v in b.cavity(z))
        points.append(np.array([z, cy + (ch + 6.0) * math.cos(theta), side * (cw + 6.0) * math.sin(theta)]))
    return points


def _sternum_y(b: _Body, z):
    cy, ah, _, fat = b.outline(z)
    return cy - ah + fat + 9.0


def _paint_chest_wall(cv: Canvas, b: _Body, hu):
    """Ribs with costal cartilage, sternum, clavicles and scapulae."""
    p = b.p
    top, bottom = b.sternum_top, b.sternum_top + 165.0
    bones, cartilage = rib_tubes(lambda k, side: _rib_path(b, k, side), lambda z: _sternum_y(b, z), top, bottom,
                                 n_ribs=N_RIBS)
    # The clavicles come after both sides' ribs in `bones`; tubes are united by max
    # (`Canvas.tubes`), so their order changes no voxel.
    for side in (-1.0, 1.0):
        # Clavicle: from the manubrium out, back and slightly up to the shoulder.
        cy, ah, aw, fat = (float(v) for v in b.outline(top))
        ys = float(_sternum_y(b, top))
        clav = [[top + 4, ys + 2, side * 20], [top - 3, ys + 4, side * 55], [top - 10, ys + 22, side * 90],
                [top - 14, cy + 5, side * (aw - fat - 8)]]
        bones += polyline(clav, [6.5] * 4)
    cv.paint_tubes(cartilage, [(Tissue.CARTILAGE, hu[Tissue.CARTILAGE], 0.0)])
    cv.paint_tubes(bones, [(Tissue.CORTICAL, hu[Tissue.CORTICAL], 0.0), (Tissue.CANCELLOUS, hu[Tissue.CANCELLOUS], 2.3)])

    def sternum(z, y, x, shrink=0.0):
        half_w = 14.0 + 10.0 * smoothstep((top + 50.0 - z) / 30.0)  # manubrium is wider
        sd = ellipse_sd((y - _sternum_y(b, z), x), (6.5 - shrink, half_w - shrink))
        return np.maximum(sd, np.maximum(top - z, z - bottom) + shrink)

    box = ((top, -300, -30), (bottom, 0, 30))
    cv.paint_sd(box, sternum, Tissue.CORTICAL, hu[Tissue.CORTICAL])
    cv.paint_sd(box, lambda z, y, x: sternum(z, y, x, shrink=2.5), Tissue.CANCELLOUS, hu[Tissue.CANCELLOUS])

    # Scapulae: thin triangular plates over the posterior ribs, narrowing downward.
    s_top, s_bot = p.shoulder_z + 5.0, p.shoulder_z + 150.0

    def scapula(z, y, x, side):
        cy, ch, cw = b.cavity(z)
        shell = np.abs(ellipse_sd((y - cy, x), (ch + 15.0, cw + 15.0))) - 3.5
        f = np.clip((z - s_top) / (s_bot - s_top), 0.0, 1.0)
        lateral = (cw + 5.0) * (1 - f) + 55.0 * f
        inside = np.maximum(np.maximum(40.0 - side * x, side * x - lateral), np.maximum(s_top - z, z - s_bot))
        return np.maximum(np.maximum(shell, inside), -y)

    for side in (-1.0, 1.0):
        box = ((s_top, 0, min(0, side * 300)), (s_bot, 300, max(0, side * 300)))
        cv.paint_sd(box, lambda z, y, x, s=side: scapula(z, y, x, s), Tissue.CORTICAL, 0.8 * hu[Tissue.CORTICAL])


# --- the phantom --------------------------------------------------------------------------
def chest_phantom_v1(size: int, seed: int, fov_mm: float, margin=(0, 0, 0)):
    """(hu, labels), each (size + 2 md, size + 2 mh, size + 2 mw): see `chest_phantom`."""
    rng = np.random.default_rng(seed)
    p = PhantomParams.draw(rng)
    b = _Body(p)
    vessels = vessel_segments(rng, [_hilum(b, side) for side in (-1.0, 1.0)], roots=VESSEL_ROOTS,
                              generations=VESSEL_GENERATIONS, root_r_mm=(3.5, 5.0), length_ratio=0.78,
                              radius_ratio=0.68)
    cv = Canvas(size, fov_mm, p.rotation_deg, p.shift_mm, margin)
    hu = p.hu
    _paint_body(cv, b, hu)
    _paint_abdomen(cv, b, hu)
    lungs = _paint_lungs(cv, b, hu)
    cv.paint_tubes(vessels, [(Tissue.VESSEL, hu[Tissue.VESSEL], 0.0)], mask=lungs)
    _paint_airways(cv, b, hu)
    _paint_heart_and_vessels(cv, b, hu)
    _paint_spine(cv, b, hu)
    _paint_chest_wall(cv, b, hu)
    amp = np.zeros(len(Tissue), np.float32)
    for t, a in TEXTURE_HU.items():
        amp[t] = a
    cv.hu += amp[cv.lab] * cv.texture(rng)
    np.clip(cv.hu, -1024.0, 3071.0, out=cv.hu)
    return cv.hu, cv.lab
