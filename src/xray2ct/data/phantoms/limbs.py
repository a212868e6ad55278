"""v2 shoulders and arms: soft tissue of the shoulder girdle and arms (down beside the body
or raised above the head, each side on its own), humeri and forearm bones, clavicles and
scapulae. Patient mm, frames as in `params`."""
from __future__ import annotations

import numpy as np

from .canvas import Canvas
from .habitus import Body
from .shapes import polyline
from .skeleton import BoneBuild
from .tissues import Tissue

ARM_LENGTH = 290.0  # shoulder joint to elbow, adult (~ 0.19 × height)
FOREARM_LENGTH = 250.0


def shoulder_joint(b: Body, side: float) -> np.ndarray:
    """(z, y, x) of the glenohumeral joint: lateral of the rib cage (biacromial breadth
    ~ 36–41 cm); raising the arm lifts the shoulder."""
    z = b.shoulder_z + (-15.0 if b.p.arms_up else 20.0)
    _, _, _, cw = (float(v) for v in b.cavity(z + 40.0))
    return np.array([z, 0.1 * b.ah, side * (cw + 42.0)])


def _arm_path(b: Body, side: float) -> list[np.ndarray]:
    """Joint, elbow and wrist of one arm."""
    p = b.p
    k = 0 if side < 0 else 1
    joint = shoulder_joint(b, side)
    if p.arms_up:  # beside the head, elbow out by `arm_spread` from the neck
        elbow = np.array([joint[0] - ARM_LENGTH, p.arm_y[k], side * (p.neck[1] + p.arm_spread[k])])
        wrist = elbow + np.array([-FOREARM_LENGTH, 0.0, -side * 0.5 * p.arm_spread[k]])
    else:  # beside the body, `arm_spread` between skin and arm
        z = joint[0] + ARM_LENGTH
        _, _, _, aw = b.lean(z)
        elbow = np.array([z, p.arm_y[k], side * (float(aw) + float(b.fat(z)) + p.arm_r + p.arm_spread[k])])
        wrist = elbow + np.array([FOREARM_LENGTH, -40.0, -side * 25.0])
    return [joint, elbow, wrist]


def paint_arms(cv: Canvas, b: Body, hu):
    """Soft tissue of the shoulder girdle and arms (fat over muscle). Painted before the
    torso so that the torso's own layers win where they overlap."""
    p = b.p
    r = p.arm_r
    fat = 3.0 + 0.4 * p.fat_mm
    segs = []
    for side in (-1.0, 1.0):
        joint, elbow, wrist = _arm_path(b, side)
        # Trapezius and deltoid: from the base of the neck to over the humeral head.
        neck_base = np.array([b.shoulder_z - 10.0, 15.0, side * 35.0])
        segs += polyline([neck_base, joint], [45.0, 1.1 * r])
        segs += polyline([joint, elbow, wrist], [1.1 * r, 0.75 * r, 0.5 * r])
    # Six limb-sized tubes: one patch each (a batch would pad them all to the largest).
    cv.paint_tubes(segs, [(Tissue.FAT, hu[Tissue.FAT], 0.0), (Tissue.MUSCLE, hu[Tissue.MUSCLE], fat)], chunk=1)


def paint_arm_bones(cv: Canvas, b: Body, hu, build: BoneBuild):
    """Humeri (head, shaft), forearm bones, clavicles and scapulae."""
    bones = []
    for side in (-1.0, 1.0):
        joint, elbow, wrist = _arm_path(b, side)
        bones += [(joint, joint, 23.0, 23.0)]  # humeral head: a ball (zero-length capsule)
        bones += polyline([joint + 0.08 * (elbow - joint), elbow], [13.0, 10.0])
        for off in (-9.0, 9.0):  # radius and ulna
            shift = np.array([0.0, off, 0.0])
            bones += polyline([elbow + shift, wrist + 0.5 * shift], [7.0, 6.0])
        # Clavicle: from the manubrium out, back and up to the acromion over the joint.
        top = b.sternum_top
        ys = float(b.front_y(top)) + float(b.fat(top)) + 8.0
        acromion = joint + np.array([-28.0, -5.0, -side * 12.0])
        clav = [[top + 4, ys + 2, side * 20], [top - 3, ys + 6, side * 55],
                0.5 * (np.array([top - 3, ys + 6, side * 55]) + acromion) + [0.0, 8.0, 0.0], acromion]
        bones += polyline(clav, [6.5] * 4)
    layers = [(Tissue.CORTICAL, hu[Tissue.CORTICAL], 0.0), (Tissue.CANCELLOUS, hu[Tissue.CANCELLOUS], 2.5)]
    cv.paint_tubes(bones, layers, chunk=1)
    _paint_scapulae(cv, b, hu, build)


def _paint_scapulae(cv: Canvas, b: Body, hu, build: BoneBuild):
    """Thin triangular plates over the posterior ribs, narrowing downward; raising the arm
    rotates the lower angle outward."""
    s_top = b.shoulder_z + (-10.0 if b.p.arms_up else 5.0)
    s_bot = s_top + 145.0
    tip = 90.0 if b.p.arms_up else 55.0

    def scapula(z, y, x, side):
        shell = np.abs(b.cavity_sd(z, y, x, grow=15.0)) - build.scapula_half_mm
        f = np.clip((z - s_top) / (s_bot - s_top), 0.0, 1.0)
        _, _, _, cw = b.cavity(z)
        lateral = (cw + 5.0) * (1 - f) + tip * f
        inside = np.maximum(np.maximum(40.0 - side * x, side * x - lateral), np.maximum(s_top - z, z - s_bot))
        return np.maximum(np.maximum(shell, inside), -y)

    for side in (-1.0, 1.0):
        box = ((s_top, 0, min(0, side * 300)), (s_bot, 300, max(0, side * 300)))
        cv.paint_sd(box, lambda z, y, x, s=side: scapula(z, y, x, s), Tissue.CORTICAL,
                    build.scapula_fraction * hu[Tissue.CORTICAL])
