"""Writing a reconstruction: the volume (NIfTI, NPY or a DICOM series), a preview, a report.

Every file is written atomically (temp name beside it, then one rename); an existing output
is refused unless asked to overwrite (`check_output`, before any computing); an OSError while
writing becomes a one-line `OutputWriteError` naming the file.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from xray2ct.engine.inference import VIEW_NAMES, ReconstructionError
from xray2ct.errors import UserError
from xray2ct.fileio import atomic_path, fsync_tree, new_temp_folder
from xray2ct.physics.hu import HU_MIN

log = logging.getLogger(__name__)

FORMATS = ("nifti", "npy", "dicom")
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
DICOM_DESCRIPTION = "xray2ct biplanar reconstruction (research use only)"  # LO: <= 64 chars


class OutputExistsError(UserError, FileExistsError):
    """An output file exists and overwrite was not asked for."""


class OutputWriteError(UserError, OSError):
    """Writing an output failed (disk full, permissions); nothing was left under its name."""


def format_of(path: Path, what: str) -> str:
    """"nifti" or "npy", from the file name of `what` (the volume, the uncertainty)."""
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith(".npy"):
        return "npy"
    raise ReconstructionError(f"{path}: cannot tell the {what} format from the name; use .nii.gz, .nii or .npy")


def check_output(path: Path, fmt: str, overwrite: bool) -> None:
    """Refuse, before any computing, an output the format cannot be written to or that exists."""
    if fmt not in FORMATS:
        raise ReconstructionError(f"unknown output format {fmt!r}; valid: {', '.join(FORMATS)}")
    name = path.name.lower()
    if fmt == "nifti" and not name.endswith((".nii", ".nii.gz")):
        raise ReconstructionError(f"{path}: a NIfTI output needs a .nii.gz or .nii name (or pass --format npy/dicom)")
    if fmt == "npy" and not name.endswith(".npy"):
        raise ReconstructionError(f"{path}: an npy output needs a .npy name")
    if fmt == "dicom" and path.is_file():
        if not overwrite:
            raise OutputExistsError(f"{path}: exists and is a file; a DICOM series is written as a folder "
                                    "(pass --overwrite to replace it)")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: already exists; pass --overwrite to replace it")
    if path.exists() and fmt != "dicom" and path.is_dir():
        raise ReconstructionError(f"{path}: is a folder; expected a file name for the {fmt} output")


@contextlib.contextmanager
def _writing(path: Path):
    """Turn an OSError while writing into a one-line user error (the atomic writer has cleaned up)."""
    try:
        yield
    except OSError as e:
        if isinstance(e, UserError):
            raise
        raise OutputWriteError(f"{path}: could not be written ({e.strerror or e}); "
                               "no file was left under this name") from e


def save_npy(path: Path, array: np.ndarray) -> Path:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)
    return path


def save_volume(path: Path, hu: np.ndarray, spacing: tuple, fmt: str, dtype: str = "int16",
                description: str | None = None) -> Path:
    """HU (d, h, w) -> NIfTI (RAS affine), .npy (HU float32; spacing only in the log) or a DICOM folder."""
    from xray2ct.data.ctio import save_nifti

    with _writing(path):
        if fmt == "nifti":
            return save_nifti(path, hu, spacing, dtype=dtype, description=description)
        if fmt == "npy":
            log.info("%s: .npy stores no spacing; it is %s mm (d, h, w)", path, ", ".join(f"{s:g}" for s in spacing))
            return save_npy(path, hu.astype(np.float32))
        return save_dicom_series(path, hu, spacing)


def _lps_affine(shape, spacing) -> np.ndarray:
    """Voxel (d, h, w) -> DICOM patient coordinates (LPS, mm): ctio's RAS affine with x, y negated."""
    from xray2ct.data.ctio import our_affine

    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ our_affine(shape, spacing)


