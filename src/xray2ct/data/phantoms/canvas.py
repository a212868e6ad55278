"""The voxel grid the anatomy is painted on: HU and label volumes, the patient→world
placement, partial-volume painting of signed-distance shapes and batched tubes.

A shape is given by an approximate signed distance `sd` (mm, negative inside); its share of
a voxel is `clip(0.5 - sd / voxel_mm, 0, 1)`, a one-voxel partial-volume ramp. Every value
is a function of the voxel centre's position in mm only, so a grid with a margin (more
voxels at the same spacing) holds exactly the margin-free grid in its centre.
"""
from __future__ import annotations

import math

import numpy as np

from .tissues import Tissue


def margins(margin) -> tuple[int, int, int]:
    """int or (d, h, w) voxels -> (d, h, w) non-negative ints; errors name the bad value."""
    m = (margin,) * 3 if np.isscalar(margin) else tuple(margin)
    if len(m) != 3 or any(int(v) != v or v < 0 for v in m):
        raise ValueError(f"margin must be a non-negative int or (d, h, w) of them, got {margin!r}")
    return tuple(int(v) for v in m)


def voxel_axes(size: int, fov_mm: float, margin=(0, 0, 0)) -> list[np.ndarray]:
    """Voxel centres, world mm (origin at the centre of the size³ cube), per axis (d, h, w):
    size + 2 m each, the margin voxels continuing the same spacing."""
    vox = fov_mm / size
    return [((np.arange(size + 2 * m) - m - (size - 1) / 2) * vox).astype(np.float32) for m in margin]


