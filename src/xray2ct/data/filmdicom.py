"""Write a radiograph as a clinical digital X-ray (DX) DICOM file, with the acquisition tags
a hospital system records: what `reconstruct` reads back (`xray2ct.acquisition`).

Used for the bundled examples and for tests: a DRR rendered at a real acquisition (e.g.
1800 mm, a 430 mm cassette) saved the way a film arrives, 12-bit, MONOCHROME1 if asked
(air white, as many CR/DX systems store it), with the window that displays it.
"""
from __future__ import annotations

import datetime
import os
from pathlib import Path

import numpy as np

from xray2ct.fileio import atomic_path

DX_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
POSITIONS = ("PA", "AP", "LL", "RL")


def new_dataset(sop_class_uid: str):
    """An empty pydicom Dataset of one SOP class with its file meta (explicit VR little endian)
    and a fresh SOP instance UID: what every file we write starts from."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class_uid, meta.MediaStorageSOPInstanceUID
    return ds


def save_film_dicom(path: str | os.PathLike, image: np.ndarray, pixel_mm: float, source_det_mm: float,
                    source_patient_mm: float, position: str, monochrome1: bool = False, bits: int = 12,
                    description: str = "xray2ct example (rendered, not a patient)") -> Path:
    """image (rows, cols) in [0, 1], bones bright -> a DX DICOM file at `path`, atomically.

    Args:
        pixel_mm: ImagerPixelSpacing (detector pitch), mm.
        source_det_mm: DistanceSourceToDetector, mm.
        source_patient_mm: DistanceSourceToPatient (to the isocentre), mm.
        position: ViewPosition, PA | AP | LL | RL.
        monochrome1: store inverted (MONOCHROME1: the lowest value is displayed white).
        bits: BitsStored (8–16); values fill [0, 2^bits − 1].
    """
    from pydicom.uid import generate_uid

    if position not in POSITIONS:
        raise ValueError(f"position must be one of {', '.join(POSITIONS)}, got {position!r}")
    if not 8 <= bits <= 16:
        raise ValueError(f"bits must be 8 … 16, got {bits}")
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2 or not np.isfinite(img).all():
        raise ValueError(f"image must be a finite 2-D array, got shape {img.shape}")
    top = 2**bits - 1
    stored = np.rint(np.clip(img, 0, 1) * top).astype(np.uint16)
    if monochrome1:
        stored = top - stored
    ds = new_dataset(DX_IMAGE_STORAGE)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    now = datetime.datetime.now()
    ds.StudyDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.Modality, ds.Manufacturer, ds.SeriesDescription = "DX", "xray2ct", description
    ds.PatientName, ds.PatientID, ds.BodyPartExamined = "Phantom", "xray2ct", "CHEST"
    ds.ViewPosition = position
    # the way the model reads a film: columns toward the patient's left (frontal) or
    # posterior (lateral), rows toward the feet
    ds.PatientOrientation = ["L", "F"] if position in ("PA", "AP") else ["P", "F"]
    ds.DistanceSourceToDetector = f"{source_det_mm:.6g}"
    ds.DistanceSourceToPatient = f"{source_patient_mm:.6g}"
    ds.ImagerPixelSpacing = [f"{pixel_mm:.6g}", f"{pixel_mm:.6g}"]
    ds.EstimatedRadiographicMagnificationFactor = f"{source_det_mm / source_patient_mm:.6g}"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.WindowCenter, ds.WindowWidth = f"{top / 2:.6g}", f"{top:.6g}"
    ds.PresentationLUTShape = "INVERSE" if monochrome1 else "IDENTITY"
    ds.PixelData = stored.tobytes()
    path = Path(path)
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path
