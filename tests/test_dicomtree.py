"""DICOM trees as TCIA delivers LIDC-IDRI (patient / study / series folders), made here with
pydicom: the right CT series is chosen per patient, radiographs and localizers are skipped,
a series with a missing slice is reported and not prepared, and `prepare` exits non-zero."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from xray2ct.cli import app
from xray2ct.data import dicomtree
from xray2ct.data.dicomseries import SliceHeader
from xray2ct.data.errors import XRay2CTInputError

CT_STORAGE, CR_STORAGE = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.1"
ROWS = 64  # pixels per slice side, 4 mm each: a 256 mm field
PIXEL_MM = 4.0
runner = CliRunner()


def write_image(path: Path, *, pid: str, study: str, series: str, pixels_hu: np.ndarray, z: float = 0.0,
                modality: str = "CT", image_type: str = "ORIGINAL\\PRIMARY\\AXIAL", number: int = 1) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_STORAGE if modality == "CT" else CR_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = pid, study, series
    ds.Modality, ds.ImageType, ds.InstanceNumber = modality, image_type, number
    ds.Rows, ds.Columns = pixels_hu.shape
    ds.PixelSpacing = [PIXEL_MM, PIXEL_MM]
    ds.ImagePositionPatient = [-0.5 * ROWS * PIXEL_MM, -0.5 * ROWS * PIXEL_MM, z]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1  # stored = HU + 1024, as scanners do
    ds.PixelData = (pixels_hu + 1024).astype(np.int16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def chest_slice(body_hu: float) -> np.ndarray:
    """An elliptic body of `body_hu` with two lungs in air, (ROWS, ROWS) HU."""
    y, x = np.mgrid[:ROWS, :ROWS] - ROWS / 2
    hu = np.full((ROWS, ROWS), -1024.0)
    hu[(x / 26) ** 2 + (y / 18) ** 2 < 1] = body_hu
    hu[((np.abs(x) - 11) / 8) ** 2 + (y / 11) ** 2 < 1] = -800
    return hu


def write_ct(folder: Path, pid: str, study: str, n: int, step_mm: float, body_hu: float, skip=()) -> str:
    from pydicom.uid import generate_uid

    uid = generate_uid()
    for k in range(n):
        if k not in skip:
            write_image(folder / f"{k:04d}.dcm", pid=pid, study=study, series=uid, pixels_hu=chest_slice(body_hu),
                        z=-0.5 * n * step_mm + k * step_mm, number=k + 1)
    return uid


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> dict:
    """LIDC-IDRI/{P001,P002}/study/...: P001 has a 2.5 mm and a thinner 1.25 mm CT series over
    the same 150 mm, P002 one 2.5 mm series missing slice 30; each has a localizer and a CR
    image; annotation XML files lie beside the slices, as in LIDC."""
    from pydicom.uid import generate_uid

    root = tmp_path_factory.mktemp("tcia") / "LIDC-IDRI"
    uids = {}
    for pid in ("P001", "P002"):
        study = generate_uid()
        base = root / pid / f"01-01-2000-{pid}-study"
        if pid == "P001":
            uids["P001 thick"] = write_ct(base / "3000566-thick", pid, study, 60, 2.5, body_hu=40)
            uids["P001 thin"] = write_ct(base / "3000567-thin", pid, study, 120, 1.25, body_hu=60)
        else:
            uids["P002"] = write_ct(base / "3000611-ct", pid, study, 60, 2.5, body_hu=40, skip={30})
        (base / "3000566-thick" if pid == "P001" else base / "3000611-ct").joinpath("069.xml").write_text("<LidcReadMessage/>")
        write_image(base / "2-localizer" / "000001.dcm", pid=pid, study=study, series=generate_uid(),
                    pixels_hu=chest_slice(40), image_type="ORIGINAL\\PRIMARY\\LOCALIZER")
        write_image(base / "cr" / "000001.dcm", pid=pid, study=study, series=generate_uid(), modality="CR",
                    pixels_hu=np.full((80, 60), 500.0), image_type="ORIGINAL\\PRIMARY")
    return {"root": root, "uids": uids}


def test_scan_picks_the_thinnest_ct_and_skips_radiographs_localizers_and_gaps(tree):
    patients = dicomtree.scan([tree["root"]])
    assert list(patients) == ["P001", "P002"]
    p1, p2 = patients["P001"], patients["P002"]
    assert p1.chosen.uid == tree["uids"]["P001 thin"] and p1.chosen.geometry.slice_mm == pytest.approx(1.25)
    assert [s.uid for s in p1.passed_over] == [tree["uids"]["P001 thick"]] and not p1.rejected
    assert sorted(why.split()[0] for _, why in p1.ignored) == ["a", "modality"]  # the localizer, the CR
    assert any("localizer" in why for _, why in p1.ignored) and any("CR, not CT" in why for _, why in p1.ignored)
    assert p2.chosen is None and p2.has_ct()
    (bad, why), = p2.rejected
    assert bad.uid == tree["uids"]["P002"] and "missing slice" in why and "gap of 5.00 mm" in why
    assert "P002" not in " ".join(dicomtree.summary_lines(patients))  # its failure speaks for it
    assert "thinnest" in " ".join(dicomtree.summary_lines(patients))


def test_scan_reads_headers_in_parallel_the_same(tree):
    serial, parallel = dicomtree.scan([tree["root"]]), dicomtree.scan([tree["root"]], workers=2)
    assert {p: c.record() for p, c in serial.items()} == {p: c.record() for p, c in parallel.items()}


def _header(**changes) -> SliceHeader:
    h = SliceHeader(path="/d/s/1.dcm", sop_uid="1", series_uid="9", study_uid="8", patient_id="P", modality="CT",
                    image_type=("ORIGINAL", "PRIMARY", "AXIAL"), description="", position=(0.0, 0.0, 0.0),
                    orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), pixel_spacing=(1.0, 1.0), shape=(8, 8))
    return replace(h, **changes)


def _series(n=60, step=2.0, **changes) -> dicomtree.Series:
    slices = [_header(path=f"/d/s/{k}.dcm", sop_uid=str(k), position=(0.0, 0.0, k * step), **changes)
              for k in range(n)]
    return dicomtree.Series("9", slices)


@pytest.mark.parametrize("series, words", [
    (_series(modality="DX"), "modality DX, not CT"),
    (_series(image_type=("ORIGINAL", "PRIMARY", "SCOUT")), "a scout"),
    (_series(n=49), "49 slice(s), fewer than 50"),
])
def test_not_a_ct_volume(series, words):
    assert words in dicomtree.not_a_ct_volume(series)


def test_coronal_ct_is_not_axial():
    s = dicomtree.Series("9", [_header(path=f"/d/s/{k}.dcm", sop_uid=str(k), position=(0.0, k * 2.0, 0.0),
                                       orientation=(1.0, 0.0, 0.0, 0.0, 0.0, -1.0)) for k in range(60)])
    assert dicomtree.not_a_ct_volume(s) is None
    assert "not axial" in dicomtree.check_volume(s)
    assert dicomtree.check_volume(_series()) is None


def test_prepare_x2ct_one_case_per_good_patient_and_exit_1(tree, tmp_path):
    out = tmp_path / "lidc"
    args = ["prepare", "--ct", str(tree["root"]), "--out", str(out), "--preset", "x2ct", "--xray-size", "32"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output  # P002 failed
    assert "P002" in result.output and "missing slice" in result.output
    assert "P001: chose" in result.output and "thinnest" in result.output
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["P001"]
    img = nib.load(out / "P001" / "P001.nii.gz")
    assert img.shape == (128, 128, 128) and np.allclose(img.header.get_zooms(), 2.5)
    hu = np.asarray(img.dataobj)
    assert hu.min() == -1024 and hu.max() <= 1476
    assert np.median(hu[hu > -200]) == pytest.approx(60, abs=5)  # the thin series' body, not the thick one's
    body = np.argwhere(hu > -200)  # the 208 x 144 mm body, 150 mm long, centred in the 320 mm cube
    extent = (body.max(0) - body.min(0) + 1) * 2.5
    assert extent == pytest.approx([150, 144, 208], abs=10)  # pixelated ellipse, 2.5 mm voxels
    assert (body.max(0) + body.min(0)) / 2 == pytest.approx([63.5] * 3, abs=2)
    record = json.loads((out / "prepare_report.json").read_text())
    assert [f["input"] for f in record["failed"]] == ["patient P002"]
    assert record["series"]["P001"]["chosen"]["slice_mm"] == 1.25 and len(record["series"]["P001"]["ignored"]) == 2
    assert json.loads((out / "prepare.json").read_text())["preset"] == "x2ct"

    again = runner.invoke(app, args)  # resumable: nothing redone, still failing for P002
    assert again.exit_code == 1 and "skipped (already there) 1" in again.output
    other = runner.invoke(app, ["prepare", "--ct", str(tree["root"]), "--out", str(out), "--size", "32"])
    assert isinstance(other.exception, XRay2CTInputError)
    assert str(out) in str(other.exception) and "size 128 (this run: 32)" in str(other.exception)
    assert "preset x2ct (this run: ours)" in str(other.exception)
    fixed = runner.invoke(app, ["prepare", "--ct", str(tree["root"]), "--out", str(tmp_path / "o"), "--preset", "x2ct",
                                "--size", "64"])
    assert isinstance(fixed.exception, XRay2CTInputError) and "fixes size 128" in str(fixed.exception)


def test_duplicate_inputs_are_one_case_and_split_files_place_patients(tree, tmp_path):
    (tmp_path / "test.txt").write_text("# X2CT-GAN style: patient.study.series\nP001.20000101.3000567.1\nP404\n")
    (tmp_path / "train.txt").write_text("P002\n")
    out = tmp_path / "ours"
    patient = tree["root"] / "P001"
    result = runner.invoke(app, ["prepare", "--ct", str(tree["root"]), "--ct", str(patient), "--ct",
                                 str(tree["root"]), "--out", str(out), "--size", "16", "--xray-size", "32",
                                 "--split-file", f"test={tmp_path / 'test.txt'}",
                                 "--split-file", f"train={tmp_path / 'train.txt'}"])
    assert result.exit_code == 1 and "done 1," in result.output
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["P001"]
    assert json.loads((out / "splits.json").read_text()) == {"train": [], "val": [], "test": ["P001"]}
    bad = runner.invoke(app, ["prepare", "--ct", str(patient), "--out", str(out), "--split-file", "dev=x.txt"])
    assert isinstance(bad.exception, XRay2CTInputError) and "train, val, test" in str(bad.exception)


def test_folder_without_dicom_fails_by_name(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images here")
    result = runner.invoke(app, ["prepare", "--ct", str(tmp_path / "notes"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "notes" in result.output and "no DICOM image series" in result.output
