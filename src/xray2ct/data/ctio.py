"""CT volumes in and out: NIfTI, DICOM series, other ITK images, NumPy arrays.

Every loader returns HU as float32 in our axes (d, h, w) = head→feet, anterior→posterior,
patient right→left, i.e. nibabel orientation codes ("I", "P", "L") in RAS+ world, plus the
voxel spacing in mm for (d, h, w). NIfTI and DICOM share one path: build the file's
voxel→RAS affine, then let nibabel.orientations reorient the array. ITK (and so DICOM via
SimpleITK) works in LPS world, which is RAS with x and y negated.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from xray2ct.data.centring import body_center
from xray2ct.data.errors import XRay2CTInputError
from xray2ct.fileio import atomic_path

log = logging.getLogger(__name__)

AXCODES = ("I", "P", "L")  # our (d, h, w) in nibabel's RAS+ convention
HU_AIR, HU_MAX = -1024.0, 3071.0  # 12-bit CT range
MIN_VOXELS = 8  # smallest extent along any axis we accept as a CT volume
NIFTI_SUFFIXES = (".nii", ".nii.gz")
ARRAY_SUFFIXES = (".npy", ".npz")
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _spacing3(spacing, path) -> tuple[float, float, float]:
    s = tuple(float(x) for x in (spacing if np.ndim(spacing) else (spacing,) * 3))
    if len(s) != 3 or not all(np.isfinite(s)) or min(s) <= 0:
        raise XRay2CTInputError(f"{path}: spacing must be one or three positive numbers (mm, d h w), got {spacing!r}")
    return s


# --- orientation --------------------------------------------------------------------
def _to_our_axes(data: np.ndarray, affine_ras: np.ndarray, path) -> tuple[np.ndarray, tuple]:
    """Reorient a 3D array with voxel→RAS affine to (d, h, w); return it and its spacing."""
    import nibabel as nib
    from nibabel import orientations as ornt

    try:
        transform = ornt.ornt_transform(ornt.io_orientation(affine_ras), ornt.axcodes2ornt(AXCODES))
    except Exception as e:  # degenerate affine (zero column, NaN)
        raise XRay2CTInputError(f"{path}: unusable orientation/spacing in the header ({e})") from e
    out = ornt.apply_orientation(data, transform)
    affine = affine_ras @ ornt.inv_ornt_aff(transform, data.shape)
    # Headers hold float32: report the shortest decimal of that value (0.6, not 0.6000000238)
    # so that spacing survives a save/load round trip exactly.
    spacing = tuple(float(np.format_float_positional(np.float32(s), unique=True)) for s in nib.affines.voxel_sizes(affine))
    return np.ascontiguousarray(out, dtype=np.float32), spacing


def our_affine(shape, spacing) -> np.ndarray:
    """Voxel→RAS affine for a (d, h, w) array: d→inferior, h→posterior, w→patient left,
    the volume centred at the world origin."""
    sd, sh, sw = spacing
    affine = np.zeros((4, 4))
    affine[:3, :3] = [[0, 0, -sw], [0, -sh, 0], [-sd, 0, 0]]  # columns: d→-S, h→-A, w→-R
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape, float) - 1) / 2)
    affine[3, 3] = 1
    return affine


def _single_volume(data: np.ndarray, path, what: str) -> np.ndarray:
    """The one 3D volume in `data`; NIfTI stacks volumes on axes 4+ (time), arrays on
    leading axes (batch, channel). Several volumes, or fewer than 3 axes, are an error."""
    if data.ndim > 3:
        spatial, extra = (data.shape[:3], data.shape[3:]) if what == "NIfTI" else (data.shape[-3:], data.shape[:-3])
        if int(np.prod(extra)) > 1:
            raise XRay2CTInputError(
                f"{path}: {data.ndim}D {what} of shape {data.shape} holds {int(np.prod(extra))} volumes; "
                "expected a single 3D CT"
            )
        data = data.reshape(spatial)
    if data.ndim != 3:
        raise XRay2CTInputError(f"{path}: expected a 3D CT volume, got shape {data.shape}")
    return data


# --- readers ------------------------------------------------------------------------
def _load_nifti(path: Path):
    import nibabel as nib

    try:
        img = nib.load(path)
        data = np.asanyarray(img.dataobj, dtype=np.float32)  # applies scl_slope/inter
    except Exception as e:
        raise XRay2CTInputError(f"{path}: cannot read as NIfTI ({type(e).__name__}: {e})") from e
    return _to_our_axes(_single_volume(data, path, "NIfTI"), img.affine, path)


def _sitk_to_ours(image, path):
    """SimpleITK image (LPS world) -> (d, h, w) float32 and spacing."""
    import SimpleITK as sitk

    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise XRay2CTInputError(
            f"{path}: expected a 3D single-channel image, got {image.GetDimension()}D with "
            f"{image.GetNumberOfComponentsPerPixel()} components"
        )
    data = sitk.GetArrayFromImage(image)  # (z, y, x)
    direction = np.asarray(image.GetDirection(), float).reshape(3, 3)  # columns: x, y, z axes
    lps = np.eye(4)
    lps[:3, :3] = (direction * np.asarray(image.GetSpacing()))[:, ::-1]  # columns for (z, y, x)
    lps[:3, 3] = image.GetOrigin()
    return _to_our_axes(data, _LPS_TO_RAS @ lps, path)


def _load_itk_file(path: Path):
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path), sitk.sitkFloat32)
    except RuntimeError as e:
        raise XRay2CTInputError(f"{path}: cannot read as an image ({str(e).strip().splitlines()[-1]})") from e
    return _sitk_to_ours(image, path)


def find_dicom_series(folder: Path) -> list[str]:
    """File names of the DICOM series with the most slices anywhere under `folder`
    (LIDC-style trees nest study/series folders); [] if there is none."""
    import SimpleITK as sitk

    best: list[str] = []
    warn = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # GDCM complains about every non-DICOM file
    try:
        for dirpath, _, files in os.walk(folder):
            if not files:
                continue
            for sid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(dirpath):
                names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(dirpath, sid)
                if len(names) > len(best):
                    best = list(names)
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warn)
    return best


def _load_dicom_folder(folder: Path):
    import SimpleITK as sitk

    if not any(p.is_file() for p in folder.rglob("*")):
        raise XRay2CTInputError(f"{folder}: folder is empty (expected a DICOM series or a CT file)")
    names = find_dicom_series(folder)
    if not names:
        raise XRay2CTInputError(f"{folder}: no DICOM image series found in this folder or below it")
    return load_dicom_series(names, folder)


def load_dicom_series(paths, folder) -> tuple[np.ndarray, tuple]:
    """The slices of one DICOM series (files `paths`, any order) -> HU in our axes, spacing.

    The slice positions are checked first (`dicomseries.slice_geometry`): a missing or
    unevenly placed slice is an error naming `folder`, never a volume with averaged spacing.
    """
    import SimpleITK as sitk

    from xray2ct.data.dicomseries import read_headers, slice_geometry

    geometry = slice_geometry(read_headers(paths), folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(geometry.paths))  # ordered along the slice normal
    reader.SetOutputPixelType(sitk.sitkFloat32)  # rescale slope/intercept applied -> HU
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise XRay2CTInputError(f"{folder}: cannot read DICOM series ({str(e).strip().splitlines()[-1]})") from e
    log.info("%s: read DICOM series of %d slices, %.3g mm apart", folder, len(geometry.paths), geometry.slice_mm)
    return _sitk_to_ours(image, folder)


def _load_array(path: Path, spacing):
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as e:
        raise XRay2CTInputError(f"{path}: cannot read as NumPy array ({type(e).__name__}: {e})") from e
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            keys = [k for k in loaded.files if k != "spacing"]
            if not keys:
                raise XRay2CTInputError(f"{path}: npz archive holds no volume array")
            key = next((k for k in ("ct", "volume") if k in keys), keys[0])
            if spacing is None and "spacing" in loaded.files:
                spacing = loaded["spacing"].tolist()
            loaded = loaded[key]
    if spacing is None:
        raise XRay2CTInputError(
            f"{path}: .npy/.npz volumes carry no voxel spacing; pass spacing=(d, h, w) in mm "
            "(or store a 'spacing' array in the .npz)"
        )
    if not np.issubdtype(loaded.dtype, np.number):
        raise XRay2CTInputError(f"{path}: array dtype {loaded.dtype} is not numeric")
    data = _single_volume(np.asarray(loaded), path, "array").astype(np.float32)
    return np.ascontiguousarray(data), _spacing3(spacing, path)


def load_volume(path: str | os.PathLike, spacing=None) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Read a CT as HU in our (d, h, w) axes.

    Args:
        path: .nii/.nii.gz, .mha/.mhd/.nrrd, a DICOM series folder (searched recursively;
            the series with most slices wins; a missing or unevenly placed slice is an
            error), or .npy/.npz already in (d, h, w) axes.
        spacing: voxel spacing (mm; one number or (d, h, w)) for .npy/.npz, which store
            none (an .npz may hold a 'spacing' array instead). NIfTI, DICOM and ITK
            headers carry their own and this argument is ignored for them.

    Returns:
        (hu, spacing): float32 array (D, H, W) and its spacing in mm (d, h, w).
    """
    path = Path(path)
    if not path.exists():
        raise XRay2CTInputError(f"{path}: no such file or folder")
    suffix = _suffix(path)
    if path.is_dir():
        hu, sp = _load_dicom_folder(path)
    elif suffix in NIFTI_SUFFIXES:
        hu, sp = _load_nifti(path)
    elif suffix in ARRAY_SUFFIXES:
        hu, sp = _load_array(path, spacing)
    elif suffix in ITK_SUFFIXES:
        hu, sp = _load_itk_file(path)
    elif suffix in (".dcm", ".ima"):
        raise XRay2CTInputError(f"{path}: a single DICOM file; pass the folder that holds the whole series")
    else:
        valid = ", ".join(NIFTI_SUFFIXES + ARRAY_SUFFIXES + ITK_SUFFIXES)
        raise XRay2CTInputError(f"{path}: unsupported file type {suffix or '(none)'!r}; expected {valid} or a DICOM folder")
    if not np.isfinite(hu).all():
        raise XRay2CTInputError(f"{path}: volume contains {int((~np.isfinite(hu)).sum())} NaN or infinite values")
    return hu, _spacing3(sp, path)


