"""Load a radiograph (PNG, JPEG, TIFF, DICOM or .npy) as the model's input image.

Every film goes through the same steps, so a real radiograph and a DRR rendered by
`xray2ct.physics.projector` look alike to the model:

1. decode to one grey channel (RGB -> luminance, alpha dropped; DICOM: modality LUT /
   rescale slope+intercept, then the VOI LUT or first window (what the film is read with),
   then inverted when it displays high values dark (MONOCHROME1, or Presentation LUT
   Shape INVERSE on MONOCHROME2), so bones are bright; uniform collimator / shutter
   borders cropped to the exposed field, see `exposed_field`);
2. pad a non-square image to a square, centred, with the median of the two borders being
   padded (the background there: air or collimator). Padding keeps the anatomy's aspect
   ratio and all of the field of view, which the square detector of `Geometry` assumes;
   stretching would distort it and cropping would cut anatomy;
3. resize to `size` x `size`: area averaging when shrinking (no aliasing), bilinear when
   growing;
4. `robust_normalize` to [0, 1] (the 0.5/99.5 percentile window DRRs go through).

Any file that cannot be used raises `XRay2CTInputError` naming the file and the problem.

Size limits, checked from the file's header before any pixel is decoded (a small PNG can
declare 10 000² pixels and take gigabytes to decode): at most MAX_SIDE pixels per side and
MAX_PIXELS in all (a chest detector is about 3000², a 600 dpi film scan about 8500 x
10 000: downsample such a scan first), at least MIN_SIDE per side. A JPEG larger than
needed is decoded at 1/2, 1/4 or 1/8 scale directly (libjpeg's DCT scaling, `draft`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from xray2ct.data.errors import XRay2CTInputError
from xray2ct.physics.radiograph import robust_normalize

MAX_PIXELS = 64_000_000  # refuse larger images: a chest film is ~10-40 MP; beyond this it is not one
MAX_SIDE = 8192  # px per side. The largest accepted image (64 MP RGBA PNG) peaks at ~1 GB RSS to load
MIN_SIDE = 16  # px per side: a smaller image holds no anatomy worth reconstructing
DICOM_SUFFIXES = {".dcm", ".dicom", ".dic"}
TIFF_SUFFIXES = {".tif", ".tiff"}
LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, what Pillow's convert("L") uses


@dataclass(frozen=True)
class XRayFile:
    """A decoded radiograph and what its file says about the acquisition.

    pixels: (H, W) grey, bones bright, after any border crop.
    shape: (rows, cols) as decoded, before the crop.
    crop: (top, bottom, left, right) pixels removed from the decoded image.
    pixel_mm: detector pixel pitch from the DICOM header (ImagerPixelSpacing, else a
        non-zero PixelSpacing, at the detector), mm; None: unknown (a PNG, or 0.000).
    tags: acquisition tags found in a DICOM header, by keyword (numbers as floats, text as str).
    """

    pixels: np.ndarray
    shape: tuple
    crop: tuple = (0, 0, 0, 0)
    pixel_mm: float | None = None
    tags: dict = field(default_factory=dict)


def load_xray(path: str | Path, size: int = 256) -> torch.Tensor:
    """Read a radiograph file -> float32 (size, size) in [0, 1], bones bright (a DICOM film
    cropped to its exposed field; see `read_xray` for its acquisition tags)."""
    path = Path(path)
    return prepare_xray(read_xray(path, size=size).pixels, size=size, name=str(path))


def read_xray(path: str | Path, size: int | None = None) -> XRayFile:
    """Decode a radiograph with its acquisition tags (DICOM) and border crop; see XRayFile."""
    path = Path(path)
    _check_file(path)
    if _is_dicom(path):
        arr, pixel_mm, tags = _read_dicom(path, with_tags=True)
        arr = _to_grey(arr, path)
        top, bottom, left, right = exposed_field(arr)
        cropped = arr[top:arr.shape[0] - bottom, left:arr.shape[1] - right]
        return XRayFile(cropped, arr.shape, (top, bottom, left, right), pixel_mm, tags)
    arr = read_xray_array(path, size)
    return XRayFile(arr, arr.shape)


BORDER_TOLERANCE = 0.01  # a border line's std, as a fraction of the image's 0.5-99.5 percentile range
MIN_FIELD = 0.25  # keep at least this fraction of each side: a "border" beyond it is not one


def exposed_field(img: np.ndarray, passes: int = 2) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) uniform border lines around the exposed field, in pixels.

    A collimator blade or an electronic shutter leaves lines of one value (unexposed
    film, or a burned-in black/white mask) along the image edges; the model has never
    seen such a frame, so it is cropped. A line counts as border when its standard
    deviation is under BORDER_TOLERANCE of the image's intensity range; lines are
    peeled from each edge inwards, rows then columns, twice (a collimated column band
    makes every full row non-uniform until the columns are gone). Crops leaving less
    than MIN_FIELD of a side are not done.
    """
    a = np.asarray(img, dtype=np.float32)
    lo, hi = np.percentile(a[:: max(1, a.shape[0] // 512), :: max(1, a.shape[1] // 512)], [0.5, 99.5])
    tol = BORDER_TOLERANCE * max(float(hi - lo), 1e-12)
    top = bottom = left = right = 0
    for _ in range(passes):
        field_ = a[top:a.shape[0] - bottom, left:a.shape[1] - right]
        row_flat = field_.std(axis=1) <= tol  # (H,)
        t, b = _run(row_flat), _run(row_flat[::-1])
        field_ = field_[t:field_.shape[0] - b]
        col_flat = field_.std(axis=0) <= tol if field_.shape[0] else np.zeros(field_.shape[1], bool)  # (W,)
        l_, r = _run(col_flat), _run(col_flat[::-1])
        top, bottom, left, right = top + t, bottom + b, left + l_, right + r
    h, w = a.shape
    if h - top - bottom < MIN_FIELD * h or w - left - right < MIN_FIELD * w:
        return 0, 0, 0, 0
    return top, bottom, left, right


def _run(flags: np.ndarray) -> int:
    """Length of the leading run of True."""
    off = np.flatnonzero(~flags)
    return int(off[0]) if off.size else int(flags.size)


def prepare_xray(image: np.ndarray | torch.Tensor, size: int = 256, name: str = "image") -> torch.Tensor:
    """Grey image (H, W), any dtype -> float32 (size, size) in [0, 1]: pad square, resize, normalize."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise XRay2CTInputError(f"X-ray size must be a positive integer, got {size!r}")
    if isinstance(image, torch.Tensor):
        img = image.detach().float()
    else:
        img = torch.from_numpy(np.asarray(image, dtype=np.float32))
    if img.ndim != 2 or min(img.shape) < 1:
        raise XRay2CTInputError(f"{name}: expected a 2D grey image, got shape {tuple(img.shape)}")
    if not torch.isfinite(img).all():
        bad = int((~torch.isfinite(img)).sum())
        raise XRay2CTInputError(f"{name}: {bad} pixel(s) are NaN or infinite")
    lo, hi = img.min().item(), img.max().item()
    if lo == hi:
        raise XRay2CTInputError(f"{name}: image is constant (every pixel = {lo:g}); there is nothing to normalize")
    out = robust_normalize(_resize(_pad_square(img), size)).contiguous()
    if (out == 0).float().mean() > 0.95:  # >99% of pixels share one value: the percentile window collapsed
        warnings.warn(f"{name}: almost every pixel has the same value; the normalized image is "
                      "black and white only (is this a radiograph?)", stacklevel=2)
    return out


def _pad_square(img: torch.Tensor) -> torch.Tensor:
    """(H, W) -> (L, L), L = max(H, W), centred; fill = median of the borders being padded."""
    h, w = img.shape
    if h == w:
        return img
    if h > w:
        fill = torch.cat([img[:, 0], img[:, -1]]).median().item()
        left = (h - w) // 2
        return F.pad(img, (left, h - w - left, 0, 0), value=fill)
    fill = torch.cat([img[0], img[-1]]).median().item()
    top = (w - h) // 2
    return F.pad(img, (0, 0, top, w - h - top), value=fill)


def _resize(img: torch.Tensor, size: int) -> torch.Tensor:
    """Square (L, L) -> (size, size): area when shrinking, bilinear when growing."""
    if img.shape[-1] == size:
        return img
    x = img[None, None]  # (1, 1, L, L)
    if img.shape[-1] > size:
        x = F.interpolate(x, size=(size, size), mode="area")
    else:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x[0, 0]


# --------------------------------------------------------------------------- decoding


def read_xray_array(path: str | Path, size: int | None = None) -> np.ndarray:
    """Decode a radiograph file to a 2D grey array (raw values, bones bright for DICOM).

    size: the side it will be resized to, if known; a JPEG is then decoded at the smallest
    DCT scale still at least that large.
    """
    path = Path(path)
    _check_file(path)
    with open(path, "rb") as f:
        head = f.read(132)
    suffix = path.suffix.lower()
    if suffix == ".npy" or head.startswith(b"\x93NUMPY"):
        arr = _read_npy(path)
    elif _is_dicom(path):
        arr = _read_dicom(path)
    elif suffix in TIFF_SUFFIXES or head[:4] in (b"II*\x00", b"MM\x00*"):
        arr = _read_tiff(path)
    else:
        arr = _read_pillow(path, size)
    return _to_grey(arr, path)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise XRay2CTInputError(f"{path}: X-ray file not found")
    if path.is_dir():
        raise XRay2CTInputError(f"{path}: is a folder, expected an X-ray image file")
    if path.stat().st_size == 0:
        raise XRay2CTInputError(f"{path}: file is empty (0 bytes)")


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    with open(path, "rb") as f:
        return f.read(132)[128:132] == b"DICM"


def _check_pixels(path: Path, n_pixels: int, shape: tuple) -> None:
    """Refuse absurd sizes before decoding: the header's size is known, the pixels are not read yet.

    shape: (height, width) as the header declares it; other shapes get only the pixel count
    checked (`_to_grey` refuses them with its own message).
    """
    shape = tuple(int(v) for v in shape)
    if n_pixels > MAX_PIXELS or (len(shape) == 2 and max(shape) > MAX_SIDE):
        raise XRay2CTInputError(
            f"{path}: image of shape {shape} has {n_pixels / 1e6:.0f} megapixels, more than the limit of "
            f"{MAX_PIXELS / 1e6:.0f} megapixels and {MAX_SIDE} pixels per side; downsample it first")
    if len(shape) == 2 and min(shape) < MIN_SIDE:
        h, w = shape
        raise XRay2CTInputError(f"{path}: image of {h} x {w} pixels is too small; an X-ray needs at least "
                                f"{MIN_SIDE} pixels per side")


def _to_grey(arr: np.ndarray, path: Path) -> np.ndarray:
    """(H, W), (H, W, 1..4) or singleton-padded -> (H, W); colour -> luminance, alpha dropped."""
    if arr.dtype.kind not in "biuf":
        raise XRay2CTInputError(f"{path}: pixel type {arr.dtype} is not a numeric image")
    if arr.ndim == 3 and arr.shape[-1] in (2, 3, 4):
        if arr.shape[-1] == 2:  # grey + alpha
            arr = arr[..., 0]
        else:  # RGB(A): luminance of the colour channels, in float32 (float64 doubles the peak memory)
            arr = sum(arr[..., c].astype(np.float32) * np.float32(LUMA[c]) for c in range(3))
    # (1, H, W) / (H, W, 1) from npy or single-sample files
    while arr.ndim > 2 and 1 in arr.shape:
        arr = arr.squeeze(arr.shape.index(1))
    if arr.ndim != 2:
        raise XRay2CTInputError(f"{path}: expected a 2D image, got an array of shape {arr.shape}")
    return arr


def _read_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r")
    except Exception as e:  # ValueError for pickles and bad headers, OSError for truncation
        raise XRay2CTInputError(f"{path}: not a readable .npy array ({e})") from e
    channels = arr.shape[-1] if arr.ndim == 3 and arr.shape[-1] <= 4 else 1
    shape = arr.shape[:-1] if channels > 1 else arr.shape
    while len(shape) > 2 and 1 in shape:  # (1, H, W) / (H, W, 1), as _to_grey squeezes them
        shape = tuple(d for i, d in enumerate(shape) if i != shape.index(1))
    _check_pixels(path, arr.size // channels, shape)  # on the memory map, before reading
    return np.array(arr)


def _read_pillow(path: Path, size: int | None = None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Pillow warns above ~89 MP; our own MAX_PIXELS check replaces it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                _check_pixels(path, im.height * im.width, (im.height, im.width))
                if size and im.format == "JPEG":
                    im.draft(im.mode, (size, size))  # decode at 1/2..1/8 scale, both sides still >= size
                im.load()  # decodes now, so a truncated file fails here
                if im.mode in ("1", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                    im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
                return np.array(im)
    except Image.DecompressionBombError as e:
        raise XRay2CTInputError(f"{path}: image exceeds the {MAX_PIXELS / 1e6:.0f} MP limit ({e})") from e
    except UnidentifiedImageError as e:
        raise XRay2CTInputError(
            f"{path}: not a recognised image file (expected PNG, JPEG, TIFF, DICOM or .npy)") from e
    except (OSError, SyntaxError, ValueError) as e:
        if isinstance(e, XRay2CTInputError):
            raise
        raise XRay2CTInputError(f"{path}: image file is damaged or truncated ({e})") from e


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]  # multi-page TIFF: first image, as for multi-frame DICOM
            _check_pixels(path, page.imagelength * page.imagewidth, (page.imagelength, page.imagewidth))
            arr = page.asarray()
    except XRay2CTInputError:
        raise
    except Exception as e:  # tifffile raises TiffFileError, ValueError, struct errors on damaged files
        raise XRay2CTInputError(f"{path}: not a readable TIFF image ({e})") from e
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar RGB (C, H, W) -> (H, W, C)
    return arr


ACQUISITION_TAGS = ("DistanceSourceToDetector", "DistanceSourceToPatient", "ImagerPixelSpacing", "PixelSpacing",
                    "EstimatedRadiographicMagnificationFactor", "ViewPosition", "PatientOrientation",
                    "PixelSpacingCalibrationType", "Modality")


def _dicom_tags(ds) -> dict:
    """The acquisition tags present and non-empty: numbers as floats (lists for pairs), text as str."""
    out = {}
    for key in ACQUISITION_TAGS:
        value = ds.get(key)
        if value is None or value == "":
            continue
        if key in ("ImagerPixelSpacing", "PixelSpacing", "PatientOrientation"):
            items = list(value) if not isinstance(value, str) else [value]
            out[key] = [str(v) for v in items] if key == "PatientOrientation" else [float(v) for v in items]
        elif key in ("ViewPosition", "PixelSpacingCalibrationType", "Modality"):
            out[key] = str(value).strip().upper()
        else:
            out[key] = float(value)
    return out


def _dicom_pixel_mm(tags: dict) -> float | None:
    """Detector pitch, mm: ImagerPixelSpacing, else PixelSpacing (a 0.000 spacing is missing).

    A PixelSpacing calibrated to the patient (PixelSpacingCalibrationType present) is
    scaled back to the detector by EstimatedRadiographicMagnificationFactor."""
    for key in ("ImagerPixelSpacing", "PixelSpacing"):
        values = [v for v in tags.get(key, []) if v > 0]
        if len(values) == len(tags.get(key, [])) and values:
            if len(set(values)) > 1:
                warnings.warn(f"{key} {values}: non-square pixels; using their mean", stacklevel=3)
            pitch = float(np.mean(values))
            if key == "PixelSpacing" and "PixelSpacingCalibrationType" in tags:
                pitch *= tags.get("EstimatedRadiographicMagnificationFactor", 1.0)
            return pitch
    return None


def _read_dicom(path: Path, with_tags: bool = False):
    """-> pixels (H, W) bones bright; with_tags: (pixels, pitch mm or None, acquisition tags)."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array

    try:
        ds = pydicom.dcmread(path, defer_size="1 MB")  # header now; large elements (pixels) only when used
    except (InvalidDicomError, OSError, EOFError, ValueError) as e:
        raise XRay2CTInputError(f"{path}: not a readable DICOM file ({e})") from e
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise XRay2CTInputError(f"{path}: DICOM file has no pixel data (not an image: modality "
                                f"{ds.get('Modality', 'unknown')}, SOP class {ds.get('SOPClassUID', 'unknown')})")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    _check_pixels(path, rows * cols, (rows, cols))
    try:  # multi-frame: the first frame only, read and decoded from the file alone
        arr = pixel_array(str(path), index=0)
    except Exception as e:  # missing decoder plugin, damaged pixel data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise XRay2CTInputError(f"{path}: cannot decode DICOM pixel data (transfer syntax {syntax}): {e}") from e
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric.startswith("MONOCHROME"):
        arr = apply_modality_lut(arr, ds).astype(np.float64)  # stored values -> e.g. HU / exposure
        if "VOILUTSequence" in ds or "WindowCenter" in ds:
            # the VOI LUT (or the first window) is how the film is meant to be read: it clips
            # the unexposed and burned-through tails and may be non-linear (a film curve)
            try:
                arr = np.asarray(apply_voi_lut(arr, ds, index=0), dtype=np.float64)
            except Exception as e:  # a malformed LUT: the raw values still make an image
                warnings.warn(f"{path}: VOI LUT / window not applied ({e})", stacklevel=2)
        shape = str(ds.get("PresentationLUTShape", "")).strip().upper()
        # MONOCHROME1 displays high values dark (its Presentation LUT Shape, when present, is
        # INVERSE and says the same again); MONOCHROME2 with INVERSE is displayed inverted too.
        # Flip once, so bones are bright.
        if photometric == "MONOCHROME1" or shape == "INVERSE":
            arr = arr.max() + arr.min() - arr
    if with_tags:
        tags = _dicom_tags(ds)
        return arr, _dicom_pixel_mm(tags), tags
    return arr