def save_dicom_series(folder: Path, hu: np.ndarray, spacing: tuple, description: str = DICOM_DESCRIPTION) -> Path:
    """HU (d, h, w) -> one CT Image Storage file per axial slice in `folder`, atomically.

    Rows follow h (anterior→posterior), columns follow w (right→left): the standard axial
    orientation (1,0,0 / 0,1,0). Slices go head→feet. Stored values are HU + 1024 as
    uint16 with RescaleIntercept -1024, RescaleSlope 1. The series is written into a temp
    folder beside `folder`, then renamed into place.
    """
    import datetime

    from pydicom.uid import generate_uid

    from xray2ct.data.filmdicom import new_dataset

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    d, h, w = hu.shape
    sd, sh, sw = spacing
    affine = _lps_affine(hu.shape, spacing)
    stored = np.clip(np.rint(hu) - HU_MIN, 0, 65535).astype(np.uint16)  # HU + 1024
    now = datetime.datetime.now()
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    tmp = new_temp_folder(folder)  # also removes the temp folders of a killed earlier write
    try:
        for k in range(d):
            ds = new_dataset(CT_IMAGE_STORAGE)
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
            ds.Modality, ds.Manufacturer = "CT", "xray2ct"
            ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Anonymous", "xray2ct", "", ""
            ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
            ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
            ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
            ds.SeriesNumber, ds.InstanceNumber, ds.AcquisitionNumber = 1, k + 1, 1
            ds.SeriesDescription, ds.KVP = description, ""
            ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
            ds.PositionReferenceIndicator = ""
            position = affine[:3, :3] @ np.array([k, 0, 0]) + affine[:3, 3]  # centre of voxel (k, 0, 0)
            ds.ImagePositionPatient = [f"{v:.10g}" for v in position]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]  # rows along +x (L), columns along +y (P)
            ds.SliceLocation = f"{position[2]:.10g}"
            ds.PixelSpacing = [f"{sh:.10g}", f"{sw:.10g}"]  # (between rows = h, between columns = w)
            ds.SliceThickness = f"{sd:.10g}"
            ds.Rows, ds.Columns = h, w
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = f"{HU_MIN:g}", "1", "HU"
            ds.WindowCenter, ds.WindowWidth = "40", "400"
            ds.PixelData = stored[k].tobytes()
            ds.save_as(tmp / f"slice_{k + 1:04d}.dcm", enforce_file_format=True)
        fsync_tree(tmp)  # every slice on disk before the folder takes the final name
        _replace_folder(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _replace_folder(src: Path, dst: Path) -> None:
    """Move a finished folder to dst; an existing dst is replaced (moved aside, then deleted)."""
    old = None
    if dst.exists():
        old = new_temp_folder(dst, tag="old-")
        os.replace(dst, old / dst.name)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_preview(path: Path, hu: np.ndarray, std_hu: np.ndarray | None = None, title: str | None = None,
                 spacing=(1.0, 1.0, 1.0)) -> Path:
    """Axial, coronal and sagittal mid-slices in HU (and of the uncertainty, when given), one PNG,
    drawn to scale for voxel spacing (d, h, w) in mm."""
    from xray2ct.viz import PLANES, orientation_labels, plane_aspect, plane_slice, save_montage, uncertainty_scale

    panels = [{"image": plane_slice(hu, p), "title": f"CT {p}", "vmin": -1000, "vmax": 1000,
               "colorbar": p == PLANES[-1], "aspect": plane_aspect(spacing, p), "sides": orientation_labels(p)}
              for p in PLANES]
    if std_hu is not None:
        top = uncertainty_scale(std_hu)
        panels += [{"image": plane_slice(std_hu, p), "title": f"uncertainty (std) {p}", "cmap": "viridis",
                    "vmin": 0, "vmax": top, "colorbar": p == PLANES[-1], "aspect": plane_aspect(spacing, p),
                    "sides": orientation_labels(p)} for p in PLANES]
    with _writing(path):
        save_montage(path, panels, ncols=3, title=title, colorbar_label="HU")
    return path


def save_report(path: Path, hu: np.ndarray, std_hu: np.ndarray | None, spacing, xrays,
                mesh=None, title: str | None = None, metrics: dict | None = None,
                projections: str | None = None, details: dict | None = None) -> Path:
    """Self-contained HTML report: inputs, interactive slices, uncertainty, bone surface (mesh: a
    `xray2ct.surface.Mesh` or None), and the physics check (`projection_html`).

    xrays: the inputs, {view name: (S, S) image} (`Reconstruction.input_images`), or a
    (1, 2, S, S) tensor of both views."""
    from xray2ct.report import reconstruction_report

    if isinstance(xrays, torch.Tensor):
        xrays = dict(zip(VIEW_NAMES, xrays[0].numpy()))
    with _writing(path):
        return reconstruction_report(path, hu, spacing, xrays,
                                     std_hu=std_hu, metrics=metrics, mesh=mesh, projections=projections,
                                     title=f"xray2ct reconstruction: {title}" if title else "xray2ct reconstruction",
                                     details={"volume": f"{'×'.join(map(str, hu.shape))} voxels, "
                                              f"{' × '.join(f'{s:.2f}' for s in spacing)} mm", **(details or {})})

