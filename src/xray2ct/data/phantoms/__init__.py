"""Procedural chest CT phantoms: HU volumes (and tissue labels) with random anatomy.

`chest_phantom(size, seed, version=2)`; version 1 is the first generator (one tidy torso,
the first weights' data, byte-identical per seed), version 2 the default (adult habitus,
arms, scan coverage, couch, contrast, chambers, abdomen, disease, devices), version 3 v2's
anatomy seed for seed with a skeleton of published cortex thicknesses and trabecular HU
(`skeleton`: 0.7 of v2's bone mass; two real chest CTs hold about half; weights trained on
it did better on phantoms and worse on those CTs), version 4 v2's anatomy seed for seed
through a smooth random warp (`warp`: shapes beyond the parameters' family, painted at twice
the resolution and averaged down; the bundled weights' data), version 5 v4's waves with a
larger amplitude (4-16 mm instead of 0-12: every phantom deformed).

Modules, bottom-up: `tissues` (labels, HU tables), `shapes` (signed distances in mm),
`canvas` (the grid, partial-volume painting, batched tubes); v2's `params` (the
distribution), `habitus` (outline, landmarks), `limbs`, `lungs`, `mediastinum`, `abdomen`,
`spine`, `ribs`, `skeleton` (how densely bone is built), `disease`, `coverage` (scan range,
reconstruction circle, couch), `warp` (a smooth random deformation), `v2` (and v3, v4);
`v1` (it borrows the vessel trees, airways, ribs and vertebrae of `lungs`, `ribs`, `spine`).
"""
from __future__ import annotations

import time

import numpy as np

from .canvas import margins
from .tissues import Tissue
from .params import PhantomParamsV2
from .v1 import PhantomParams, chest_phantom_v1
from .v2 import chest_phantom_v2, chest_phantom_v3, chest_phantom_v4, chest_phantom_v5

GENERATORS = {1: chest_phantom_v1, 2: chest_phantom_v2, 3: chest_phantom_v3, 4: chest_phantom_v4,
              5: chest_phantom_v5}
VERSIONS = tuple(GENERATORS)

__all__ = ["GENERATORS", "PhantomParams", "PhantomParamsV2", "Tissue", "VERSIONS", "chest_phantom",
           "phantoms_per_second"]


def chest_phantom(size: int = 64, seed: int = 0, fov_mm: float = 320.0, return_labels: bool = False,
                  version: int = 2, margin=0):
    """A random chest CT phantom in HU.

    Args:
        size: voxels per side of the cube.
        seed: anatomy seed; the same seed gives the same anatomy at every size.
        fov_mm: side of the cube, mm (voxel spacing fov_mm / size, origin at the centre).
        return_labels: also return the `Tissue` label of each voxel.
        version: generator, one of `VERSIONS`.
        margin: voxels (int, or (d, h, w)) added on each side at the same spacing: the body
            continues there instead of being cut; the central size³ crop equals margin=0.

    Returns:
        hu: (size + 2 md, size + 2 mh, size + 2 mw) float32, axes (d, h, w) = head→feet,
            anterior→posterior, patient right→left; and labels (same shape, uint8) when
            return_labels.
    """
    if int(size) != size or size < 4:
        raise ValueError(f"size must be an integer >= 4, got {size!r}")
    if not fov_mm > 0:
        raise ValueError(f"fov_mm must be positive, got {fov_mm!r}")
    if version not in GENERATORS:
        raise ValueError(f"unknown phantom version {version!r}; valid: {', '.join(map(str, VERSIONS))}")
    hu, lab = GENERATORS[version](int(size), seed, float(fov_mm), margins(margin))
    return (hu, lab) if return_labels else hu


def phantoms_per_second(size: int = 64, n: int = 5, version: int = 2) -> float:
    """Phantoms generated per second at `size`³ on this machine (one warm-up call first)."""
    chest_phantom(size=size, seed=0, version=version)
    t0 = time.perf_counter()
    for i in range(n):
        chest_phantom(size=size, seed=i + 1, version=version)
    return n / (time.perf_counter() - t0)
