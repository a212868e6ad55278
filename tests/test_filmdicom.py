"""A rendered film saved as a clinical DX DICOM reads back as the same image with its tags."""
import numpy as np
import pytest

from xray2ct.acquisition import AcquisitionFlags, load_view
from xray2ct.config import GeometryConfig
from xray2ct.data.filmdicom import save_film_dicom
from xray2ct.data.xrayio import prepare_xray

NOMINAL = GeometryConfig().build(32, 128)


@pytest.mark.parametrize("monochrome1", [False, True])
def test_film_round_trips_with_its_acquisition(tmp_path, monochrome1):
    rng = np.random.default_rng(0)
    img = np.clip(np.linspace(0, 1, 200)[None, :] * np.ones((160, 1)) + 0.05 * rng.standard_normal((160, 200)), 0, 1)
    path = save_film_dicom(tmp_path / "f.dcm", img, pixel_mm=0.7, source_det_mm=1800.0, source_patient_mm=1650.0,
                           position="PA", monochrome1=monochrome1)
    image, acq, setup = load_view(path, "frontal", 128, AcquisitionFlags(), NOMINAL)
    want = prepare_xray(img.astype(np.float32), size=128, name="reference")
    assert float((image - want).abs().max()) < 0.01  # 12-bit quantization and the window's half-step
    assert (acq.position, acq.source_det_mm, acq.source_iso_mm, acq.pixel_mm) == ("PA", 1800.0, 1650.0, 0.7)
    assert all(acq.source_of(k) == "dicom" for k in ("source_det_mm", "source_iso_mm", "pixel_mm"))
    assert setup.det_pixel_mm == pytest.approx(0.7 * 200 / 128)


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="position"):
        save_film_dicom(tmp_path / "f.dcm", np.zeros((8, 8)), 1.0, 1800.0, 1650.0, "XX")
    with pytest.raises(ValueError, match="finite"):
        save_film_dicom(tmp_path / "f.dcm", np.full((8, 8), np.nan), 1.0, 1800.0, 1650.0, "PA")
    assert not (tmp_path / "f.dcm").exists()
