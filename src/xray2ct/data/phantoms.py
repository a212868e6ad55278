"""Procedural chest CT phantoms: HU volumes (and tissue labels) with random anatomy.

Every structure is an analytic shape in patient millimetres, painted in anatomical order
(body, abdomen, lungs, vessels, heart, bones) onto the voxel grid. A shape is given by an
approximate signed distance `sd` (mm, negative inside); its share of a voxel is
`clip(0.5 - sd / voxel_mm, 0, 1)`, a one-voxel partial-volume ramp. Nothing is drawn on the
voxel grid itself, so one seed gives the same anatomy at any resolution, and tubes thinner
than a voxel keep their cross-section (they are widened to half a voxel and dimmed by the
area ratio) instead of vanishing, so ribs still show at 32³.

Frames (DESIGN.md): volume index (d, h, w) = head→feet, anterior→posterior, patient
right→left. `patient_mm` coordinates use the same axes, written (z, y, x) in the code:
z along d, y along h, x along w (x > 0 is the patient's left). The patient is placed in
the world frame (origin at the volume centre) with a small random shift and rotation
about d.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from enum import IntEnum

import numpy as np


class Tissue(IntEnum):
    """Label of each voxel in `chest_phantom(..., return_labels=True)`."""

    AIR = 0  # outside the body
    FAT = 1  # subcutaneous fat
    MUSCLE = 2  # muscle and other soft tissue
    LUNG = 3  # lung parenchyma
    VESSEL = 4  # pulmonary vessels inside the lungs (partial volume: mostly below blood HU)
    HEART = 5  # myocardium
    BLOOD = 6  # cardiac chambers, aorta, pulmonary trunk
    GAS = 7  # air inside the body: trachea, bronchi, stomach bubble
    LIVER = 8
    STOMACH = 9  # stomach contents
    CANCELLOUS = 10  # trabecular bone (vertebral bodies, rib and sternum cores)
    CORTICAL = 11  # cortical bone
    DISC = 12  # intervertebral discs
    CORD = 13  # spinal canal contents
    CARTILAGE = 14  # costal cartilage


# Typical HU of each tissue and the half-width of its uniform per-phantom jitter.
TISSUE_HU = {
    Tissue.AIR: (-1000.0, 0.0),
    Tissue.FAT: (-100.0, 20.0),
    Tissue.MUSCLE: (40.0, 10.0),
    Tissue.LUNG: (-850.0, 50.0),
    Tissue.VESSEL: (45.0, 10.0),
    Tissue.HEART: (40.0, 8.0),
    Tissue.BLOOD: (50.0, 10.0),
    Tissue.GAS: (-995.0, 5.0),
    Tissue.LIVER: (60.0, 8.0),
    Tissue.STOMACH: (20.0, 10.0),
    Tissue.CANCELLOUS: (330.0, 30.0),
    Tissue.CORTICAL: (1000.0, 150.0),
    Tissue.DISC: (80.0, 10.0),
    Tissue.CORD: (30.0, 5.0),
    Tissue.CARTILAGE: (120.0, 20.0),
}

# Amplitude (HU) of the smooth within-tissue texture: lungs and bone are the least uniform.
TEXTURE_HU = {Tissue.FAT: 10, Tissue.MUSCLE: 8, Tissue.LUNG: 25, Tissue.LIVER: 6, Tissue.HEART: 5,
              Tissue.BLOOD: 4, Tissue.STOMACH: 10, Tissue.CANCELLOUS: 40, Tissue.CORTICAL: 60}

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


# --- grid and painting -----------------------------------------------------------------
class _Canvas:
    """The HU and label volumes plus the patient→world placement."""

    def __init__(self, size: int, fov_mm: float, p: PhantomParams):
        self.vox = fov_mm / size  # mm per voxel, isotropic
        self.axis = ((np.arange(size) - (size - 1) / 2) * self.vox).astype(np.float32)  # voxel centres, world mm
        self.hu = np.full((size,) * 3, TISSUE_HU[Tissue.AIR][0], np.float32)
        self.lab = np.zeros((size,) * 3, np.uint8)
        a = math.radians(p.rotation_deg)
        self.cos, self.sin = math.cos(a), math.sin(a)
        self.shift = p.shift_mm

    def _index_range(self, lo_mm: float, hi_mm: float) -> slice:
        n = len(self.axis)
        i0 = max(0, math.floor((lo_mm - self.axis[0]) / self.vox))
        i1 = min(n, math.ceil((hi_mm - self.axis[0]) / self.vox) + 1)
        return slice(i0, max(i0, i1))

    def region(self, lo=(-1e9,) * 3, hi=(1e9,) * 3):
        """Voxels of a patient-frame box (z, y, x mm) -> (slices, z (n,1,1), y (1,m,k), x (1,m,k))
        in patient mm, or None when the box misses the volume."""
        sz, sy, sx = self.shift
        c, s = self.cos, self.sin
        # world = R(patient) + shift; R rotates (y, x) about d.
        ys = [c * y - s * x for y in (lo[1], hi[1]) for x in (lo[2], hi[2])]
        xs = [s * y + c * x for y in (lo[1], hi[1]) for x in (lo[2], hi[2])]
        pad = self.vox
        sl = (self._index_range(lo[0] + sz - pad, hi[0] + sz + pad),
              self._index_range(min(ys) + sy - pad, max(ys) + sy + pad),
              self._index_range(min(xs) + sx - pad, max(xs) + sx + pad))
        if any(q.stop <= q.start for q in sl):
            return None
        z = self.axis[sl[0]][:, None, None] - sz
        yw = self.axis[sl[1]][None, :, None] - sy
        xw = self.axis[sl[2]][None, None, :] - sx
        return sl, z, c * yw + s * xw, -s * yw + c * xw

    def occupancy(self, sd):
        """Signed distance (mm) -> share of each voxel inside the shape."""
        return np.clip(0.5 - sd / self.vox, 0.0, 1.0)

    def paint(self, sl, occ, tissue: Tissue, value):
        """Blend `value` (HU, scalar or broadcastable) into the voxels by their occupancy."""
        hu = self.hu[sl]
        hu += occ * (value - hu)
        lab = self.lab[sl]
        lab[np.broadcast_to(occ, lab.shape) > 0.5] = tissue

    def paint_sd(self, box, sd_fn, tissue: Tissue, value):
        """Paint the shape sd_fn(z, y, x) -> sd inside the patient box (lo, hi)."""
        reg = self.region(*box)
        if reg is None:
            return
        sl, z, y, x = reg
        self.paint(sl, self.occupancy(sd_fn(z, y, x)), tissue, value)

    def tubes(self, segments, shells=(0.0,), chunk: int = 64):
        """Occupancy of capsules (a, b, radius_a, radius_b) united by max, once per radius
        offset in `shells` (a tube and its thinner core share one distance computation).
        Returns (slices of the touched box, [occupancy over that box per shell]).

        Segments are rendered in batches: each gets a voxel patch around its bounding box,
        padded to the largest patch of its batch, so hundreds of vessels cost a few numpy calls."""
        n = len(self.axis)
        bufs = [np.zeros(n**3, np.float32) for _ in shells]
        if not segments:
            return (slice(0, 0),) * 3, [buf.reshape((n,) * 3)[:0, :0, :0] for buf in bufs]
        a = np.array([seg[0] for seg in segments], np.float64)  # (S, 3) patient mm
        b = np.array([seg[1] for seg in segments], np.float64)
        ra = np.array([seg[2] for seg in segments])[:, None]  # (S, 1)
        rb = np.array([seg[3] for seg in segments])[:, None]
        pad = np.maximum(np.maximum(ra, rb), 0.5 * self.vox) + self.vox
        lo, hi = np.minimum(a, b) - pad, np.maximum(a, b) + pad
        # Patient box -> world box: rotate the four (y, x) corners about d, then shift.
        c, s_ = self.cos, self.sin
        corners = [(y, x) for y in (lo[:, 1], hi[:, 1]) for x in (lo[:, 2], hi[:, 2])]
        wy = np.stack([c * y - s_ * x for y, x in corners])
        wx = np.stack([s_ * y + c * x for y, x in corners])
        wlo = np.stack([lo[:, 0], wy.min(0), wx.min(0)], 1) + self.shift
        whi = np.stack([hi[:, 0], wy.max(0), wx.max(0)], 1) + self.shift
        i0 = np.clip(np.floor((wlo - self.axis[0]) / self.vox), 0, n).astype(int)
        i1 = np.clip(np.ceil((whi - self.axis[0]) / self.vox) + 1, 0, n).astype(int)
        ext = i1 - i0
        keep = np.flatnonzero((ext > 0).all(1))
        keep = keep[np.argsort(ext[keep].prod(1), kind="stable")]  # similar sizes share a batch
        ab = b - a
        ab2 = np.maximum((ab**2).sum(1), 1e-9)
        for k in range(0, len(keep), chunk):
            sel = keep[k:k + chunk]
            size = ext[sel].max(0)
            idx = [i0[sel, d][:, None] + np.arange(size[d]) for d in range(3)]  # (C, P_d) voxel indices
            inside = [q < n for q in idx]
            idx = [np.minimum(q, n - 1) for q in idx]
            zw = self.axis[idx[0]] - self.shift[0]
            yw = self.axis[idx[1]][:, :, None] - self.shift[1]
            xw = self.axis[idx[2]][:, None, :] - self.shift[2]
            dz = (zw - a[sel, 0:1])[:, :, None, None]  # (C, Pz, 1, 1)
            dy = (c * yw + s_ * xw - a[sel, 1, None, None])[:, None]  # (C, 1, Py, Px)
            dx = (-s_ * yw + c * xw - a[sel, 2, None, None])[:, None]
            e = ab[sel][:, :, None, None, None]  # (C, 3, 1, 1, 1)
            t = np.clip((dz * e[:, 0] + dy * e[:, 1] + dx * e[:, 2]) / ab2[sel, None, None, None], 0.0, 1.0)
            dist = np.sqrt((dz - t * e[:, 0]) ** 2 + (dy - t * e[:, 1]) ** 2 + (dx - t * e[:, 2]) ** 2)
            valid = inside[0][:, :, None, None] & inside[1][:, None, :, None] & inside[2][:, None, None, :]
            flat = (idx[0][:, :, None, None] * n + idx[1][:, None, :, None]) * n + idx[2][:, None, None, :]
            r_a, r_b = ra[sel, :, None, None], rb[sel, :, None, None]
            for shell, buf in zip(shells, bufs):
                r = r_a - shell + t * (r_b - r_a)
                # Sub-voxel tubes: widen to half a voxel and dim by the area ratio, which keeps
                # their projected mass (what a DRR sees) independent of resolution.
                r_eff = np.maximum(r, 0.5 * self.vox)
                occ = (np.maximum(r, 0.0) / r_eff) ** 2 * np.clip(0.5 - (dist - r_eff) / self.vox, 0.0, 1.0)
                np.maximum.at(buf, flat[valid], occ[valid].astype(np.float32))
        box = tuple(slice(int(i0[keep, d].min(initial=n)), int(i1[keep, d].max(initial=0))) for d in range(3))
        return box, [buf.reshape((n,) * 3)[box] for buf in bufs]

    def paint_tubes(self, segments, layers, mask=None):
        """Paint tubes; layers: (tissue, HU, radius offset) painted in order (shell, then core)."""
        box, occs = self.tubes(segments, [shell for _, _, shell in layers])
        for (tissue, value, _), occ in zip(layers, occs):
            if mask is not None:
                occ *= mask[box]
            self.paint(box, occ, tissue, value)


def _ellipse_sd(offsets, axes):
    """Approximate signed distance (mm) to an axis-aligned ellipse/ellipsoid:
    (r - 1) / |grad r| with r the normalized radius, exact on the surface."""
    u2, g2 = 0.0, 0.0
    for o, ax in zip(offsets, axes):
        q = o / ax
        u2 = u2 + q * q
        g2 = g2 + (q / ax) ** 2
    # r / |grad r| = sqrt(u2 / g2) lies between the smallest and largest semi-axis; the
    # epsilons make it the smallest at the centre, where it is 0/0.
    amin = min(float(np.min(ax)) for ax in axes)
    return (np.sqrt(u2) - 1.0) * np.sqrt((u2 + 1e-6) / (g2 + 1e-6 / amin**2))


def _polyline(points, radii):
    pts = [np.asarray(q, np.float64) for q in points]
    return [(pts[i], pts[i + 1], radii[i], radii[i + 1]) for i in range(len(pts) - 1)]


def _smoothstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


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
        t = _smoothstep((self.p.shoulder_z - z) / 45.0)  # 0 in the chest, 1 in the neck
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
def _paint_body(cv: _Canvas, b: _Body, hu):
    sl, z, y, x = cv.region()
    # The outline only changes with z in the neck taper: compute each distinct slice once.
    rows = np.stack(np.broadcast_arrays(*b.outline(z[:, 0, 0])), -1)  # (n, 4): cy, ah, aw, fat
    uniq, inv = np.unique(rows, axis=0, return_inverse=True)
    cy, ah, aw, fat = (v[:, None, None] for v in uniq.T.astype(np.float32))
    skin = cv.occupancy(_ellipse_sd((y - cy, x), (ah, aw)))[inv.ravel()]
    fascia = cv.occupancy(_ellipse_sd((y - cy, x), (ah - fat, aw - fat)))[inv.ravel()]
    cv.paint(sl, skin, Tissue.FAT, hu[Tissue.FAT])
    cv.paint(sl, fascia, Tissue.MUSCLE, hu[Tissue.MUSCLE])


def _paint_abdomen(cv: _Canvas, b: _Body, hu):
    big = 400.0

    def below_diaphragm(z, y, x, margin=0.0):
        cy, ah, aw, fat = b.outline(z)
        wall = _ellipse_sd((y - cy, x), (ah - fat - 8.0, aw - fat - 8.0))
        return np.maximum(-b.diaphragm_sd(z, y, x) + margin, wall)

    liver_c = (b.dome_r + 65.0, 5.0, -40.0)
    liver_ax = (110.0, b.ah, 105.0)
    cv.paint_sd(((b.dome_r - 10, -big, -big), (big, big, 80.0)),
                lambda z, y, x: np.maximum(_ellipse_sd((z - liver_c[0], y - liver_c[1], x - liver_c[2]), liver_ax),
                                           below_diaphragm(z, y, x)),
                Tissue.LIVER, hu[Tissue.LIVER])
    c = (b.dome_l + 45.0, -0.3 * b.ah, 60.0)
    ax = (50.0, 38.0, 42.0)

    def stomach(z, y, x, shrink=0.0):
        e = _ellipse_sd((z - c[0], y - c[1], x - c[2]), tuple(a - shrink for a in ax))
        return np.maximum(e, below_diaphragm(z, y, x, margin=4.0))

    box = ((c[0] - ax[0], c[1] - ax[1], c[2] - ax[2]), (c[0] + ax[0], c[1] + ax[1], c[2] + ax[2]))
    cv.paint_sd(box, stomach, Tissue.STOMACH, hu[Tissue.STOMACH])
    # Supine patient: the gas bubble floats to the anterior (small y) side.
    y_gas = c[1] - ax[1] + 2 * ax[1] * b.p.stomach_gas
    cv.paint_sd(box, lambda z, y, x: np.maximum(stomach(z, y, x, shrink=4.0), y - y_gas), Tissue.GAS, hu[Tissue.GAS])


def _paint_lungs(cv: _Canvas, b: _Body, hu):
    """Both lungs; returns their occupancy (full grid), used to keep vessels inside."""
    apex_z = b.p.shoulder_z - 15.0
    sl, z, y, x = cv.region((apex_z - 10, -300, -300), (300, 300, 300))
    cy, ch, cw = b.cavity(z)
    cavity = _ellipse_sd((y - cy, x), (ch, cw))
    shared = np.maximum(cavity, b.diaphragm_sd(z, y, x))
    # Nothing behind the vertebral bodies: paraspinal muscles fill a wedge widening backward.
    ys = b.spine_y(z)
    spine_wedge = np.maximum(np.abs(x) - 22.0 - 0.6 * np.maximum(y - ys, 0.0), ys - 5.0 - y)
    shared = np.maximum(shared, -spine_wedge)
    # Upper mediastinum (trachea, great vessels) is wider than the space in front of the heart.
    med = b.p.mediastinum_mm + 12.0 * _smoothstep((b.carina_z + 15.0 - z) / 40.0)
    value = hu[Tissue.LUNG] + b.p.lung_gradient_hu * (y / b.ah)
    occ = np.zeros(np.broadcast_shapes(z.shape, y.shape), np.float32)
    for side in (-1.0, 1.0):
        # An ellipsoid whose top is the apex; below, the cavity and diaphragm bound the lung.
        dome = _ellipse_sd((z - (apex_z + 220.0), y - cy, x - side * 50.0), (220.0, ch + 10.0, 85.0))
        sd = np.maximum(np.maximum(shared, dome), med - side * x)
        np.maximum(occ, cv.occupancy(sd), out=occ)
    cv.paint(sl, occ, Tissue.LUNG, value)
    full = np.zeros_like(cv.hu)
    full[sl] = occ
    return full


def _hilum(b: _Body, side: float):
    return np.array([b.carina_z + 20.0, -0.1 * b.ah, side * (b.p.mediastinum_mm + 30.0)])


def _vessel_segments(rng: np.random.Generator, b: _Body):
    """Random branching trees from each hilum: radius and length shrink each generation."""
    segs = []
    for side in (-1.0, 1.0):
        root = _hilum(b, side)
        for k in range(VESSEL_ROOTS):
            # Spread the roots over the lobes: from up-lateral to down-lateral.
            phi = math.pi * (k + rng.uniform(0.2, 0.8)) / VESSEL_ROOTS
            d0 = np.array([-math.cos(phi), rng.uniform(-0.6, 0.6), side * (0.4 + math.sin(phi))])
            stack = [(root, d0 / np.linalg.norm(d0), rng.uniform(25.0, 35.0), rng.uniform(3.5, 5.0), 0)]
            while stack:
                a, d, length, r, gen = stack.pop()
                end = a + d * length
                segs.append((a, end, r, 0.85 * r))
                if gen + 1 < VESSEL_GENERATIONS:
                    for _ in range(2):
                        nd = d + rng.normal(0.0, 0.45, 3)
                        stack.append((end, nd / np.linalg.norm(nd), 0.78 * length, 0.68 * r, gen + 1))
    return segs


def _paint_airways(cv: _Canvas, b: _Body, hu):
    car = np.array([b.carina_z, b.spine_y(b.carina_z) - 32.0, 0.0])
    top = np.array([-400.0, b.spine_y(-150.0) - 30.0, 0.0])
    segs = _polyline([top, car], [9.0, 8.5])
    for side in (-1.0, 1.0):
        hil = _hilum(b, side) + np.array([0.0, 12.0, 0.0])  # bronchi run behind the arteries
        segs += _polyline([car, hil], [6.5, 5.5])
        for dz in (-35.0, 35.0):  # upper and lower lobe bronchi
            segs += _polyline([hil, hil + np.array([dz, 5.0, side * 25.0])], [4.5, 3.0])
    cv.paint_tubes(segs, [(Tissue.GAS, hu[Tissue.GAS], 0.0)])


def _paint_heart_and_vessels(cv: _Canvas, b: _Body, hu):
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
        return np.maximum(_ellipse_sd(local, tuple(axes - shrink)), b.diaphragm_sd(z, y, x) - 6.0)

    r = float(axes.max())
    box = ((zc - r, yc - r, xc - r), (zc + r, yc + r, xc + r))
    cv.paint_sd(box, heart, Tissue.HEART, hu[Tissue.HEART])
    cv.paint_sd(box, lambda z, y, x: heart(z, y, x, shrink=10.0), Tissue.BLOOD, hu[Tissue.BLOOD])

    top = np.array([zc - 0.8 * axes[1], yc, xc - 15.0])
    # Pulmonary trunk: from the right ventricle's outflow up and back to both hila.
    bif = np.array([b.carina_z + 10.0, yc + 5.0, 8.0])
    segs = _polyline([top + [0.0, -10.0, 12.0], bif], [12.0, 11.0])
    for side in (-1.0, 1.0):
        segs += _polyline([bif, _hilum(b, side)], [9.0, 6.0])
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
    segs += _polyline(aorta, [14.0, 14.0] + [12.5] * 7 + [11.0] * 5)
    cv.paint_tubes(segs, [(Tissue.BLOOD, hu[Tissue.BLOOD], 0.0)])


def _paint_spine(cv: _Canvas, b: _Body, hu):
    """Vertebrae (body with cortical rim, disc below, arch, processes) and the canal."""
    p = b.p
    pitch, disc = p.vertebra_pitch, 0.22 * p.vertebra_pitch
    hh = (pitch - disc) / 2  # half-height of a body
    canal_r = 7.0
    processes = []
    for i in range(-6, 16):
        zi = p.shoulder_z + i * pitch  # the first thoracic body sits at the shoulder line
        sc = 0.75 + 0.4 * float(np.clip((zi - p.shoulder_z + 100.0) / 400.0, 0.0, 1.0))  # bodies grow caudally
        ry, rx = 13.0 * sc, 17.0 * sc
        ys = float(b.spine_y(zi))
        yc = ys + ry + 2.0 + canal_r  # canal centre
        box = ((zi - pitch, ys - rx, -rx - 5), (zi + pitch, yc + canal_r + 8, rx + 5))

        def body(z, y, x, shrink=0.0, zi=zi, ys=ys, ry=ry, rx=rx):
            return np.maximum(_ellipse_sd((y - ys, x), (ry - shrink, rx - shrink)), np.abs(z - zi) - hh + shrink)

        def ring(z, y, x, yc=yc, zi=zi):
            rho = np.sqrt((y - yc) ** 2 + x**2)
            return np.maximum(np.abs(rho - canal_r - 3.0) - 3.0, np.abs(z - zi) - hh)  # pedicles and laminae

        cv.paint_sd(box, lambda z, y, x, f=body: np.maximum(f(z - pitch / 2, y, x, shrink=1.0), np.abs(z - zi - pitch / 2) - disc / 2),
                    Tissue.DISC, hu[Tissue.DISC])
        cv.paint_sd(box, body, Tissue.CORTICAL, hu[Tissue.CORTICAL])
        cv.paint_sd(box, lambda z, y, x, f=body: f(z, y, x, shrink=2.5), Tissue.CANCELLOUS, hu[Tissue.CANCELLOUS])
        cv.paint_sd(box, ring, Tissue.CORTICAL, 0.85 * hu[Tissue.CORTICAL])
        cv.paint_sd(box, lambda z, y, x, yc=yc, zi=zi: np.maximum(np.sqrt((y - yc) ** 2 + x**2) - canal_r,
                                                                   np.abs(z - zi) - pitch / 2),
                    Tissue.CORD, hu[Tissue.CORD])
        processes += _polyline([[zi, yc + canal_r + 4.0, 0.0], [zi + 0.6 * pitch, yc + 28.0, 0.0]], [4.5, 3.5])  # spinous
        for side in (-1.0, 1.0):  # transverse processes
            processes += _polyline([[zi, yc, side * (canal_r + 4.0)], [zi - 2.0, yc + 6.0, side * 30.0]], [4.5, 3.5])
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


def _paint_chest_wall(cv: _Canvas, b: _Body, hu):
    """Ribs with costal cartilage, sternum, clavicles and scapulae."""
    p = b.p
    top, bottom = b.sternum_top, b.sternum_top + 165.0
    bones, cartilage = [], []  # bones: cortical tubes with a cancellous core
    for side in (-1.0, 1.0):
        for k in range(N_RIBS):
            pts = _rib_path(b, k, side)
            bones += _polyline(pts, [5.0] * len(pts))
            if k < 7:  # true ribs reach the sternum through cartilage
                z_att = top + 15.0 + k * (bottom - top - 30.0) / 6
                end = np.array([z_att, float(_sternum_y(b, z_att)), side * 13.0])
                mid = 0.5 * (pts[-1] + end) + np.array([0.0, -4.0, side * 8.0])
                cartilage += _polyline([pts[-1], mid, end], [4.5, 4.5, 4.0])
        # Clavicle: from the manubrium out, back and slightly up to the shoulder.
        cy, ah, aw, fat = (float(v) for v in b.outline(top))
        ys = float(_sternum_y(b, top))
        clav = [[top + 4, ys + 2, side * 20], [top - 3, ys + 4, side * 55], [top - 10, ys + 22, side * 90],
                [top - 14, cy + 5, side * (aw - fat - 8)]]
        bones += _polyline(clav, [6.5] * 4)
    cv.paint_tubes(cartilage, [(Tissue.CARTILAGE, hu[Tissue.CARTILAGE], 0.0)])
    cv.paint_tubes(bones, [(Tissue.CORTICAL, hu[Tissue.CORTICAL], 0.0), (Tissue.CANCELLOUS, hu[Tissue.CANCELLOUS], 2.3)])

    def sternum(z, y, x, shrink=0.0):
        half_w = 14.0 + 10.0 * _smoothstep((top + 50.0 - z) / 30.0)  # manubrium is wider
        sd = _ellipse_sd((y - _sternum_y(b, z), x), (6.5 - shrink, half_w - shrink))
        return np.maximum(sd, np.maximum(top - z, z - bottom) + shrink)

    box = ((top, -300, -30), (bottom, 0, 30))
    cv.paint_sd(box, sternum, Tissue.CORTICAL, hu[Tissue.CORTICAL])
    cv.paint_sd(box, lambda z, y, x: sternum(z, y, x, shrink=2.5), Tissue.CANCELLOUS, hu[Tissue.CANCELLOUS])

    # Scapulae: thin triangular plates over the posterior ribs, narrowing downward.
    s_top, s_bot = p.shoulder_z + 5.0, p.shoulder_z + 150.0

    def scapula(z, y, x, side):
        cy, ch, cw = b.cavity(z)
        shell = np.abs(_ellipse_sd((y - cy, x), (ch + 15.0, cw + 15.0))) - 3.5
        f = np.clip((z - s_top) / (s_bot - s_top), 0.0, 1.0)
        lateral = (cw + 5.0) * (1 - f) + 55.0 * f
        inside = np.maximum(np.maximum(40.0 - side * x, side * x - lateral), np.maximum(s_top - z, z - s_bot))
        return np.maximum(np.maximum(shell, inside), -y)

    for side in (-1.0, 1.0):
        box = ((s_top, 0, min(0, side * 300)), (s_bot, 300, max(0, side * 300)))
        cv.paint_sd(box, lambda z, y, x, s=side: scapula(z, y, x, s), Tissue.CORTICAL, 0.8 * hu[Tissue.CORTICAL])


def _texture(cv: _Canvas, rng: np.random.Generator, n_waves: int = 5):
    """Smooth random field in patient mm (~unit std), resolution independent."""
    _, z, y, x = cv.region()
    field = np.zeros(cv.hu.shape, np.float32)
    for _ in range(n_waves):
        k = rng.normal(size=3)
        k *= 2 * math.pi / (np.linalg.norm(k) * rng.uniform(15.0, 60.0))  # wavelength 15–60 mm
        # cos(kz z + (ky y + kx x + phase)) = cos·cos − sin·sin: two products, no 3-D cos.
        inplane = k[1] * y + k[2] * x + rng.uniform(0, 2 * math.pi)
        field += np.cos(k[0] * z) * np.cos(inplane) - np.sin(k[0] * z) * np.sin(inplane)
    return field * math.sqrt(2.0 / n_waves)


# --- public API --------------------------------------------------------------------------
def chest_phantom(size: int = 64, seed: int = 0, fov_mm: float = 320.0, return_labels: bool = False):
    """A random chest CT phantom in HU.

    Args:
        size: voxels per side of the cube.
        seed: anatomy seed; the same seed gives the same anatomy at every size.
        fov_mm: side of the cube, mm (voxel spacing fov_mm / size, origin at the centre).
        return_labels: also return the `Tissue` label of each voxel.

    Returns:
        hu: (size, size, size) float32, axes (d, h, w) = head→feet, anterior→posterior,
            patient right→left; and labels (same shape, uint8) when return_labels.
    """
    if int(size) != size or size < 4:
        raise ValueError(f"size must be an integer >= 4, got {size!r}")
    if not fov_mm > 0:
        raise ValueError(f"fov_mm must be positive, got {fov_mm!r}")
    rng = np.random.default_rng(seed)
    p = PhantomParams.draw(rng)
    b = _Body(p)
    vessels = _vessel_segments(rng, b)
    cv = _Canvas(int(size), float(fov_mm), p)
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
    cv.hu += amp[cv.lab] * _texture(cv, rng)
    np.clip(cv.hu, -1024.0, 3071.0, out=cv.hu)
    return (cv.hu, cv.lab) if return_labels else cv.hu


def phantoms_per_second(size: int = 64, n: int = 5) -> float:
    """Phantoms generated per second at `size`³ on this machine (one warm-up call first)."""
    chest_phantom(size=size, seed=0)
    t0 = time.perf_counter()
    for i in range(n):
        chest_phantom(size=size, seed=i + 1)
    return n / (time.perf_counter() - t0)
