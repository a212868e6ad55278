"""What a chest CT leaves of the patient: the scan's head–feet range, the reconstruction
circle (values outside the scan field are air), and the patient table under the back.

These are part of the CT, in the world frame (the couch is level, the patient may be
turned on it), and apply to the whole grid including a `margin`: a wide-field DRR of a v2
phantom sees what a DRR of the real CT would, not the patient beyond the scan.
"""
from __future__ import annotations

import numpy as np

from .canvas import Canvas
from .habitus import Body
from .tissues import Tissue


def back_y(b: Body) -> float:
    """World y of the lowest (most posterior) point the patient rests on: back or arms."""
    zs = np.linspace(-b.p.scan_len / 2, b.p.scan_len / 2, 9)
    cy, _, post, _ = b.lean(zs)
    y = float(np.max(cy + post + b.fat(zs)))
    if not b.p.arms_up:
        y = max(y, max(b.p.arm_y) + b.p.arm_r)
    return y + b.p.shift_mm[1] + b.centring_shift()


def paint_table(cv: Canvas, b: Body, hu):
    """A curved couch (a trough, edges higher) under the back, along the whole z range."""
    p = b.p
    if not p.table:
        return
    y_top = back_y(b) + p.table_gap
    y = cv.axes[1][:, None]  # (H, 1) world mm
    x = cv.axes[2][None, :]  # (1, W)
    surface = y_top - x**2 / (2 * p.table_radius)
    sd = np.maximum(np.maximum(surface - y, y - surface - p.table_thick), np.abs(x) - 240.0)
    sd = sd / np.sqrt(1.0 + (x / p.table_radius) ** 2)
    cv.paint((slice(None),) * 3, cv.occupancy(sd)[None], Tissue.TABLE, hu[Tissue.TABLE])


def truncate(cv: Canvas, b: Body, air_hu: float = -1000.0):
    """Air outside the scan range (|z| > scan_len / 2, centred by `prepare`) and outside the
    reconstruction circle; a one-voxel partial-volume ramp at both edges."""
    p = b.p
    z = np.abs(cv.axes[0])[:, None, None]
    y = cv.axes[1][None, :, None] - p.recon_centre[0]
    x = cv.axes[2][None, None, :] - p.recon_centre[1]
    keep = cv.occupancy(z - p.scan_len / 2) * cv.occupancy(np.sqrt(y**2 + x**2) - p.recon_diam / 2)
    cv.hu[...] = air_hu + keep * (cv.hu - air_hu)  # exactly air_hu where keep = 0
    cv.lab[np.broadcast_to(keep, cv.lab.shape) < 0.5] = Tissue.AIR