def save_nifti(path: str | os.PathLike, hu: np.ndarray, spacing, dtype: str | None = None,
               description: str | None = None) -> Path:
    """Write HU in (d, h, w) axes as NIfTI with a correct RAS affine, atomically.

    Args:
        dtype: "int16" (rounded, clipped to the int16 range), "float32", or None: int16
            when every value already is an int16 integer, else float32 (lossless either way).
        description: the header's `descrip` (at most 80 characters; longer is cut).
    """
    import nibabel as nib

    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"save_nifti expects a 3D (d, h, w) array, got shape {hu.shape}")
    if dtype is None:
        is_int = np.all(np.mod(hu, 1) == 0) and hu.min() >= -32768 and hu.max() <= 32767
        dtype = "int16" if is_int else "float32"
    if dtype == "int16":
        data = np.clip(np.rint(hu), -32768, 32767).astype(np.int16)
    elif dtype == "float32":
        data = hu.astype(np.float32)
    else:
        raise ValueError(f"dtype must be 'int16', 'float32' or None, got {dtype!r}")
    affine = our_affine(hu.shape, _spacing3(spacing, path))
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)  # scanner coordinates; Slicer reads qform first
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    img.header.set_slope_inter(1.0, 0.0)
    if description:
        img.header["descrip"] = description.encode("ascii", "replace")[:80]
    path = Path(path)
    with atomic_path(path) as tmp:
        nib.save(img, tmp)
    return path


