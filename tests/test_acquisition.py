"""Acquisition records: where each value comes from, the image-frame arithmetic, real CR DICOM files."""
import json

import numpy as np
import pytest
import torch

from xray2ct import Geometry
from xray2ct.acquisition import (Acquisition, AcquisitionError, AcquisitionFlags, descrip, load_study, load_view,
                                 orientation_flips, resolve)
from xray2ct.config import GeometryConfig

NOMINAL = GeometryConfig().build(32, 128)  # the bundled model's geometry


def _testdata(name):
    """A pydicom-data file, or skip: tests never download."""
    pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    try:
        path = get_testdata_file(name, download=False)
    except TypeError:  # older pydicom without the download argument
        path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} not installed (pip install pydicom-data, in the dev extras)")
    return path


def _npy(tmp_path, name="film", shape=(64, 64), sidecar=None, seed=0):
    img = np.random.default_rng(seed).random(shape).astype(np.float32)
    path = tmp_path / f"{name}.npy"
    np.save(path, img)
    if sidecar is not None:
        (tmp_path / f"{name}.json").write_text(json.dumps(sidecar))
    return path


def test_flags_beat_sidecar_beat_default(tmp_path):
    path = _npy(tmp_path, sidecar={"source_iso_mm": 1000.0, "source_det_mm": 1200.0, "pixel_mm": 0.5})
    acq = resolve("frontal", path, AcquisitionFlags(sid=1800.0), None, None, NOMINAL)
    assert (acq.source_det_mm, acq.source_iso_mm, acq.pixel_mm) == (1800.0, 1000.0, 0.5)
    assert acq.source_of("source_det_mm") == "flag" and acq.source_of("source_iso_mm") == "sidecar"
    bare = resolve("lateral", _npy(tmp_path, "bare"), AcquisitionFlags(), None, None, NOMINAL)
    assert (bare.source_iso_mm, bare.source_det_mm, bare.pixel_mm, bare.position) == (541.0, 949.0, None, "LL")
    assert set(bare.assumed) == {"position", "source_det_mm", "source_iso_mm", "pixel_mm"}


def test_lateral_flags_override_the_shared_ones(tmp_path):
    flags = AcquisitionFlags(sid=1800.0, sod=1650.0, pixel_mm=0.2, lat_sid=1500.0, lat_sod=1350.0)
    path = _npy(tmp_path)
    front = resolve("frontal", path, flags, None, None, NOMINAL)
    side = resolve("lateral", path, flags, None, None, NOMINAL)
    assert (front.source_det_mm, side.source_det_mm, side.source_iso_mm, side.pixel_mm) == (1800, 1500, 1350, 0.2)
    assert descrip((front, side)) == "xray2ct SID1800 SOD1650 px0.2 PA; SID1500 SOD1350 px0.2 LL"
    assert descrip((front, front)) == "xray2ct SID1800 SOD1650 px0.2 PA/PA"


def test_only_the_detector_distance_known_keeps_the_training_gap(tmp_path):
    acq = resolve("frontal", _npy(tmp_path), AcquisitionFlags(sid=1800.0), None, None, NOMINAL)
    assert acq.source_iso_mm == pytest.approx(1800.0 - (949.0 - 541.0)) and acq.source_of("source_iso_mm") == "default"


@pytest.mark.parametrize("flags, match", [
    (AcquisitionFlags(sid=1000.0, sod=1200.0), "less than"),
    (AcquisitionFlags(sid=300.0, sod=100.0), "inside"),
    (AcquisitionFlags(pixel_mm=-1.0), "pixel-mm"),
])
def test_bad_flags_are_named(tmp_path, flags, match):
    with pytest.raises(AcquisitionError, match=match):
        resolve("frontal", _npy(tmp_path), flags, None, None, NOMINAL)


@pytest.mark.parametrize("content, match", [('{"pixel_mm": "big"}', "pixel_mm"), ("[1, 2]", "object"),
                                            ("{not json", "JSON"), ('{"position": "LL"}', "not a frontal")])
def test_bad_sidecar_is_named(tmp_path, content, match):
    path = _npy(tmp_path)
    (tmp_path / "film.json").write_text(content)
    with pytest.raises(AcquisitionError, match=match) as e:
        resolve("frontal", path, AcquisitionFlags(), None, None, NOMINAL)
    assert "film" in str(e.value)


