"""Chest phantoms v2: a distribution meant to cover adult chest CTs as `xray2ct prepare`
cuts them (habitus and sex, arms up or down, scan range, reconstruction circle, couch,
contrast, heart chambers and great vessels, two domes and the upper abdomen, lung disease,
rare devices). The same painting machinery as v1 (`canvas`, `shapes`): analytic shapes in
mm with partial-volume edges, so one seed gives the same anatomy at any resolution, and a
grid with a margin holds the margin-free grid exactly in its centre.

Version 3 is this anatomy, seed for seed, with the skeleton built to the published cortex
thicknesses and trabecular HU (`skeleton`): 0.7 of v2's bone mass at 64³. Version 4 is this
anatomy, seed for seed, deformed by a smooth random warp (`warp`): shapes beyond the
parameters' family; version 5 the same waves with a larger amplitude, every phantom deformed.
"""
from __future__ import annotations

import math

import numpy as np

from . import abdomen, coverage, disease, habitus, limbs, lungs, mediastinum, ribs, spine
from .canvas import Canvas, voxel_axes
from .params import PhantomParamsV2
from .skeleton import V2_BONES, V3_BONES, BoneBuild
from .tissues import TEXTURE_HU_V2, Tissue
from .warp import AMPLITUDE_MM, AMPLITUDE_V5_MM, Warp, apply, downsample


def chest_phantom_v2(size: int, seed: int, fov_mm: float, margin=(0, 0, 0), build: BoneBuild = V2_BONES,
                     warp: Warp | None = None):
    """(hu, labels), each (size + 2 md, size + 2 mh, size + 2 mw): see `chest_phantom`.
    warp: deform the painted patient (and couch) before the scanner's cut (`chest_phantom_v4`)."""
    rng = np.random.default_rng(seed)
    p = PhantomParamsV2.draw(rng)
    b = habitus.Body(p)
    # Every random draw happens before painting, so the anatomy does not depend on the grid.
    vessels = lungs.vessel_segments(rng, [lungs.hilum(b, side) for side in (-1.0, 1.0)])
    pockets = abdomen.colon_pockets(rng, b)
    lesions = disease.draw_lesions(rng, b)
    texture_rng = np.random.default_rng(rng.integers(2**63))
    shift = (p.shift_mm[0], p.shift_mm[1] + b.centring_shift(), p.shift_mm[2])
    cv = Canvas(size, fov_mm, p.rotation_deg, shift, margin)
    hu = build.tissue_hu(p.hu)
    coverage.paint_table(cv, b, hu)
    limbs.paint_arms(cv, b, hu)
    habitus.paint_body(cv, b, hu)
    abdomen.paint_abdomen(cv, b, hu, pockets)
    mediastinum.paint_mediastinal_fat(cv, b, hu)
    lung = lungs.paint_lungs(cv, b, hu, emphysema="emphysema" in p.diseases)
    lungs.paint_vessels(cv, b, hu, vessels, lung)
    lungs.paint_airways(cv, b, hu)
    disease.paint_disease(cv, b, hu, lesions, lung)
    heart = mediastinum.Heart(b)
    mediastinum.paint_heart(cv, b, hu, heart)
    mediastinum.paint_great_vessels(cv, b, hu, heart)
    spine.paint_spine(cv, b, hu, build)
    ribs.paint_ribs_and_sternum(cv, b, hu, build)
    limbs.paint_arm_bones(cv, b, hu, build)
    disease.paint_devices(cv, b, hu, heart)
    amp = np.zeros(len(Tissue), np.float32)
    for t, a in TEXTURE_HU_V2.items():
        amp[t] = a
    cv.hu += amp[cv.lab] * cv.texture(texture_rng)
    if warp is not None:
        cv.hu, cv.lab = apply(cv.hu, cv.lab, cv.axes, warp)
    coverage.truncate(cv, b)
    np.clip(cv.hu, -1024.0, 3071.0, out=cv.hu)
    return cv.hu, cv.lab


def chest_phantom_v3(size: int, seed: int, fov_mm: float, margin=(0, 0, 0)):
    """v2's anatomy for the seed with the skeleton of `skeleton.V3_BONES`: see `chest_phantom`."""
    return chest_phantom_v2(size, seed, fov_mm, margin, build=V3_BONES)


def chest_phantom_v4(size: int, seed: int, fov_mm: float, margin=(0, 0, 0), amplitude_mm=AMPLITUDE_MM):
    """v2's anatomy for the seed through the seed's smooth random warp (`warp`), painted at
    twice the resolution with a pad the warp may reach into, and averaged down: see `chest_phantom`."""
    w = Warp.draw(seed, amplitude_mm)
    vox = fov_mm / size
    axes = voxel_axes(size, fov_mm, margin)
    reach = float(np.abs(w.displacement(*np.meshgrid(*axes, indexing="ij", sparse=True))).max())
    pad = math.ceil(reach / vox) + 1  # D moves < 1 voxel between neighbouring voxel centres
    hu, lab = downsample(*chest_phantom_v2(2 * size, seed, fov_mm, tuple(2 * (m + pad) for m in margin), warp=w))
    inner = (slice(pad, -pad),) * 3
    return np.ascontiguousarray(hu[inner]), np.ascontiguousarray(lab[inner])


def chest_phantom_v5(size: int, seed: int, fov_mm: float, margin=(0, 0, 0)):
    """v4 with the warp's amplitude drawn from `AMPLITUDE_V5_MM`: the same waves, larger."""
    return chest_phantom_v4(size, seed, fov_mm, margin, amplitude_mm=AMPLITUDE_V5_MM)