class Canvas:
    """HU and label volumes of shape (size + 2 md, size + 2 mh, size + 2 mw) plus the
    patient→world placement (world origin at the centre of the size³ cube)."""

    def __init__(self, size: int, fov_mm: float, rotation_deg: float, shift_mm, margin=(0, 0, 0),
                 air_hu: float = -1000.0):
        self.vox = fov_mm / size  # mm per voxel, isotropic
        self.axes = voxel_axes(size, fov_mm, margin)
        shape = tuple(len(a) for a in self.axes)
        self.hu = np.full(shape, air_hu, np.float32)
        self.lab = np.zeros(shape, np.uint8)
        a = math.radians(rotation_deg)
        self.cos, self.sin = math.cos(a), math.sin(a)
        self.shift = shift_mm

    def _index_range(self, axis: np.ndarray, lo_mm: float, hi_mm: float) -> slice:
        n = len(axis)
        i0 = max(0, math.floor((lo_mm - axis[0]) / self.vox))
        i1 = min(n, math.ceil((hi_mm - axis[0]) / self.vox) + 1)
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
        az, ay, ax = self.axes
        sl = (self._index_range(az, lo[0] + sz - pad, hi[0] + sz + pad),
              self._index_range(ay, min(ys) + sy - pad, max(ys) + sy + pad),
              self._index_range(ax, min(xs) + sx - pad, max(xs) + sx + pad))
        if any(q.stop <= q.start for q in sl):
            return None
        z = az[sl[0]][:, None, None] - sz
        yw = ay[sl[1]][None, :, None] - sy
        xw = ax[sl[2]][None, None, :] - sx
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
        shape = np.array(self.hu.shape)
        nd, nh, nw = (int(v) for v in shape)
        bufs = [np.zeros(nd * nh * nw, np.float32) for _ in shells]
        if not segments:
            return (slice(0, 0),) * 3, [buf.reshape(self.hu.shape)[:0, :0, :0] for buf in bufs]
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
        first = np.array([ax[0] for ax in self.axes])
        i0 = np.clip(np.floor((wlo - first) / self.vox), 0, shape).astype(int)
        i1 = np.clip(np.ceil((whi - first) / self.vox) + 1, 0, shape).astype(int)
        ext = i1 - i0
        keep = np.flatnonzero((ext > 0).all(1))
        keep = keep[np.argsort(ext[keep].prod(1), kind="stable")]  # similar sizes share a batch
        ab = b - a
        ab2 = np.maximum((ab**2).sum(1), 1e-9)
        for k in range(0, len(keep), chunk):
            sel = keep[k:k + chunk]
            size = ext[sel].max(0)
            idx = [i0[sel, d][:, None] + np.arange(size[d]) for d in range(3)]  # (C, P_d) voxel indices
            inside = [q < n for q, n in zip(idx, shape)]
            idx = [np.minimum(q, n - 1) for q, n in zip(idx, shape)]
            zw = self.axes[0][idx[0]] - self.shift[0]
            yw = self.axes[1][idx[1]][:, :, None] - self.shift[1]
            xw = self.axes[2][idx[2]][:, None, :] - self.shift[2]
            dz = (zw - a[sel, 0:1])[:, :, None, None]  # (C, Pz, 1, 1)
            dy = (c * yw + s_ * xw - a[sel, 1, None, None])[:, None]  # (C, 1, Py, Px)
            dx = (-s_ * yw + c * xw - a[sel, 2, None, None])[:, None]
            e = ab[sel][:, :, None, None, None]  # (C, 3, 1, 1, 1)
            t = np.clip((dz * e[:, 0] + dy * e[:, 1] + dx * e[:, 2]) / ab2[sel, None, None, None], 0.0, 1.0)
            dist = np.sqrt((dz - t * e[:, 0]) ** 2 + (dy - t * e[:, 1]) ** 2 + (dx - t * e[:, 2]) ** 2)
            valid = inside[0][:, :, None, None] & inside[1][:, None, :, None] & inside[2][:, None, None, :]
            flat = (idx[0][:, :, None, None] * nh + idx[1][:, None, :, None]) * nw + idx[2][:, None, None, :]
            r_a, r_b = ra[sel, :, None, None], rb[sel, :, None, None]
            for shell, buf in zip(shells, bufs):
                r = r_a - shell + t * (r_b - r_a)
                # Sub-voxel tubes: widen to half a voxel and dim by the area ratio, which keeps
                # their projected mass (what a DRR sees) independent of resolution.
                r_eff = np.maximum(r, 0.5 * self.vox)
                occ = (np.maximum(r, 0.0) / r_eff) ** 2 * np.clip(0.5 - (dist - r_eff) / self.vox, 0.0, 1.0)
                np.maximum.at(buf, flat[valid], occ[valid].astype(np.float32))
        box = tuple(slice(int(i0[keep, d].min(initial=shape[d])), int(i1[keep, d].max(initial=0))) for d in range(3))
        return box, [buf.reshape(self.hu.shape)[box] for buf in bufs]

    def paint_tubes(self, segments, layers, mask=None, chunk: int = 64):
        """Paint tubes; layers: (tissue, HU, radius offset) painted in order (shell, then core).
        chunk: segments per batch (`tubes`); 1 for a few large ones of different sizes."""
        box, occs = self.tubes(segments, [shell for _, _, shell in layers], chunk)
        for (tissue, value, _), occ in zip(layers, occs):
            if mask is not None:
                occ *= mask[box]
            self.paint(box, occ, tissue, value)

    def texture(self, rng: np.random.Generator, n_waves: int = 5):
        """Smooth random field in patient mm (~unit std) over the whole grid, resolution independent."""
        _, z, y, x = self.region()
        field = np.zeros(self.hu.shape, np.float32)
        for _ in range(n_waves):
            k = rng.normal(size=3)
            k *= 2 * math.pi / (np.linalg.norm(k) * rng.uniform(15.0, 60.0))  # wavelength 15–60 mm
            # cos(kz z + (ky y + kx x + phase)) = cos·cos − sin·sin: two products, no 3-D cos.
            inplane = k[1] * y + k[2] * x + rng.uniform(0, 2 * math.pi)
            field += np.cos(k[0] * z) * np.cos(inplane) - np.sin(k[0] * z) * np.sin(inplane)
        return field * math.sqrt(2.0 / n_waves)
