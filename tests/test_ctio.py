"""CT loading (NIfTI, DICOM, NPY), orientation, saving and preprocessing."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from xray2ct.data.ctio import load_volume, preprocess, save_nifti
from xray2ct.data.errors import XRay2CTInputError

SPACING = (2.0, 0.8, 0.6)  # (d, h, w) mm, all different so a swapped axis shows


def our_volume(seed: int = 0) -> np.ndarray:
    """(D, H, W) = (8, 10, 12) integer HU with a bright marker at the patient's
    left-superior-anterior corner: small d, small h, large w."""
    rng = np.random.default_rng(seed)
    vol = rng.integers(-1000, 400, size=(8, 10, 12)).astype(np.float32)
    vol[1, 1, 10] = 3000
    return vol


def write_dicom_series(folder, lps_zyx: np.ndarray, spacing_xyz, origin=(-10.0, 20.0, 30.0)) -> None:
    """Axial CT series, one file per z slice, identity direction in ITK's LPS world,
    with rescale intercept -1024 (as scanners do): the writer stores raw = HU + 1024."""
    folder.mkdir(parents=True)
    image = sitk.GetImageFromArray(lps_zyx.astype(np.int16))
    image.SetSpacing(spacing_xyz)
    image.SetOrigin(origin)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.4242"
    for z in range(image.GetDepth()):
        s = image[:, :, z]
        tags = {
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",  # CT image storage
            "0008|0018": f"{uid}.3.{z + 1}",
            "0008|0060": "CT",
            "0020|000d": f"{uid}.1",
            "0020|000e": f"{uid}.2",
            "0020|0013": str(z + 1),
            "0020|0032": "\\".join(f"{c:.4f}" for c in image.TransformIndexToPhysicalPoint((0, 0, z))),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0018|0050": str(spacing_xyz[2]),
            "0028|1052": "-1024",
            "0028|1053": "1",
        }
        for k, v in tags.items():
            s.SetMetaData(k, v)
        writer.SetFileName(str(folder / f"IM{z:04d}.dcm"))
        writer.Execute(s)


def test_nifti_round_trip(tmp_path):
    vol = our_volume()
    path = save_nifti(tmp_path / "ct.nii.gz", vol, SPACING)
    hu, spacing = load_volume(path)
    np.testing.assert_array_equal(hu, vol)
    assert spacing == SPACING
    img = nib.load(path)
    assert nib.aff2axcodes(img.affine) == ("I", "P", "L")
    np.testing.assert_allclose(nib.affines.voxel_sizes(img.affine), SPACING)
    # centred: the centre voxel sits at the world origin
    centre = img.affine @ np.r_[(np.array(vol.shape) - 1) / 2, 1]
    np.testing.assert_allclose(centre[:3], 0, atol=1e-5)  # header holds float32
    assert img.get_data_dtype() == np.int16  # integer HU stored compactly, losslessly
    path2 = save_nifti(tmp_path / "again.nii.gz", hu, spacing)
    np.testing.assert_array_equal(nib.load(path2).affine, img.affine)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_float_nifti_round_trip(tmp_path):
    vol = our_volume() + 0.25
    hu, _ = load_volume(save_nifti(tmp_path / "f.nii", vol, 1.5))
    np.testing.assert_array_equal(hu, vol)


def test_ras_nifti_loads_in_our_axes(tmp_path):
    # Canonical RAS array: index x runs to the patient's Right, y Anterior, z Superior.
    ras = np.full((12, 10, 8), -1000.0, np.float32)
    ras[1, 8, 6] = 3000  # x=1: far left; y=8: anterior; z=6: superior
    sw, sh, sd = SPACING[2], SPACING[1], SPACING[0]
    nib.save(nib.Nifti1Image(ras, np.diag([sw, sh, sd, 1.0])), tmp_path / "ras.nii.gz")
    hu, spacing = load_volume(tmp_path / "ras.nii.gz")
    assert hu.shape == (8, 10, 12)
    assert spacing == pytest.approx(SPACING)
    assert np.unravel_index(hu.argmax(), hu.shape) == (1, 1, 10)  # superior, anterior, left


def test_lps_dicom_series_matches_nifti(tmp_path):
    vol = our_volume()
    # The same patient stored two ways. RAS NIfTI: x→R, y→A, z→S.
    ras = vol[::-1, ::-1, ::-1].transpose(2, 1, 0)
    sd, sh, sw = SPACING
    nib.save(nib.Nifti1Image(np.ascontiguousarray(ras), np.diag([sw, sh, sd, 1.0])), tmp_path / "ct.nii.gz")
    # LPS DICOM, ITK array order (z, y, x): x→L, y→P, z→S.
    lps = np.ascontiguousarray(vol[::-1])
    write_dicom_series(tmp_path / "patient" / "study" / "series", lps, (sw, sh, sd))  # LIDC-style nesting
    (tmp_path / "patient" / "notes.xml").write_text("<annotations/>")
    from_nifti, sp_nifti = load_volume(tmp_path / "ct.nii.gz")
    from_dicom, sp_dicom = load_volume(tmp_path / "patient")
    np.testing.assert_array_equal(from_nifti, vol)
    np.testing.assert_array_equal(from_dicom, from_nifti)  # also checks rescale intercept -> HU
    assert sp_dicom == pytest.approx(sp_nifti)
    assert np.unravel_index(from_dicom.argmax(), vol.shape) == (1, 1, 10)


def test_mha_lps_file(tmp_path):
    vol = our_volume()
    image = sitk.GetImageFromArray(np.ascontiguousarray(vol[::-1]))  # (z, y, x): x→L, y→P, z→S
    image.SetSpacing((SPACING[2], SPACING[1], SPACING[0]))
    sitk.WriteImage(image, str(tmp_path / "ct.mha"))
    hu, spacing = load_volume(tmp_path / "ct.mha")
    np.testing.assert_array_equal(hu, vol)
    assert spacing == SPACING


def test_dicom_picks_longest_series(tmp_path):
    vol = our_volume()
    write_dicom_series(tmp_path / "study" / "long", vol[::-1], (0.6, 0.8, 2.0))
    short = tmp_path / "study" / "scout"
    write_dicom_series(short, vol[:3][::-1] - 500, (0.6, 0.8, 2.0))
    for f in short.iterdir():  # give the short series its own series UID
        img = sitk.ReadImage(str(f))
        img.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.4242.99")
        w = sitk.ImageFileWriter()
        w.KeepOriginalImageUIDOn()
        w.SetFileName(str(f))
        w.Execute(img)
    hu, _ = load_volume(tmp_path)
    np.testing.assert_array_equal(hu, vol)


def test_npy_and_npz(tmp_path):
    vol = our_volume()
    np.save(tmp_path / "ct.npy", vol)
    with pytest.raises(XRay2CTInputError, match="ct.npy.*spacing"):
        load_volume(tmp_path / "ct.npy")
    hu, spacing = load_volume(tmp_path / "ct.npy", spacing=SPACING)
    np.testing.assert_array_equal(hu, vol)
    assert spacing == SPACING
    np.savez(tmp_path / "ct.npz", mask=np.zeros(3), ct=vol, spacing=np.array(SPACING))
    hu, spacing = load_volume(tmp_path / "ct.npz")
    np.testing.assert_array_equal(hu, vol)
    assert spacing == pytest.approx(SPACING)


def sphere_volume():
    """Water sphere (r = 40 mm) off centre in an anisotropic CT, a small disconnected
    'table' block far from it, and a metal insert above the HU range."""
    shape, spacing = (80, 200, 180), (2.5, 1.0, 1.2)
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    d, h, w = np.meshgrid(*axes, indexing="ij")
    offset = np.array([30.0, -40.0, 50.0])
    inside = (d - offset[0]) ** 2 + (h - offset[1]) ** 2 + (w - offset[2]) ** 2 < 40.0**2
    hu = np.where(inside, 0.0, -1024.0).astype(np.float32)
    hu[(np.abs(d - offset[0]) < 10) & (np.abs(h - offset[1]) < 10) & (np.abs(w - offset[2]) < 10)] = 6000
    hu[:10, 190:, :10] = 200  # table: bright but small and separate
    return hu, spacing


def test_preprocess_centres_body_and_resamples():
    hu, spacing = sphere_volume()
    out = preprocess(hu, spacing, size=40, fov_mm=200.0)  # 5 mm voxels
    assert out.shape == (40, 40, 40) and out.dtype == np.float32
    assert out.min() >= -1024 and out.max() == 3071  # metal clipped
    body = out > -500
    centroid = np.array(np.nonzero(body)).mean(axis=1)
    np.testing.assert_allclose(centroid, 19.5, atol=1.0)  # the off-centre sphere is now centred
    expected = 4 / 3 * np.pi * (40.0 / 5.0) ** 3  # sphere volume in 5 mm voxels
    assert body.sum() == pytest.approx(expected, rel=0.1)
    # isotropic: the sphere is as wide along each axis (radius 8 voxels)
    widths = [np.ptp(np.nonzero(body)[a]) + 1 for a in range(3)]
    assert max(widths) - min(widths) <= 1 and 15 <= min(widths) <= 17


def test_preprocess_pads_with_air():
    hu, spacing = sphere_volume()
    out = preprocess(hu, spacing, size=32, fov_mm=320.0)  # larger than the 200 mm scan
    assert out[0].max() == pytest.approx(-1024) and out[:, :, -1].max() == pytest.approx(-1024)


def test_preprocess_too_small_or_empty():
    with pytest.raises(XRay2CTInputError, match="tiny.nii.gz.*too small"):
        preprocess(np.zeros((4, 64, 64), np.float32), (1, 1, 1), name="tiny.nii.gz")
    with pytest.raises(XRay2CTInputError, match="air.nii.gz.*no body"):
        preprocess(np.full((16, 16, 16), -1024, np.float32), (1, 1, 1), name="air.nii.gz")


def _nifti(path, data):
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda p: (p / "empty").mkdir() or p / "empty", "empty"),
        (lambda p: (p / "nodicom").mkdir() or (p / "nodicom" / "readme.txt").write_text("hi") and p / "nodicom",
         "no DICOM"),
        (lambda p: (p / "notes.txt").write_text("not a CT") and p / "notes.txt", "unsupported file type"),
        (lambda p: (p / "junk.nii.gz").write_bytes(b"\x00" * 400) and p / "junk.nii.gz", "cannot read"),
        (lambda p: _nifti(p / "nan.nii.gz", np.where(np.eye(8)[None] > 0, np.nan, 0).repeat(8, 0).astype(np.float32)),
         "NaN"),
        (lambda p: _nifti(p / "fmri.nii.gz", np.zeros((8, 8, 8, 2), np.float32)), "2 volumes"),
        (lambda p: p / "missing.nii.gz", "no such file"),
        (lambda p: (p / "IM0001.dcm").write_bytes(b"DICM") and p / "IM0001.dcm", "pass the folder"),
    ],
    ids=["empty-folder", "no-dicom-series", "text-file", "corrupt-nifti", "nan", "4d", "missing", "one-dicom-file"],
)
def test_bad_inputs_name_the_file(tmp_path, make, problem):
    path = make(tmp_path)
    with pytest.raises(XRay2CTInputError, match=problem) as err:
        load_volume(path)
    assert path.name in str(err.value)


def test_4d_nifti_with_one_volume_is_fine(tmp_path):
    hu, _ = load_volume(_nifti(tmp_path / "one.nii.gz", np.ones((8, 9, 10, 1), np.float32)))
    assert hu.shape == (10, 9, 8)  # eye affine is RAS: reoriented to (I, P, L)


def _move_slice(path, dz: float) -> None:
    """Shift one DICOM slice's ImagePositionPatient by dz mm along z."""
    import pydicom

    ds = pydicom.dcmread(path)
    ds.ImagePositionPatient = [float(v) for v in ds.ImagePositionPatient[:2]] + [float(ds.ImagePositionPatient[2]) + dz]
    ds.save_as(path)


