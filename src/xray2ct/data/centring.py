"""Where to cut the model's cube from a CT: around the patient, as the training phantoms are.

The phantoms are centred on the body alone, couch left out (`phantoms.habitus.Body.centring_shift`,
±8 mm jitter), over a chest scan of 250-400 mm centred head-feet on its middle. A real CT is cut
the same way: the bounding box of the patient (`body_center`), found on a grid fine enough that
the pad between back and couch separates them, and, for a scan longer than any chest scan, the
chest rather than the scan's middle. `prepare` records which way its cubes were cut (`CENTRING`).
"""
from __future__ import annotations

import logging

import numpy as np

from xray2ct.data.errors import XRay2CTInputError

log = logging.getLogger(__name__)

BODY_HU = -500.0  # above this: tissue, below: air and lung periphery
BODY_GRID_MM = 3.0  # the grid `body_center` finds the patient on
BODY_OPEN_MM = 6.0  # ... and the radius of its opening in each axial slice
# A scan longer than the phantoms' longest (params.scan_len: 250-400 mm, and a margin for the edge
# ramps on the grid; a chest-abdomen-pelvis CT) is centred as theirs are on average below the lung
# apex (scan_len / 2 - above_apex, 45-195 mm), not on its middle, which would put the cube in the abdomen.
CHEST_SCAN_MAX_MM = 420.0
APEX_TO_CENTRE_MM = 120.0
LUNG_MIN_MM2 = 5000.0  # air inside the body on the lungs' widest slice: at least 50 cm²

# Where the cube is cut (`body_center`); a folder whose prepare.json does not say was cut
# around the body and any couch within a centimetre of the back, and takes no new cases.
CENTRING = "body without couch"
CENTRING_BEFORE = "body and couch (before 2026-12-01)"


def body_center(hu: np.ndarray, spacing, step_mm: float = BODY_GRID_MM, name: str = "volume") -> np.ndarray:
    """Centre (voxel index, float (3,)) of the patient's bounding box: the largest connected region
    with HU > BODY_HU, after each axial slice is opened by a disk of BODY_OPEN_MM radius.

    The couch must not count: the phantoms the model learned from are centred on the body alone
    (`phantoms.habitus.Body.centring_shift`), and a couch in the box moves the cube 10-25 mm
    towards the back (on phantoms filmed from a 480 mm field: 22.44 dB against 23.11 dB with the
    couch left out, the worst case 19.2 against 23.3; docs/RESULTS.md). Two things keep it out:
    a grid of ~step_mm, fine enough that the pad or gap between back and couch separates them
    (at 10 mm it bridged gaps of a centimetre), and the opening, which removes plates and lines
    thinner than twice its radius (a couch's carbon shell, leads) and cuts thin contacts. It is
    computed on that grid, not at full resolution: a label image of a whole CT takes gigabytes.

    A scan longer than any chest scan the phantoms have (`CHEST_SCAN_MAX_MM`: chest-abdomen,
    whole-body) is centred head-feet where theirs are on average, `APEX_TO_CENTRE_MM` below the
    lung apex, so the cube holds the chest; with no lungs found, on its middle, with a warning.
    """
    from scipy import ndimage

    stride = [max(1, int(step_mm // s)) for s in spacing]
    grid = [s * st for s, st in zip(spacing, stride)]
    mask = hu[:: stride[0], :: stride[1], :: stride[2]] > BODY_HU
    radius = [int(BODY_OPEN_MM // g) for g in grid[1:]]  # voxels along h, w; 0 on a coarse grid: no opening
    if min(radius) > 0:
        yy, xx = np.ogrid[-radius[0]:radius[0] + 1, -radius[1]:radius[1] + 1]
        opened = ndimage.binary_opening(mask, structure=((yy / radius[0]) ** 2 + (xx / radius[1]) ** 2 <= 1)[None])
        mask = opened if opened.any() else mask  # a body thinner than the disk everywhere: keep it as it is
    labels, n = ndimage.label(mask)
    if n == 0:
        raise XRay2CTInputError(f"{name}: no body found (no voxel above {BODY_HU:.0f} HU)")
    largest = 1 + int(np.argmax(ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))))
    box = ndimage.find_objects(labels)[largest - 1]
    centre = np.array([(b.start + b.stop - 1) / 2 * st for b, st in zip(box, stride)])
    length_mm = (box[0].stop - box[0].start) * grid[0]
    if length_mm > CHEST_SCAN_MAX_MM:  # longer than any chest scan it learned
        apex = _lung_apex(labels[box] == largest, grid)
        if apex is None:
            log.warning("%s: a scan of %.0f mm with no lungs found; the cube is centred on its middle", name,
                        length_mm)
        else:  # where the phantoms' cubes sit below the apex, kept inside the scan
            lo, hi = box[0].start * stride[0], (box[0].stop - 1) * stride[0]
            centre[0] = float(np.clip((box[0].start + apex) * stride[0] + APEX_TO_CENTRE_MM / spacing[0], lo, hi))
            log.warning("%s: a scan of %.0f mm, longer than a chest scan; the cube is centred on the chest, %.0f mm "
                        "below the lung apex (%.0f mm from the scan's top)", name, length_mm, APEX_TO_CENTRE_MM,
                        apex * grid[0])
    return centre


def _lung_apex(body: np.ndarray, grid) -> int | None:
    """The first axial slice (index into body, (D, H, W) bool) of the lungs, or None.

    The lungs are the air inside the body's outline, slice by slice; their widest slice holds far
    more of it than anything else a scan shows (airway, sinuses, bowel gas). Going up from there,
    the apex is where that air falls under 5 % of its widest.
    """
    from scipy import ndimage

    inside = ndimage.binary_fill_holes(body, structure=ndimage.generate_binary_structure(2, 1)[None]) & ~body
    area_mm2 = inside.sum(axis=(1, 2)) * grid[1] * grid[2]  # (D,)
    widest = int(np.argmax(area_mm2))
    if area_mm2[widest] < LUNG_MIN_MM2:
        return None
    above = np.nonzero(area_mm2[:widest] < 0.05 * area_mm2[widest])[0]
    return int(above[-1]) + 1 if above.size else 0