def test_orientation_flips():
    assert orientation_flips("frontal", {"PatientOrientation": ["L", "F"]}) == (False, False)
    assert orientation_flips("frontal", {"PatientOrientation": ["R", "F"]}) == (False, True)
    assert orientation_flips("lateral", {"PatientOrientation": ["A", "H"]}) == (True, True)
    assert orientation_flips("lateral", {}) == (False, False)


@pytest.mark.parametrize("shape, crop, flips", [
    ((256, 256), (0, 0, 0, 0), (False, False)),
    ((256, 256), (30, 10, 5, 41), (False, False)),
    ((240, 256), (7, 20, 0, 3), (False, True)),
    ((256, 201), (0, 0, 0, 0), (True, False)),
])
def test_view_setup_maps_the_file_pixels_to_the_model_image(shape, crop, flips):
    """A point's pixel on the film (read the model's way), stored mirrored where `flips` says,
    carried through the loader's crop, flip back, centred pad and resize by hand, equals its
    projection under the Acquisition's ViewSetup."""
    size, pitch = 128, 430.0 / 256
    acq = Acquisition("PA", 1650.0, 1800.0, pitch)
    rows, cols = shape
    # the file's own geometry: centre of the full decoded image on the central ray
    whole = Geometry(volume_shape=(32,) * 3, voxel_mm=10.0, source_iso_mm=1650.0, source_det_mm=1800.0,
                     det_shape=shape, det_pixel_mm=pitch)
    setup = acq.view_setup(shape, crop, size, NOMINAL, flips)
    model = NOMINAL.with_views(("pa", "lat"), {"pa": setup})
    pts = torch.randn(40, 3, dtype=torch.float64) * 60
    r, c, _ = whole.project_points(pts, "pa")
    r = rows - 1 - r if flips[0] else r  # as stored in the file
    c = cols - 1 - c if flips[1] else c
    top, bottom, left, right = crop
    h, w = rows - top - bottom, cols - left - right
    r, c = r - top, c - left
    if flips[0]:
        r = h - 1 - r
    if flips[1]:
        c = w - 1 - c
    side = max(h, w)
    r, c = r + (side - h) // 2, c + (side - w) // 2
    r, c = (r + 0.5) * size / side - 0.5, (c + 0.5) * size / side - 0.5
    mr, mc, _ = model.project_points(pts, "pa")
    torch.testing.assert_close(mr, r)
    torch.testing.assert_close(mc, c)


def test_default_acquisition_is_exactly_the_model_geometry(tmp_path):
    path = _npy(tmp_path, shape=(128, 128))
    image, acq, setup = load_view(path, "frontal", 128, AcquisitionFlags(), NOMINAL)
    assert setup.det_pixel_mm == NOMINAL.det_pixel_mm and setup.det_offset_mm == (0.0, 0.0)
    assert (setup.source_iso_mm, setup.source_det_mm) == (NOMINAL.source_iso_mm, NOMINAL.source_det_mm)


def test_study_from_phantom_drrs_uses_their_sidecars(tmp_path):
    from xray2ct.data.layout import write_case
    from xray2ct.data.phantoms import chest_phantom

    hu = chest_phantom(32, seed=3)
    case = write_case(tmp_path, "c0", np.asarray(hu), (10.0,) * 3, xray_size=64)
    sidecar = json.loads((case / "c0_pa_drr.json").read_text())
    assert sidecar["position"] == "PA" and sidecar["source_det_mm"] == 949.0
    study = load_study(case / "c0_pa_drr.png", case / "c0_lat_drr.png", 128, NOMINAL)
    assert all(a.source_of("pixel_mm") == "sidecar" for a in study.acquisitions)
    # the DRRs were rendered with the training geometry: the study's is the model's, to the last bit
    for view in ("pa", "lat"):
        s = study.geometry.setup(view)
        assert (s.det_pixel_mm, s.det_offset_mm) == (NOMINAL.det_pixel_mm, (0.0, 0.0))
    assert "SID949 SOD541" in study.descrip() and len(study.descrip()) <= 80