@pytest.mark.parametrize("damage, words", [
    (lambda f: f[3].unlink(), ["missing slice", "gap of 4.00 mm", "spacing is 2.00 mm", "about 1 slice"]),
    (lambda f: _move_slice(f[4], 0.9), ["uneven slice spacing", "off an even"]),
    (lambda f: _move_slice(f[4], -2.0), ["share a position", "duplicate"]),
], ids=["missing", "uneven", "duplicate"])
def test_dicom_series_with_bad_slice_positions_is_refused(tmp_path, damage, words):
    """A series read with averaged spacing would be silently wrong (issue #18 item 5)."""
    folder = tmp_path / "LIDC-IDRI-0007" / "series"
    write_dicom_series(folder, our_volume()[::-1], (0.6, 0.8, 2.0))
    damage(sorted(folder.iterdir()))
    with pytest.raises(XRay2CTInputError) as err:
        load_volume(tmp_path / "LIDC-IDRI-0007")
    for w in words:
        assert w in str(err.value)
    assert "LIDC-IDRI-0007" in str(err.value)


def test_dicom_rounded_positions_are_even(tmp_path):
    """Positions rounded to 0.1 mm (0.625 mm slices) are not a gap."""
    import pydicom

    folder = tmp_path / "s"
    write_dicom_series(folder, our_volume()[::-1], (0.6, 0.8, 0.625))
    for f in sorted(folder.iterdir()):
        ds = pydicom.dcmread(f)
        ds.ImagePositionPatient = [float(v) for v in ds.ImagePositionPatient[:2]] + [round(float(ds.ImagePositionPatient[2]), 1)]
        ds.save_as(f)
    hu, sp = load_volume(folder)
    assert hu.shape == (8, 10, 12) and sp[0] == pytest.approx(0.625, abs=0.02)
