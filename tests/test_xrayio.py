"""Radiograph loading: every format to the same [0, 1] image, and a clear error for every bad file."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest
import tifffile
import torch
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from xray2ct.data import xrayio
from xray2ct.data.errors import XRay2CTInputError
from xray2ct.data.xrayio import load_xray, read_xray_array


def picture(h: int = 64, w: int = 64) -> np.ndarray:
    """A film-like test image in [0, 1]: soft gradient, a bright 'spine', a dark 'lung'."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = 0.3 + 0.2 * y + 0.5 * np.exp(-((x - 0.5) ** 2) / 0.005) - 0.2 * np.exp(-((x - 0.25) ** 2 + (y - 0.4) ** 2) / 0.02)
    return (img - img.min()) / (img.max() - img.min())


def save_png(path, img01: np.ndarray, bits: int = 16):
    dtype, peak = (np.uint16, 65535) if bits == 16 else (np.uint8, 255)
    Image.fromarray(np.round(img01 * peak).astype(dtype)).save(path)
    return path


def save_dicom(path, pixels: np.ndarray, photometric: str = "MONOCHROME2", slope: float = 1.0,
               intercept: float = 0.0, pixel_data: bool = True):
    """Minimal valid DICOM (secondary capture) with uint16 pixels (H, W) or frames (F, H, W)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = "test"
    if pixel_data:
        if pixels.ndim == 3:
            ds.NumberOfFrames = pixels.shape[0]
        ds.Rows, ds.Columns = pixels.shape[-2:]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


PIC = picture()
PIC16 = np.round(PIC * 65535).astype(np.uint16)


def test_png_8_and_16_bit_load_to_nearly_the_same_image(tmp_path):
    a = load_xray(save_png(tmp_path / "a8.png", PIC, bits=8), size=64)
    b = load_xray(save_png(tmp_path / "a16.png", PIC, bits=16), size=64)
    for t in (a, b):
        assert t.shape == (64, 64) and t.dtype == torch.float32
        assert t.min() == 0 and t.max() == 1
    # 8-bit quantization is 1/255 of the range; the window is ~the full range
    assert (a - b).abs().max() < 0.01
    assert (a - b).abs().mean() < 0.003


def test_bones_stay_bright_and_values_follow_the_picture(tmp_path):
    t = load_xray(save_png(tmp_path / "a.png", PIC), size=64).numpy()
    assert np.corrcoef(t.ravel(), PIC.ravel())[0, 1] > 0.999
    assert t[:, 32].mean() > t[:, 16].mean()  # spine column brighter than lung


def test_rgb_is_converted_with_luminance_weights(tmp_path):
    grey = load_xray(save_png(tmp_path / "g.png", PIC, bits=8), size=64)
    p8 = np.round(PIC * 255).astype(np.uint8)
    same = np.stack([p8, p8, p8], -1)
    Image.fromarray(same).save(tmp_path / "rgb.png")
    assert torch.allclose(load_xray(tmp_path / "rgb.png", size=64), grey, atol=1e-5)
    # green weighs 0.587, red 0.299: R = p, G = 1 - p reads as the inverted picture
    mixed = np.stack([p8, 255 - p8, np.zeros_like(p8)], -1)
    Image.fromarray(mixed).save(tmp_path / "mixed.png")
    assert torch.allclose(load_xray(tmp_path / "mixed.png", size=64), 1 - grey, atol=0.01)


def test_alpha_channel_is_dropped(tmp_path):
    grey = load_xray(save_png(tmp_path / "g.png", PIC, bits=8), size=64)
    p8 = np.round(PIC * 255).astype(np.uint8)
    alpha = np.random.default_rng(0).integers(0, 256, p8.shape, dtype=np.uint8)
    Image.fromarray(np.stack([p8, p8, p8, alpha], -1)).save(tmp_path / "rgba.png")
    Image.fromarray(np.stack([p8, alpha], -1), mode="LA").save(tmp_path / "la.png")
    assert torch.allclose(load_xray(tmp_path / "rgba.png", size=64), grey, atol=1e-5)
    assert torch.allclose(load_xray(tmp_path / "la.png", size=64), grey, atol=1e-5)


def test_jpeg_tiff_npy_match_png(tmp_path):
    ref = load_xray(save_png(tmp_path / "a.png", PIC), size=64)
    tifffile.imwrite(tmp_path / "a.tif", PIC16)
    assert read_xray_array(tmp_path / "a.tif").dtype == np.uint16
    assert torch.allclose(load_xray(tmp_path / "a.tif", size=64), ref, atol=1e-6)
    np.save(tmp_path / "a.npy", PIC.astype(np.float64))
    np.save(tmp_path / "b.npy", PIC[None].astype(np.float32))  # (1, H, W) is a 2D image too
    assert torch.allclose(load_xray(tmp_path / "a.npy", size=64), ref, atol=1e-4)
    assert torch.allclose(load_xray(tmp_path / "b.npy", size=64), ref, atol=1e-4)
    Image.fromarray(np.round(PIC * 255).astype(np.uint8)).save(tmp_path / "a.jpg", quality=95)
    assert (load_xray(tmp_path / "a.jpg", size=64) - ref).abs().mean() < 0.01


def test_dicom_monochrome1_loads_inverted(tmp_path):
    m2 = load_xray(save_dicom(tmp_path / "m2.dcm", PIC16), size=64)
    m1 = load_xray(save_dicom(tmp_path / "m1.dcm", PIC16, photometric="MONOCHROME1"), size=64)
    ref = load_xray(save_png(tmp_path / "a.png", PIC), size=64)
    assert torch.allclose(m2, ref, atol=1e-5)
    assert torch.allclose(m1, 1 - m2, atol=1e-5)


def test_dicom_rescale_slope_is_applied(tmp_path):
    m2 = load_xray(save_dicom(tmp_path / "m2.dcm", PIC16), size=64)
    # a negative slope flips the stored values, so the film reads inverted
    neg = load_xray(save_dicom(tmp_path / "neg.dcm", PIC16, slope=-1.0, intercept=70000.0), size=64)
    assert torch.allclose(neg, 1 - m2, atol=1e-5)
    arr = read_xray_array(tmp_path / "neg.dcm")
    assert np.allclose(arr, 70000.0 - PIC16)


def test_dicom_multiframe_uses_first_frame(tmp_path):
    frames = np.stack([PIC16, PIC16[::-1]])
    multi = load_xray(save_dicom(tmp_path / "multi.dcm", frames), size=64)
    single = load_xray(save_dicom(tmp_path / "single.dcm", PIC16), size=64)
    assert torch.allclose(multi, single)


def test_dicom_detected_without_suffix(tmp_path):
    save_dicom(tmp_path / "IM0001", PIC16)
    assert torch.allclose(load_xray(tmp_path / "IM0001", size=32),
                          load_xray(save_png(tmp_path / "a.png", PIC), size=32), atol=1e-5)


def test_non_square_is_padded_centred_keeping_aspect(tmp_path):
    img = np.full((40, 80), 0.1)
    img[10:30, 30:50] = 1.0  # a 20x20 square in the middle
    np.save(tmp_path / "wide.npy", img)
    t = load_xray(tmp_path / "wide.npy", size=80)
    assert t.shape == (80, 80)
    bright = t > 0.5
    rows, cols = bright.any(1).nonzero().ravel(), bright.any(0).nonzero().ravel()
    assert (rows.min().item(), rows.max().item()) == (30, 49)  # 20 padding rows above, centred
    assert (cols.min().item(), cols.max().item()) == (30, 49)  # still square: aspect kept
    # padding uses the border's value (the background), not black or a stretch
    assert torch.all(t[:20] == t[25, 0]) and torch.all(t[60:] == t[25, 0])


def test_shrinking_averages_instead_of_aliasing(tmp_path):
    h, f = 128, 4
    ramp = np.tile(np.linspace(0, 1, h), (h, 1))
    noise = np.random.default_rng(0).normal(0, 1, (h, h))
    blocks = noise.reshape(h // f, f, h // f, f)
    noise = (blocks - blocks.mean(axis=(1, 3), keepdims=True)).reshape(h, h)  # zero mean per 4x4 block
    np.save(tmp_path / "a.npy", ramp + noise)
    np.save(tmp_path / "r.npy", ramp)
    t, ref = load_xray(tmp_path / "a.npy", size=h // f), load_xray(tmp_path / "r.npy", size=h // f)
    # area averaging cancels the noise exactly; point/bilinear sampling would keep most of it
    assert (t - ref).abs().max() < 1e-5


def test_growing_is_smooth(tmp_path):
    np.save(tmp_path / "small.npy", picture(16, 16))
    t = load_xray(tmp_path / "small.npy", size=64)
    assert t.shape == (64, 64)
    assert t.diff(dim=1).abs().max() < 0.2  # bilinear: no blocky steps of nearest-neighbour


def test_large_image_is_downsampled(tmp_path):
    big = np.kron(picture(64, 96), np.ones((40, 40)))  # 2560 x 3840 = 9.8 MP
    Image.fromarray(np.round(big * 65535).astype(np.uint16)).save(tmp_path / "big.png")
    t = load_xray(tmp_path / "big.png", size=96)
    assert t.shape == (96, 96) and t.min() >= 0 and t.max() <= 1


def _truncated_png(p):
    save_png(p, PIC)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _constant(p):
    Image.fromarray(np.full((32, 32), 77, np.uint8)).save(p)


def _nan_npy(p):
    a = PIC.copy()
    a[3, 3] = np.nan
    np.save(p, a)


BAD_FILES = {
    "missing.png": (lambda p: None, "not found"),
    "empty.png": (lambda p: p.write_bytes(b""), "empty"),
    "text.png": (lambda p: p.write_text("this is not an image\n" * 20), "not a recognised image"),
    "truncated.png": (_truncated_png, "truncated"),
    "constant.png": (_constant, "constant"),
    "nopixels.dcm": (lambda p: save_dicom(p, PIC16, pixel_data=False), "no pixel data"),
    "text.dcm": (lambda p: p.write_text("not dicom at all"), "DICOM"),
    "text.tif": (lambda p: p.write_text("not a tiff at all"), "TIFF"),
    "pickle.npy": (lambda p: np.save(p, np.array([{"a": 1}], dtype=object)), ".npy"),
    "nan.npy": (_nan_npy, "NaN"),
    "volume.npy": (lambda p: np.save(p, np.zeros((4, 5, 6))), "2D image"),
    "folder.png": (lambda p: p.mkdir(), "folder"),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_input_raises_error_naming_file_and_problem(tmp_path, name):
    path = tmp_path / name
    make, problem = BAD_FILES[name]
    make(path)
    with pytest.raises(XRay2CTInputError) as info:
        load_xray(path, size=32)
    msg = str(info.value)
    assert msg.startswith(str(path)), msg
    assert problem.lower() in msg.lower(), msg


@pytest.mark.parametrize("suffix", ["png", "tif", "dcm", "npy"])
def test_absurd_size_refused_before_decoding(tmp_path, monkeypatch, suffix):
    path = tmp_path / f"a.{suffix}"
    {"png": lambda: save_png(path, PIC), "tif": lambda: tifffile.imwrite(path, PIC16),
     "dcm": lambda: save_dicom(path, PIC16), "npy": lambda: np.save(path, PIC)}[suffix]()
    monkeypatch.setattr(xrayio, "MAX_PIXELS", 64 * 64 - 1)
    with pytest.raises(XRay2CTInputError, match="megapixels"):
        load_xray(path, size=32)


def test_nearly_constant_image_warns(tmp_path):
    img = np.zeros((64, 64))
    img[5, 7] = 1.0  # one bright pixel: the 0.5-99.5 % window has zero width
    np.save(tmp_path / "dot.npy", img)
    with pytest.warns(UserWarning, match="same value"):
        load_xray(tmp_path / "dot.npy", size=64)


def test_bad_size_argument(tmp_path):
    path = save_png(tmp_path / "a.png", PIC)
    for size in (0, -3, 2.5):
        with pytest.raises(XRay2CTInputError, match="size"):
            load_xray(path, size=size)


def test_pydicom_reads_our_fixture(tmp_path):
    """Guard the fixture itself: a real reader sees MONOCHROME1 and the pixels we wrote."""
    ds = pydicom.dcmread(save_dicom(tmp_path / "m1.dcm", PIC16, photometric="MONOCHROME1"))
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    assert np.array_equal(ds.pixel_array, PIC16)


def test_huge_image_is_refused_from_its_header_cheaply(tmp_path):
    """A 9900² PNG is a few kB on disk but ~400 MB to 4 GB once decoded: refuse it from the header."""
    import subprocess
    import sys

    path = tmp_path / "huge.png"
    Image.new("1", (9900, 9900)).save(path)  # 1-bit: cheap to make here, same header check as RGBA
    code = ("import sys\nfrom xray2ct.data.xrayio import load_xray\ntry:\n    load_xray(sys.argv[1], 128)\n"
            "except Exception as e:\n    print(type(e).__name__, e)\n"
            # this process's own peak (VmHWM): ru_maxrss survives exec, so it would report a big parent's
            "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))")
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    err, rss_kib = r.stdout.strip().splitlines()
    assert err.startswith("XRay2CTInputError") and "8192 pixels per side" in err and str(path) in err, r.stdout
    assert int(rss_kib) < 800_000, rss_kib  # torch's import is most of it; decoding would add ~100 MB to 4 GB


def test_max_side_and_min_side(tmp_path):
    np.save(tmp_path / "long.npy", np.zeros((16, xrayio.MAX_SIDE + 1), np.float32))
    with pytest.raises(XRay2CTInputError, match="pixels per side"):
        load_xray(tmp_path / "long.npy", size=32)
    for shape in ((1, 2), (15, 64)):
        Image.fromarray(np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)).save(tmp_path / "tiny.png")
        with pytest.raises(XRay2CTInputError, match=rf"{shape[0]} x {shape[1]} pixels is too small.*16") as e:
            load_xray(tmp_path / "tiny.png", size=32)
        assert str(e.value).startswith(str(tmp_path / "tiny.png"))
    np.save(tmp_path / "row.npy", np.arange(64.0)[None, :, None])  # (1, 64, 1): a 1 x 64 image
    with pytest.raises(XRay2CTInputError, match="too small"):
        load_xray(tmp_path / "row.npy", size=32)


def test_large_jpeg_is_decoded_at_a_reduced_scale(tmp_path):
    big = np.kron(picture(128, 128), np.ones((8, 8)))  # 1024², smooth: DCT scaling loses nothing visible
    Image.fromarray(np.round(big * 255).astype(np.uint8)).convert("RGB").save(tmp_path / "big.jpg", quality=95)
    assert read_xray_array(tmp_path / "big.jpg").shape == (1024, 1024)
    assert read_xray_array(tmp_path / "big.jpg", size=128).shape == (128, 128)  # libjpeg's 1/8 scale
    assert read_xray_array(tmp_path / "big.jpg", size=300).shape == (512, 512)  # 1/2: the smallest scale >= 300
    fast, full = load_xray(tmp_path / "big.jpg", size=128), xrayio.prepare_xray(
        read_xray_array(tmp_path / "big.jpg"), size=128)
    assert (fast - full).abs().mean() < 0.01