# --- real clinical files (pydicom-data) ---------------------------------------------------
def test_rg1_cr_monochrome1_pa():
    from xray2ct.data.xrayio import read_xray

    f = read_xray(_testdata("RG1_UNCR.dcm"))
    assert f.shape == (1955, 1841) and f.tags["ViewPosition"] == "PA"
    assert f.pixel_mm is None  # PixelSpacing 0.000\0.000 means unknown, not zero
    import pydicom

    raw = pydicom.dcmread(_testdata("RG1_UNCR.dcm")).pixel_array.astype(np.float64)
    # MONOCHROME1: high stored values display dark, so the image we return runs the other way
    corr = np.corrcoef(raw[::8, ::8].ravel(), f.pixels[::8, ::8].ravel())[0, 1]
    assert corr < -0.99
    acq = resolve("frontal", _testdata("RG1_UNCR.dcm"), AcquisitionFlags(), f.tags, f.pixel_mm, NOMINAL)
    assert acq.source_det_mm == 1996.0 and acq.source_of("source_det_mm") == "dicom"
    assert acq.pixel_mm is None and acq.source_of("pixel_mm") == "default"
    with pytest.raises(AcquisitionError, match="not a lateral view"):
        resolve("lateral", _testdata("RG1_UNCR.dcm"), AcquisitionFlags(), f.tags, f.pixel_mm, NOMINAL)


def test_rg3_ap_collimated_and_mirrored(tmp_path):
    from xray2ct.data.xrayio import read_xray

    path = _testdata("RG3_UNCR.dcm")
    f = read_xray(path)
    top, bottom, left, right = f.crop
    assert left > 300 and right > 300 and top == bottom == 0  # the blank side bands, not anatomy
    assert f.pixels.shape == (1760, 1760 - left - right)
    assert np.ptp(f.pixels[:, :3]) > 0 and np.ptp(f.pixels[:, -3:]) > 0  # no uniform column left
    image, acq, setup = load_view(path, "frontal", 128, AcquisitionFlags(sid=1800, sod=1650, pixel_mm=0.2), NOMINAL)
    assert acq.position == "AP" and acq.view == "ap" and image.shape == (128, 128)
    assert setup.det_pixel_mm == pytest.approx(0.2 * 1760 / 128)
    # the bands differ by 15 px: the exposed field's centre is 7.5 px left of the film's, mirrored -> right;
    # padding 993 columns to 1760 puts 383 on the left and 384 on the right: half a pixel more
    assert (left, right) == (376, 391)
    assert setup.det_offset_mm[1] == pytest.approx((7.5 + 0.5) * 0.2)


def test_rg1_jpeg2000_matches_uncompressed_if_decodable():
    from xray2ct.data.xrayio import XRay2CTInputError, load_xray

    a = load_xray(_testdata("RG1_UNCR.dcm"), size=64)
    try:
        b = load_xray(_testdata("RG1_J2KR.dcm"), size=64)
    except XRay2CTInputError as e:
        pytest.skip(f"no JPEG 2000 decoder installed: {e}")
    torch.testing.assert_close(a, b, atol=1e-3, rtol=0)


# --- reconstruct: the study's geometry reaches the network, the refinement and the outputs ------
def _case(tmp_path, xray_size=128):
    from xray2ct.data.layout import write_case
    from xray2ct.data.phantoms import chest_phantom

    case = write_case(tmp_path, "c1", chest_phantom(32, seed=5), (10.0,) * 3, xray_size=xray_size)
    return case / "c1_pa_drr.png", case / "c1_lat_drr.png"


def test_reconstruct_records_the_acquisition(tmp_path):
    import nibabel as nib

    from xray2ct.engine.reconstruct import NO_REFINE, reconstruct

    pa, lat = _case(tmp_path)
    out = reconstruct(pa, lat, tmp_path / "ct.nii.gz", device="cpu", refine=NO_REFINE,
                      acquisition=AcquisitionFlags(sid=1800.0, sod=1650.0, lat_pixel_mm=1.5))
    text = nib.load(str(out)).header["descrip"].item().decode()
    assert text.startswith("xray2ct SID1800 SOD1650 px") and text.endswith("; SID1800 SOD1650 px1.5 LL")
    assert " PA" in text  # the PA pitch is its sidecar's, not the lateral flag's


