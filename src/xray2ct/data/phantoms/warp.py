"""Anatomy beyond the generator's parameters: a smooth random deformation of a whole phantom.

The v2 generator draws ~60 parameters, so its lungs, heart and outline are one family of
shapes. A network trained on it learns that family: on phantoms deformed by a smooth warp
of 10-20 mm it predicts lung edges and the outline too dense and loses 1-4 dB, the pattern
it shows on real chest CTs (docs/RESULTS.md, *Why real CTs score lower*). Version 4 is v2's anatomy,
seed for seed, seen through such a warp: the painted volume v is resampled as
v_warped(p) = v(p + D(p)), with D a sum of a few random plane waves per axis (wavelengths
200-500 mm, an amplitude of 0-12 mm drawn per phantom) and D(0) = 0, so the body stays
centred as `prepare` centres a patient. Version 5 draws the same waves with an amplitude of
4-16 mm: every phantom deformed, the largest a third more than v4's.

D is a function of world mm only, so the warp is the same at any resolution. The anatomy is
painted at twice the resolution, warped there (trilinear) and averaged down 2x2x2, which
keeps partial-volume edges as sharp as an unwarped phantom's; the painted grid carries an
extra pad that covers the largest displacement, so a grid with a margin still holds the
margin-free grid in its centre (to a fraction of a HU: float32 voxel positions differ in
the last bit between grids). The warp moves the anatomy and the couch alike; the
scan range and reconstruction circle are cut afterwards, in the scanner's frame.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

WAVES = 4  # plane waves per displacement axis
WAVELENGTH_MM = (200.0, 500.0)
AMPLITUDE_MM = (0.0, 12.0)  # scale of each displacement component (about its std), drawn per phantom (v4)
# v5: every phantom deformed, up to a third more. 16 mm is where the warp nears folding: over a
# 480 mm field the Jacobian's determinant stays above 0.10 on 100 seeds at 16 mm, and folds
# (< 0) on 6 of them at 20 mm.
AMPLITUDE_V5_MM = (4.0, 16.0)


@dataclass(frozen=True)
class Warp:
    """D(p) = amplitude * sqrt(2 / WAVES) * sum_k cos(k_ak . p + phase_ak) - D(0), per axis a."""

    amplitude_mm: float
    wavevectors: np.ndarray  # (3, WAVES, 3) rad/mm, (d, h, w) components
    phases: np.ndarray  # (3, WAVES)

    @classmethod
    def draw(cls, seed: int, amplitude_mm: tuple[float, float] = AMPLITUDE_MM) -> "Warp":
        """The warp of phantom `seed`, from its own stream: the anatomy's draws stay v2's. Another
        `amplitude_mm` range gives the same waves (directions, wavelengths, phases), rescaled."""
        rng = np.random.default_rng([int(seed), 0x3A4F])
        amplitude = rng.uniform(*amplitude_mm)
        direction = rng.normal(size=(3, WAVES, 3))
        direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
        k = 2 * math.pi / rng.uniform(*WAVELENGTH_MM, size=(3, WAVES, 1))
        return cls(float(amplitude), direction * k, rng.uniform(0, 2 * math.pi, size=(3, WAVES)))

    def displacement(self, d, h, w) -> np.ndarray:
        """World mm, broadcastable as a grid: d (n, 1, 1), h and w (1, m, k) -> D (3, n, m, k) mm, float32.

        cos(k_d d + (k_h h + k_w w + phase)) = cos·cos - sin·sin: the 3-D cosines are products of
        a 1-D and a 2-D one (as `Canvas.texture`), 10x faster on a phantom's grid."""
        scale = self.amplitude_mm * math.sqrt(2.0 / WAVES)
        d, h, w = (np.asarray(v, np.float64) for v in (d, h, w))
        out = np.zeros((3,) + np.broadcast_shapes(d.shape, h.shape, w.shape), np.float32)
        for a in range(3):
            for (kd, kh, kw), phase in zip(self.wavevectors[a], self.phases[a]):
                inplane = kh * h + kw * w + phase
                out[a] += (np.cos(kd * d) * np.cos(inplane) - np.sin(kd * d) * np.sin(inplane)).astype(np.float32)
                out[a] -= math.cos(phase)
        return scale * out


def apply(hu: np.ndarray, lab: np.ndarray, axes, warp: Warp, air_hu: float = -1000.0) -> tuple[np.ndarray, np.ndarray]:
    """Resample HU (trilinear) and labels (nearest) at p + D(p); axes: world mm of the voxel
    centres per axis (isotropic spacing). Outside the grid: air."""
    from scipy.ndimage import map_coordinates

    d, h, w = np.meshgrid(*axes, indexing="ij", sparse=True)
    coords = warp.displacement(d, h, w)  # (3, D, H, W) mm
    vox = float(axes[0][1] - axes[0][0])
    for a, p in enumerate((d, h, w)):
        coords[a] += p - axes[a][0]
    coords /= vox  # voxel index sampled for each voxel
    warped = map_coordinates(hu, coords, order=1, mode="constant", cval=air_hu).astype(np.float32)
    labels = map_coordinates(lab, coords, order=0, mode="constant", cval=0).astype(lab.dtype)
    return warped, labels


def downsample(hu: np.ndarray, lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2x2x2 means of a grid painted at twice the resolution; labels of each block's first voxel."""
    n = [s // 2 for s in hu.shape]
    mean = hu.reshape(n[0], 2, n[1], 2, n[2], 2).mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32)
    return mean, np.ascontiguousarray(lab[::2, ::2, ::2])
