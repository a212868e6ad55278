"""Preprocessing presets of `xray2ct prepare`: how a CT in HU becomes a dataset cube.

  ours  a fov_mm cube around the body, anti-aliased straight to size³ (ctio.preprocess),
        HU kept from air to the 12-bit top (-1024 … 3071). Any size.
  x2ct  X2CT-GAN's LIDC-IDRI preprocessing (Ying et al., CVPR 2019, section 4): the CT
        resampled to 1 mm isotropic, a 320 mm cube cropped around the body, resized to
        128³ (2.5 mm voxels), HU in its window -1024 … 1476 (n = (HU + 1024) / 2500 in
        [0, 1]). Fixed size and field of view, so results sit beside the published tables.
        Not bit-identical to their scripts (kylekma/X2CT `CT2XRAY/ctpro.py`, and a loader
        that resizes their stored 256³ volumes to 128³): they remove the table with a body
        mask, resample with a cubic spline and crop the image centre in-plane and the last
        320 mm along z; we keep the table, resample trilinearly (anti-aliased on the way
        down) and centre the cube on the body in all three axes.
Both render the DRRs with our geometry (`layout.write_case`), not X2CT-GAN's DRRs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from xray2ct.data.centring import CENTRING, body_center
from xray2ct.data.ctio import HU_AIR, HU_MAX, preprocess
from xray2ct.data.errors import XRay2CTInputError


@dataclass(frozen=True)
class Preset:
    name: str
    size: int  # voxels per side of the output cube
    xray_size: int  # DRR pixels per side
    fov_mm: float  # side of the cube, mm
    resample_mm: float | None  # first resample to this isotropic spacing (None: straight to size³)
    hu_window: tuple[float, float]  # HU clipped to this on disk
    fixed: tuple[str, ...] = ()  # settings that define the preset: a user may not change them

    def settings(self) -> dict:
        """What a dataset folder records about how its cases were made (`prepare.json`)."""
        d = asdict(self)
        d.pop("fixed")
        return {"preset": d.pop("name"), **d, "hu_window": list(self.hu_window), "centring": CENTRING}


PRESETS = {
    "ours": Preset("ours", size=64, xray_size=256, fov_mm=320.0, resample_mm=None, hu_window=(HU_AIR, HU_MAX)),
    "x2ct": Preset("x2ct", size=128, xray_size=256, fov_mm=320.0, resample_mm=1.0, hu_window=(-1024.0, 1476.0),
                   fixed=("size", "fov_mm")),
}


def resolve_preset(name: str, size: int | None = None, xray_size: int | None = None,
                   fov_mm: float | None = None) -> Preset:
    """The preset `name` with the settings the user gave (None: the preset's own).

    Raises XRay2CTInputError for an unknown name or a change to a setting the preset fixes.
    """
    if name not in PRESETS:
        raise XRay2CTInputError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    preset = PRESETS[name]
    given = {"size": size, "xray_size": xray_size, "fov_mm": fov_mm}
    changed = {k: v for k, v in given.items() if v is not None and v != getattr(preset, k)}
    fixed = [f"{k} {getattr(preset, k):g} (asked: {changed[k]:g})" for k in preset.fixed if k in changed]
    if fixed:
        raise XRay2CTInputError(f"preset {name!r} fixes {', '.join(fixed)}: that is what makes its results comparable; "
                                "use --preset ours for other sizes")
    return Preset(**{**asdict(preset), **changed})


def make_cube(hu: np.ndarray, spacing, preset: Preset, name: str = "volume") -> np.ndarray:
    """(D, H, W) HU at `spacing` (mm, d h w) -> (size, size, size) float32 HU, the preset's way."""
    if preset.resample_mm is None:
        cube = preprocess(hu, spacing, size=preset.size, fov_mm=preset.fov_mm, name=name)
    else:
        n = int(round(preset.fov_mm / preset.resample_mm))
        fine = resample_cube(hu, spacing, body_center(hu, spacing, name=name), preset.resample_mm, n)
        cube = shrink(fine, preset.size)
    return np.clip(cube, *preset.hu_window).astype(np.float32)


def resample_cube(hu: np.ndarray, spacing, center, step_mm: float, n: int) -> np.ndarray:
    """(D, H, W) HU -> (n, n, n) float32 at step_mm isotropic, centred on voxel `center`
    (float index, (3,)); trilinear, air outside the scan.

    Samples only the cube, so the whole CT is never resampled (a 0.6 mm CT at 1 mm would
    be ~3x the memory of the cube).
    """
    from scipy import ndimage

    step = step_mm / np.asarray(spacing, dtype=np.float64)  # input voxels per output voxel, per axis
    offset = np.asarray(center, dtype=np.float64) - step * (n - 1) / 2  # input index of output voxel 0
    return ndimage.affine_transform(np.asarray(hu, dtype=np.float32), step, offset=offset, output_shape=(n,) * 3,
                                    order=1, mode="constant", cval=HU_AIR, output=np.float32)


def shrink(cube: np.ndarray, size: int) -> np.ndarray:
    """(n, n, n) -> (size, size, size), anti-aliased like `ctio.preprocess`: block means by the
    largest whole factor that divides n, then skimage's anti-aliased resize for the rest."""
    from skimage.measure import block_reduce
    from skimage.transform import resize

    n = cube.shape[0]
    block = max(b for b in range(1, max(1, n // size) + 1) if n % b == 0)
    if block > 1:
        cube = block_reduce(cube, (block,) * 3, np.mean)
    return resize(cube, (size,) * 3, order=1, anti_aliasing=True, preserve_range=True, mode="edge").astype(np.float32)
