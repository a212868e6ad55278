"""Analytic shapes in patient millimetres: approximate signed distances (mm, negative
inside) and the small curve helpers the anatomy is built from."""
from __future__ import annotations

import numpy as np


def ellipse_sd(offsets, axes, amin: float | None = None):
    """Approximate signed distance (mm) to an axis-aligned ellipse/ellipsoid:
    (r - 1) / |grad r| with r the normalized radius, exact on the surface.

    amin: the smallest semi-axis, for the epsilon at the centre; by default taken from
    `axes`, which (when they are arrays over a painted box) makes the result depend on the
    box in the last bits. v2 passes it, so a wider grid paints the same values exactly."""
    u2, g2 = 0.0, 0.0
    for o, ax in zip(offsets, axes):
        q = o / ax
        u2 = u2 + q * q
        g2 = g2 + (q / ax) ** 2
    # r / |grad r| = sqrt(u2 / g2) lies between the smallest and largest semi-axis; the
    # epsilons make it the smallest at the centre, where it is 0/0.
    if amin is None:
        amin = min(float(np.min(ax)) for ax in axes)
    return (np.sqrt(u2) - 1.0) * np.sqrt((u2 + 1e-6) / (g2 + 1e-6 / amin**2))


def superellipse_sd(y, x, a_ant, a_post, b, power):
    """Approximate signed distance (mm) to the cross-section |y/a|^p + |x/b|^p = 1 with a
    different y semi-axis in front (y < 0, `a_ant`) and behind (`a_post`): a torso is
    squarer than an ellipse (p > 2) and flatter at the back than at the front.

    (r - 1) / |grad r| as in `ellipse_sd`; all arguments broadcast."""
    a = np.where(y < 0, a_ant, a_post)
    qy, qx = np.abs(y) / a + 1e-6, np.abs(x) / b + 1e-6
    # Three powers instead of five: r^p = s, so r^(p-1) = s / r and d r / d q = q^(p-1) r / s.
    py, px = qy ** (power - 1), qx ** (power - 1)
    s = py * qy + px * qx
    r = s ** (1.0 / power)
    k = r / s
    gy, gx = py * k / a, px * k / b
    return (r - 1.0) / np.sqrt(gy**2 + gx**2)


def polyline(points, radii):
    """Capsule segments (a, b, radius_a, radius_b) joining consecutive points (mm)."""
    pts = [np.asarray(q, np.float64) for q in points]
    return [(pts[i], pts[i + 1], radii[i], radii[i + 1]) for i in range(len(pts) - 1)]


def smoothstep(t):
    """0 below 0, 1 above 1, a C1 ramp between."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def rotation_frame(e1) -> np.ndarray:
    """(3, 3) orthonormal rows (e1, e2, e3) in (z, y, x), e1 the given axis direction."""
    e1 = np.asarray(e1, np.float64) / np.linalg.norm(e1)
    helper = np.array([1.0, 0.0, 0.0]) if abs(e1[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e2 = np.cross(e1, helper)
    e2 /= np.linalg.norm(e2)
    return np.stack([e1, e2, np.cross(e1, e2)])


def oriented_ellipsoid_sd(z, y, x, centre, frame, axes):
    """Signed distance to an ellipsoid with semi-axes `axes` along the rows of `frame`."""
    d = (z - centre[0], y - centre[1], x - centre[2])
    local = [f[0] * d[0] + f[1] * d[1] + f[2] * d[2] for f in frame]
    return ellipse_sd(local, tuple(axes))