# --- preprocessing ------------------------------------------------------------------
def preprocess(hu: np.ndarray, spacing, size: int = 64, fov_mm: float = 320.0, *, name: str = "volume") -> np.ndarray:
    """Crop/pad a cube of fov_mm centred on the body, resample it to size³, clip HU.

    The result is isotropic with spacing fov_mm / size. Cropping happens first so the
    full CT is never resampled as a whole. Downsampling is anti-aliased: block means by
    the largest whole factor (cheap and exact), then skimage's resize, which low-pass
    filters the remaining < 2x and, unlike MONAI's Resize, pads that filter by edge
    replication, so the border is not pulled towards 0 HU.

    Args:
        hu: (D, H, W) HU in our axes.  spacing: mm (d, h, w).
        size: output voxels per side.  fov_mm: side of the cube, mm.
        name: what to call the volume in error messages (the file name).
    """
    from skimage.measure import block_reduce
    from skimage.transform import resize

    hu = np.asarray(hu, dtype=np.float32)
    spacing = _spacing3(spacing, name)
    if hu.ndim != 3 or min(hu.shape) < MIN_VOXELS:
        raise XRay2CTInputError(f"{name}: volume of shape {hu.shape} is too small; need >= {MIN_VOXELS} voxels per axis")
    if size < 1 or fov_mm <= 0:
        raise ValueError(f"size ({size}) and fov_mm ({fov_mm}) must be positive")
    center = body_center(hu, spacing, name=name)
    block = [max(1, int(fov_mm / size / s)) for s in spacing]  # whole downsampling factor per axis
    n = [b * max(1, round(fov_mm / (s * b))) for s, b in zip(spacing, block)]  # crop: fov_mm, whole blocks
    start = [round(c - (k - 1) / 2) for c, k in zip(center, n)]
    cube = np.full(n, HU_AIR, dtype=np.float32)  # outside the scan is air
    src = tuple(slice(max(a, 0), min(a + k, dim)) for a, k, dim in zip(start, n, hu.shape))
    dst = tuple(slice(s.start - a, s.stop - a) for s, a in zip(src, start))
    cube[dst] = hu[src]
    if max(block) > 1:
        cube = block_reduce(cube, tuple(block), np.mean)
    out = resize(cube, (size,) * 3, order=1, anti_aliasing=True, preserve_range=True, mode="edge")
    return np.clip(out, HU_AIR, HU_MAX).astype(np.float32)