def test_refinement_projects_with_the_study_geometry(tmp_path, monkeypatch):
    import xray2ct.engine.reconstruct as R
    import xray2ct.engine.refining as F

    seen = []
    original = F.run_refine

    def spy(mu, log_var, xrays, geometry, *args, **kwargs):
        seen.append(geometry)
        return original(mu, log_var, xrays, geometry, *args, **kwargs)

    monkeypatch.setattr(F, "run_refine", spy)
    pa, lat = _case(tmp_path)
    model, cfg, dev = R.load_for_inference(None, "cpu")
    study = R.load_study_for(model, cfg, pa, lat, AcquisitionFlags(sid=1800.0, sod=1650.0, pixel_mm=2.0, ap=True))
    rec = R.reconstruct_pair(model, cfg, dev, study.xrays, refine=R.RefineOptions(steps=1, size=16),
                             geometry=study.geometry)
    g = seen[0]
    assert g.views == ("ap", "lat") and g.volume_shape == (16, 16, 16)
    assert g.setup("ap").source_det_mm == 1800.0 and g.setup("lat").det_pixel_mm == pytest.approx(2.0 * 128 / 128)
    assert rec.hu.shape == (16, 16, 16)
    assert model.geometry.views == ("pa", "lat")  # the model's own geometry is back


def test_report_details_carry_the_record(tmp_path):
    from xray2ct.engine.outputs import save_report

    pa, lat = _case(tmp_path, xray_size=64)
    study = load_study(pa, lat, 128, NOMINAL)
    hu = np.zeros((8, 8, 8), np.float32)
    page = save_report(tmp_path / "r.html", hu, None, (40.0,) * 3, study.xrays, details=study.details())
    html = page.read_text() if hasattr(page, "read_text") else (tmp_path / "r.html").read_text()
    assert "acquisition (frontal)" in html and "SID949 SOD541" in html and "from sidecar" in html


def test_load_xray_crops_a_dicom_film_like_read_xray():
    from xray2ct.data.xrayio import load_xray, prepare_xray, read_xray

    path = _testdata("RG3_UNCR.dcm")
    torch.testing.assert_close(load_xray(path, size=64), prepare_xray(read_xray(path).pixels, size=64))


def test_cli_passes_the_acquisition_flags(monkeypatch):
    from typer.testing import CliRunner

    import xray2ct.engine.reconstruct as R
    from xray2ct.cli import app

    seen = {}
    monkeypatch.setattr(R, "reconstruct", lambda *a, **k: seen.update(k) or "out.nii.gz")
    r = CliRunner().invoke(app, ["reconstruct", "--pa", "a.png", "--lat", "b.png", "--out", "o.nii.gz", "--ap",
                                 "--sid", "1800", "--sod", "1650", "--pixel-mm", "0.2", "--lat-sid", "1500"])
    assert r.exit_code == 0, r.output
    assert seen["acquisition"] == AcquisitionFlags(sid=1800.0, sod=1650.0, pixel_mm=0.2, lat_sid=1500.0, ap=True)


def test_one_view_study_reconstructs_with_that_view_only(tmp_path, monkeypatch):
    """--pa alone (or --lat alone): the missing view is zeros for the network, refinement and the
    reprojection use the given film only, and the record says which mode it was."""
    import nibabel as nib

    from xray2ct.engine import reconstruct as R
    from xray2ct.engine import refining as F

    pa, lat = _case(tmp_path)
    model, cfg, dev = R.load_for_inference(None, "cpu")
    seen, original = [], F.run_refine
    monkeypatch.setattr(F, "run_refine", lambda mu, lv, x, g, *a, **k: seen.append((x.shape, g.views))
                        or original(mu, lv, x, g, *a, **k))
    for given, mode, view in (((pa, None), "frontal only", "pa"), ((None, lat), "lateral only", "lat")):
        study = R.load_study_for(model, cfg, *given)
        assert study.mode == mode and study.present == (given[0] is not None, given[1] is not None)
        missing = 1 if given[1] is None else 0
        assert study.xrays.shape == (1, 2, 128, 128) and study.xrays[0, missing].abs().max() == 0
        assert study.details()["views"] == mode and mode.split()[0] not in ("", None)
        seen.clear()
        rec = R.reconstruct_pair(model, cfg, dev, study.xrays, refine=R.RefineOptions(steps=2),
                                 geometry=study.geometry, present=study.present)
        assert seen == [((1, 1, 128, 128), (view,))]
        assert rec.reprojected.shape == (1, 1, 128, 128) and rec.views == (("PA",) if view == "pa" else ("lateral",))
        assert np.isfinite(rec.hu).all()
    out = R.reconstruct(pa, None, tmp_path / "pa_only.nii.gz", device="cpu", refine=R.RefineOptions(steps=2))
    assert "only" in nib.load(out).header["descrip"].item().decode()
    with pytest.raises(AcquisitionError, match="no X-ray given"):
        R.load_study_for(model, cfg, None, None)
