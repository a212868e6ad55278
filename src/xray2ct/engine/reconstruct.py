"""`xray2ct reconstruct`: two radiographs in, a CT volume in Hounsfield units out.

    pa, lat files --load_xray--> (1, 2, S, S) --model--> normalized CT (1, 1, N, N, N)
        --unit_to_hu, optional trilinear upscale--> NIfTI / NPY / DICOM series

The checkpoint carries its config (X-ray size, volume size, field of view), so nothing
else is needed. Voxel spacing is fov_mm / N (or fov_mm / upscaled size) per axis; the
orientation is ctio's (d, h, w) = head→feet, anterior→posterior, right→left.

Every file is written atomically (temp name beside it, then one rename), the extras
(uncertainty, preview) before the volume, so "the volume exists" means "this
reconstruction is complete". An existing output is refused unless `overwrite=True`.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from xray2ct.checkpoint import CheckpointError
from xray2ct.errors import UserError
from xray2ct.fileio import atomic_path, fsync_tree, new_temp_folder
from xray2ct.physics.hu import HU_MIN, HU_RANGE, unit_to_hu
from xray2ct.refine import RefineResult, reproject, upsample
from xray2ct.refine import refine as run_refine

log = logging.getLogger(__name__)

FORMATS = ("nifti", "npy", "dicom")
XRAY_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom", ".npy")
DEFAULT_WEIGHTS = "assets/default"  # inside the installed package; shipped by a later release
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
DICOM_DESCRIPTION = "xray2ct biplanar reconstruction (research use only)"  # LO: <= 64 chars
VIEW_NAMES = ("PA", "lateral")  # the model's two inputs, in order (the frontal may be an AP film)


class ReconstructionError(UserError, ValueError):
    """Reconstruction cannot proceed with these arguments; the message names the file or value."""


class OutputExistsError(UserError, FileExistsError):
    """An output file exists and overwrite was not asked for."""


class OutputWriteError(UserError, OSError):
    """Writing an output failed (disk full, permissions); nothing was left under its name."""


# --- model ---------------------------------------------------------------------------
def default_checkpoint() -> Path:
    """The bundled default weights (`xray2ct/assets/default/*.safetensors`), if installed."""
    from importlib.resources import files

    folder = Path(str(files("xray2ct"))) / DEFAULT_WEIGHTS
    found = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not found:
        raise CheckpointError(f"no bundled default weights are installed (looked in {folder}); "
                              "pass --checkpoint PATH (a .safetensors file or a training run folder)")
    return found[0]


def select_device(device: str = "auto") -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> torch.device; an unusable choice is a user error."""
    from xray2ct.engine.distributed import resolve_device

    try:
        return resolve_device(device)
    except (RuntimeError, ValueError) as e:
        raise ReconstructionError(str(e)) from e


def load_for_inference(checkpoint: str | os.PathLike | None, device: str = "auto", cuda_graphs: bool = False):
    """(model in eval mode on the device, its Config, torch.device). cuda_graphs: its forward
    replays CUDA graphs (`engine.graphs`), or, off CUDA, runs as it is after one warning."""
    from xray2ct.checkpoint import load_model
    from xray2ct.engine.graphs import with_cuda_graphs

    dev = select_device(device)
    model, cfg, _ = load_model(default_checkpoint() if checkpoint is None else checkpoint, device=dev)
    if cuda_graphs:
        model, _ = with_cuda_graphs(model, dev, setting="--cuda-graphs")
    return model, cfg, dev


@torch.inference_mode()
def predict(model: torch.nn.Module, xrays: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """xrays (B, 2, S, S) -> volume (B, 1, N, N, N) in [0, 1], log_var (same) or None; float32 on CPU."""
    out = model(xrays.to(device))
    for key in ("volume", "log_var"):
        if out.get(key) is not None and not bool(torch.isfinite(out[key]).all()):  # clamp hides NaN as 0 HU
            bad = int((~torch.isfinite(out[key])).sum())
            raise ReconstructionError(f"the model's {key} output holds {bad} NaN or infinite value(s); no volume "
                                      "was written (damaged weights, or inputs far from what it was trained on)")
    volume = out["volume"].float().clamp(0, 1).cpu()  # the target window; outside it HU mean nothing
    log_var = out.get("log_var")
    return volume, None if log_var is None else log_var.float().cpu()


def uncertainty_hu(log_var: torch.Tensor) -> torch.Tensor:
    """Predicted log-variance of the normalized CT -> standard deviation in HU."""
    return torch.exp(0.5 * log_var) * HU_RANGE


# --- output files -----------------------------------------------------------------------
def _format_of(path: Path, what: str) -> str:
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith(".npy"):
        return "npy"
    raise ReconstructionError(f"{path}: cannot tell the {what} format from the name; use .nii.gz, .nii or .npy")


def _check_output(path: Path, fmt: str, overwrite: bool) -> None:
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


# --- one reconstruction ------------------------------------------------------------------
@dataclass
class Reconstruction:
    """One pair's result in memory."""

    volume: torch.Tensor  # (1, 1, D, H, W) normalized CT in [0, 1], float32 on CPU
    hu: np.ndarray  # (D, H, W) HU
    std_hu: np.ndarray | None  # (D, H, W) predicted std in HU; None: not asked for, or no log_var
    spacing: tuple[float, float, float]  # mm: fov_mm / size per axis
    xrays: torch.Tensor | None = None  # (1, 2, S, S) the model's inputs
    refinement: RefineResult | None = None  # what physics-consistent refinement did; None: not refined
    reprojected: torch.Tensor | None = None  # (1, 2, S, S) the result's DRRs on the inputs' intensities
    reprojected_network: torch.Tensor | None = None  # ... and the network's, when refinement changed it
    network: torch.Tensor | None = None  # (1, 1, n, n, n) the network's own volume, when refinement changed it
    present: tuple = (True, True)  # (frontal, lateral) given; reprojected holds only the given views
    refine_skipped: str | None = None  # why automatic refinement did not run, when it did not

    @property
    def views(self) -> tuple[str, ...]:
        """Display names of the views given, in the model's order."""
        return tuple(n for n, p in zip(VIEW_NAMES, self.present) if p)

    def input_images(self) -> dict:
        """{view name: (S, S) input image} for the views given."""
        return {n: self.xrays[0, v].numpy() for v, (n, p) in enumerate(zip(VIEW_NAMES, self.present)) if p}

    def projection_html(self) -> str:
        """The report's physics check: inputs beside the DRRs of the result (and of the network)."""
        from xray2ct.report import projection_section

        images = lambda t: dict(zip(self.views, t[0].numpy()))  # noqa: E731
        r = self.refinement
        return projection_section(self.input_images(), images(self.reprojected),
                                  None if self.reprojected_network is None else images(self.reprojected_network),
                                  None if r is None else (r.data_before, r.data_after))


@dataclass(frozen=True)
class RefineOptions:
    """What the user asked of refinement; the model's config (`refine` section) fills in the rest.

    enabled: True / False, or None (the default): refine unless a film shows anatomy well
    beyond the reconstructed field (`AUTO_MIN_SHADOW`, `AUTO_MAX_OUTSIDE`), where refinement
    was measured to cost 1-2 dB (docs/RESULTS.md): the volume would have to explain arms and
    body outside it. A wide film of air around the field is refined.
    """

    enabled: bool | None = None
    steps: int | None = None  # None: the model's refine.steps
    size: int | None = None  # refine on an N³ grid (prior upsampled); None: the network's grid

    def settings(self, cfg):
        """The model's RefineConfig with the user's steps, or None when refinement is off."""
        import dataclasses

        if self.enabled is False:
            return None
        return cfg.refine if self.steps is None else dataclasses.replace(cfg.refine, steps=self.steps)


NO_REFINE = RefineOptions(enabled=False)
AUTO_MIN_SHADOW = 0.9  # auto refinement: the volume's shadow covers at least this share of every film, ...
AUTO_MAX_OUTSIDE = 0.05  # ... or what lies outside it is air (mean grey below this)
MAX_REFINE_STEPS = 10_000
MAX_REFINE_SIZE = 256  # refinement grid side: 256³ is ~1 min per step on a CPU


def reconstruct_pair(model, cfg, dev, xrays: torch.Tensor, upscale=None, with_std: bool = True,
                     refine: RefineOptions = NO_REFINE, geometry=None, present=(True, True)) -> Reconstruction:
    """xrays (1, 2, S, S) -> the volume in HU and its uncertainty, resampled to `upscale` (D, H, W).

    present: (frontal, lateral) given; a missing view is an all-zero image for the network
    (as in training with view dropout), and refinement and the reprojection use only the given ones.

    geometry: the study's acquisition (`xray2ct.acquisition.Study.geometry`: the model's
    volume and S² detector with the study's views and distances); the network lifts with it
    and refinement projects with it. None: the model's training geometry.
    With refinement enabled, the network's volume is corrected against the X-rays
    (`xray2ct.refine`) before any upscaling.
    """
    from xray2ct.models.net import using_geometry

    with using_geometry(model, geometry):
        volume, log_var = predict(model, xrays, dev)
    result, network, skipped = None, None, None
    settings = refine.settings(cfg)
    lift_geometry = geometry or cfg.geometry.build(volume.shape[-1], xrays.shape[-1])
    if settings is not None and refine.enabled is None:
        skipped = refine_skip_reason(lift_geometry, present, xrays)
        if skipped:
            log.info("not refined: %s (pass --refine to refine anyway)", skipped)
            settings = None
    if settings is not None and log_var is None:
        warnings.warn("this model predicts no uncertainty (no log_var output), which refinement weighs its "
                      "prior by; the network's volume is used as it is", stacklevel=2)
        settings = None
    size = (refine.size if settings is not None else None) or volume.shape[-1]  # the grid of the result
    if geometry is None:
        geometry = cfg.geometry.build(size, xrays.shape[-1])
    else:  # the same acquisition on the result's grid
        geometry = geometry.scaled((size,) * 3, geometry.det_shape)
    geometry, xrays_given = given_views(geometry, xrays, present)
    if settings is not None:
        result, network, log_var = refine_placed(model, dev, xrays, volume, log_var, lift_geometry, geometry,
                                                 present, settings, cfg.geometry.mu_water)
        volume = result.volume.cpu()
        log.info("refined in %d steps (%.1f s): image error %.5f -> %.5f", result.steps, result.seconds,
                 result.data_before, result.data_after)
        if (placed := result.placement()) is not None:
            log.info("%s", placed)
    shift = None if result is None else result.shift_mm
    with torch.no_grad():
        reprojected, reprojected_network = (
            None if v is None else reproject(v, xrays_given, geometry, cfg.refine.fog_order, cfg.geometry.mu_water,
                                             shift)
            for v in (volume, network))
    volume = _upscale(volume, upscale)
    hu = unit_to_hu(volume)[0, 0].numpy()
    std = None
    if with_std and log_var is not None:  # skipped when unused: at an upscaled size it is a large resample
        std = uncertainty_hu(_upscale(log_var, upscale))[0, 0].numpy() * cfg.refine.sigma_scale
    return Reconstruction(volume, hu, std, tuple(cfg.geometry.fov_mm / n for n in hu.shape), xrays, result,
                          reprojected, reprojected_network, network, tuple(bool(p) for p in present), skipped)


def given_views(geometry, xrays: torch.Tensor, present) -> tuple:
    """The geometry and the films (B, V, S, S) of the views given only: a missing view's zeros are not data."""
    given = [v for v, p in enumerate(present) if p]
    if not given:
        raise ReconstructionError("no view given: a reconstruction needs a frontal or a lateral X-ray")
    if len(given) == len(present):
        return geometry, xrays
    return (geometry.with_views([geometry.views[v] for v in given],
                                {geometry.views[v]: geometry.setup(geometry.views[v]) for v in given}), xrays[:, given])


def refine_placed(model, dev, xrays: torch.Tensor, volume: torch.Tensor, log_var: torch.Tensor, lift_geometry,
                  geometry, present, settings, mu_water: float = 0.02) -> tuple[RefineResult, torch.Tensor, torch.Tensor]:
    """Refine the network's volume; for a patient the films show off-centre, also the network's
    second volume, lifted where the films show them, and keep the one that explains the films
    better. -> (the refinement kept, the network volume and log-variance it started from).

    xrays (1, 2, S, S): the model's inputs; volume, log_var (1, 1, N, N, N): its first pass,
    lifted through `lift_geometry` (the model's grid, both views); `geometry`: the given views
    on the refinement's grid, which may be finer (the prior is upsampled to it).

    Why the second pass: the network reconstructs the patient's frame but samples the films
    as if the patient stood at the isocentre, so it reconstructs a patient 20 mm off it partly
    where the films show them, and refinement keeps that placement. Lifting through
    `pose.placed` (the shift refinement found) lets it see the patient where they are. Which
    pass is better varies (the fitted shift can overshoot), and the image error after
    refinement tells: on 32 shifted robustness cases it chose the higher-PSNR volume every
    time (docs/RESULTS.md). A centred patient is refined once, exactly as before.
    """
    from xray2ct.models.net import using_geometry
    from xray2ct.pose import placed

    films = given_views(lift_geometry, xrays, present)[1].to(dev)
    size = geometry.volume_shape[-1]

    def refined(mu, lv):
        mu, lv = upsample(mu, size), upsample(lv, size)
        return run_refine(mu.to(dev), lv.to(dev), films, geometry, settings, mu_water=mu_water), mu, lv

    best = refined(volume, log_var)
    shift = best[0].shift_mm
    if settings.relift and shift is not None and bool(shift.any()):
        with using_geometry(model, placed(lift_geometry, shift[0])):
            again = refined(*predict(model, xrays, dev))
        log.info("relifted where the films show the patient: image error %.3g (first pass %.3g)",
                 again[0].data_after, best[0].data_after)
        if again[0].data_after < best[0].data_after:
            best = again
    return best


def refine_skip_reason(geometry, present, xrays: torch.Tensor) -> str | None:
    """Why automatic refinement should not run on these films, or None: a film that shows
    matter (not air) outside the volume's shadow sees anatomy the volume cannot explain."""
    from xray2ct.refine import shadow

    inside = shadow(geometry)  # (V, R, C)
    for v, given in enumerate(present):
        outside = ~inside[v]
        if not given or outside.double().mean() < 1 - AUTO_MIN_SHADOW:
            continue
        seen = float(xrays[0, v][outside].float().mean())  # films are [0, 1] with air at 0
        if seen > AUTO_MAX_OUTSIDE:
            return (f"the films show anatomy beyond the reconstructed {geometry.volume_shape[0] * geometry.voxel_mm[0]:.0f}"
                    f" mm field ({100 * float(outside.double().mean()):.0f} % of a film lies outside it), which "
                    "refinement cannot explain")
    return None


def _upscale(vol: torch.Tensor, upscale) -> torch.Tensor:
    """(1, 1, N, N, N) -> (1, 1, D, H, W), trilinear."""
    if upscale is None:
        return vol
    return F.interpolate(vol, size=tuple(upscale), mode="trilinear", align_corners=False)


MAX_UPSCALE_SIDE = 1024  # voxels per axis: beyond a clinical CT's 512² × a few hundred slices
MAX_UPSCALE_VOXELS = 512 * 512 * 1024  # 2^28: about 1 GiB per float32 copy, and a few copies are made


def _check_upscale(upscale) -> tuple[int, int, int] | None:
    if upscale is None:
        return None
    sizes = tuple(upscale)
    if len(sizes) != 3 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in sizes):
        raise ReconstructionError(f"upscale must be three positive integers D H W, got {upscale!r}")
    sizes = tuple(int(s) for s in sizes)
    if max(sizes) > MAX_UPSCALE_SIDE or math.prod(sizes) > MAX_UPSCALE_VOXELS:
        raise ReconstructionError(f"upscale {' '.join(map(str, sizes))} is too large: at most {MAX_UPSCALE_SIDE} "
                                  f"voxels per axis and {MAX_UPSCALE_VOXELS:,} in all (e.g. 512 512 1024); "
                                  f"this would be {math.prod(sizes):,}")
    return sizes


def load_study_for(model, cfg, pa, lat, flags=None):
    """Both files with their acquisitions, on the model's geometry (`xray2ct.acquisition.load_study`)."""
    from xray2ct.acquisition import AcquisitionFlags, load_study

    nominal = cfg.geometry.build(cfg.model.volume_size, cfg.model.xray_img_size)
    return load_study(pa, lat, cfg.model.xray_img_size, nominal, flags or AcquisitionFlags())


def load_pair(pa, lat, size: int) -> torch.Tensor:
    """Two radiograph files -> (1, 2, size, size), PA then lateral; warns when they look swapped."""
    from xray2ct.data.viewcheck import check_views
    from xray2ct.data.xrayio import load_xray

    pa, lat = Path(pa), Path(lat)
    if pa.exists() and lat.exists() and pa.resolve() == lat.resolve():
        warnings.warn(f"{pa} is given as both the PA and the lateral X-ray", stacklevel=3)
    pa_img, lat_img = load_xray(pa, size=size), load_xray(lat, size=size)
    swapped = check_views(pa_img, lat_img, pa_name=f"--pa {pa}", lat_name=f"--lat {lat}")
    if swapped:
        warnings.warn(swapped, stacklevel=3)
    return torch.stack([pa_img, lat_img])[None]


@dataclass
class _Job:
    """The outputs of one reconstruction, checked before any computing."""

    out: Path
    fmt: str
    uncertainty: Path | None
    preview: Path | None
    upscale: tuple | None
    report: Path | None = None
    refine: RefineOptions = NO_REFINE

    @classmethod
    def check(cls, out, fmt, uncertainty, preview, upscale, overwrite, report=None,
              refine: RefineOptions = NO_REFINE) -> "_Job":
        out = Path(out)
        _check_output(out, fmt, overwrite)
        unc = None if uncertainty is None else Path(uncertainty)
        if unc is not None:
            _check_output(unc, _format_of(unc, "uncertainty"), overwrite)
        prev = None if preview is None else Path(preview)
        if prev is not None:
            if not prev.name.lower().endswith(".png"):
                raise ReconstructionError(f"{prev}: the preview is a PNG image; give it a .png name")
            if prev.exists() and not overwrite:
                raise OutputExistsError(f"{prev}: already exists; pass --overwrite to replace it")
        rep = None if report is None else Path(report)
        if rep is not None:
            if not rep.name.lower().endswith((".html", ".htm")):
                raise ReconstructionError(f"{rep}: the report is an HTML page; give it a .html name")
            if rep.exists() and not overwrite:
                raise OutputExistsError(f"{rep}: already exists; pass --overwrite to replace it")
        paths = [p.resolve() for p in (out, unc, prev, rep) if p is not None]
        if len(set(paths)) != len(paths):
            raise ReconstructionError(f"output paths must differ: {', '.join(map(str, paths))}")
        if refine.steps is not None and not 0 <= refine.steps <= MAX_REFINE_STEPS:
            raise ReconstructionError(f"--refine-steps must be in 0 … {MAX_REFINE_STEPS}, got {refine.steps}")
        if refine.size is not None and not 8 <= refine.size <= MAX_REFINE_SIZE:
            raise ReconstructionError(f"--refine-size must be in 8 … {MAX_REFINE_SIZE}, got {refine.size}")
        return cls(out, fmt, unc, prev, _check_upscale(upscale), rep, refine)

    def run(self, model, cfg, dev, xrays: torch.Tensor | None, title: str | None = None, study=None) -> Path:
        """study: an `xray2ct.acquisition.Study` (its X-rays, geometry and acquisition record
        are used, recorded in the NIfTI description and the report); else `xrays` at the
        model's geometry."""
        if study is not None:
            xrays = study.xrays
        rec = reconstruct_pair(model, cfg, dev, xrays, self.upscale,
                               with_std=bool(self.uncertainty or self.preview or self.report), refine=self.refine,
                               geometry=None if study is None else study.geometry,
                               present=(True, True) if study is None else study.present)
        hu, std, spacing = rec.hu, rec.std_hu, rec.spacing
        description = None if study is None else study.descrip()
        if self.uncertainty is not None and std is None:
            raise ReconstructionError(f"{self.uncertainty}: this model predicts no uncertainty (no log_var output)")
        # extras first, the volume last: a present volume means a finished reconstruction
        if self.uncertainty is not None:
            save_volume(self.uncertainty, std, spacing, _format_of(self.uncertainty, "uncertainty"), dtype="float32")
        if self.preview is not None:
            save_preview(self.preview, hu, std, title=title, spacing=spacing)
        if self.report is not None:
            from xray2ct.surface import try_bone_surface

            details = {} if study is None else dict(study.details())
            if rec.refinement is not None and (placed := rec.refinement.placement()):
                details["patient position"] = placed
            save_report(self.report, hu, std, spacing, rec.input_images(), mesh=try_bone_surface(hu, spacing)[0], title=title,
                        projections=rec.projection_html(), details=details or None)
        return save_volume(self.out, hu, spacing, self.fmt, description=description)


def reconstruct(pa, lat, out, checkpoint=None, uncertainty=None, preview=None, device: str = "auto",
                upscale: tuple[int, int, int] | None = None, fmt: str = "nifti", overwrite: bool = False,
                report=None, refine: RefineOptions = RefineOptions(), acquisition=None,
                cuda_graphs: bool = False) -> Path:
    """Reconstruct one CT from a PA and a lateral radiograph, or from one of them; returns the
    written volume's path.

    Args:
        pa, lat: radiograph files (PNG 8/16-bit, JPEG, TIFF, DICOM incl. MONOCHROME1, .npy);
            either may be None for a one-view reconstruction (the model was trained to do
            without a view; its uncertainty is larger then).
        out: output volume: .nii.gz/.nii (fmt "nifti"), .npy ("npy") or a folder ("dicom").
        checkpoint: .safetensors file or run folder; None: the bundled default weights.
        uncertainty: optional path (.nii.gz/.nii/.npy) for the predicted std in HU.
        preview: optional .png path for a three-plane preview.
        device: "auto" | "cpu" | "cuda" | "cuda:N".
        upscale: (D, H, W) to resample the output to (trilinear); spacing = fov_mm / size.
        fmt: "nifti" | "npy" | "dicom".
        overwrite: replace existing outputs instead of refusing.
        report: optional .html path for a self-contained report (slices, uncertainty, bone surface).
        refine: physics-consistent refinement against the X-rays (on by default; NO_REFINE: the
            network's volume exactly).
        acquisition: `xray2ct.acquisition.AcquisitionFlags` (--sid/--sod/--pixel-mm, --lat-*,
            --ap); what they leave open comes from DICOM tags, a `{stem}.json` sidecar or
            the model's training geometry (see xray2ct.acquisition).
        cuda_graphs: the network's forward replays CUDA graphs (on CUDA; elsewhere a warning).
    """
    job = _Job.check(out, fmt, uncertainty, preview, upscale, overwrite, report, refine)
    model, cfg, dev = load_for_inference(checkpoint, device, cuda_graphs)
    study = load_study_for(model, cfg, pa, lat, acquisition)
    if study.mode != "biplanar":
        log.info("one view only (%s): the volume rests more on the model's anatomy prior", study.mode)
    title = " + ".join(Path(f).name for f in (pa, lat) if f is not None)
    path = job.run(model, cfg, dev, None, title=title, study=study)
    log.debug("wrote %s", path)
    return path


# --- a folder of pairs -----------------------------------------------------------------
_PAIR = re.compile(r"^(?P<id>.+)_(?P<view>pa|lat)(?:[_\-.][^/]*)?$", re.IGNORECASE)


@dataclass
class BatchReport:
    """What `reconstruct_batch` did: (id, output) written, (id, output) already there,
    (id, reason) for every case that failed, (id, view) for every case written from one film."""

    done: list[tuple[str, Path]] = field(default_factory=list)
    skipped: list[tuple[str, Path]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    one_view: list[tuple[str, str]] = field(default_factory=list)  # (id, "pa" | "lat"): done from that film alone


def find_pairs(folder: str | os.PathLike, single_views: bool = False
               ) -> tuple[dict[str, tuple[Path | None, Path | None]], list[tuple[str, str]]]:
    """`{id}_pa*` / `{id}_lat*` radiographs under folder -> ({id: (pa, lat)}, [(id, problem)]).

    single_views: a case with one film of one view and none of the other is kept, its missing
    view None (reconstructed from the one film); otherwise it is a problem. Two films of one
    view are always a problem: which one is meant cannot be guessed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ReconstructionError(f"{folder}: batch folder not found" if not folder.exists()
                                  else f"{folder}: is a file; --batch expects a folder of X-ray pairs")
    found: dict[str, dict[str, list[Path]]] = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or not path.name.lower().endswith(XRAY_SUFFIXES) or path.name.startswith("."):
            continue
        m = _PAIR.match(path.name[: -len(path.suffix)])
        if m:
            found.setdefault(m["id"], {"pa": [], "lat": []})[m["view"].lower()].append(path)
    pairs, problems = {}, []
    for cid, views in sorted(found.items()):
        bad = [f"no {v} X-ray" if not views[v] else f"{len(views[v])} {v} X-rays ({', '.join(map(str, views[v]))})"
               for v in ("pa", "lat") if len(views[v]) != 1]
        one_missing = len(bad) == 1 and bad[0].startswith("no ")
        if not bad or (one_missing and single_views):
            pairs[cid] = tuple(views[v][0] if views[v] else None for v in ("pa", "lat"))
        else:
            hint = " (--single-views reconstructs it from the other film alone)" if one_missing else ""
            problems.append((cid, "; ".join(bad) + hint))
    return pairs, problems


def reconstruct_batch(folder, out_dir, checkpoint=None, device: str = "auto", upscale=None, fmt: str = "nifti",
                      overwrite: bool = False, uncertainty: bool = False, preview: bool = False,
                      progress: bool = True, report: bool = False,
                      refine: RefineOptions = RefineOptions(), acquisition=None,
                      cuda_graphs: bool = False, single_views: bool = False) -> BatchReport:
    """Reconstruct every pair in `folder` into out_dir/{id}.nii.gz (.npy, or {id}/ for DICOM).

    Optional out_dir/{id}_uncertainty.nii.gz, {id}_preview.png and {id}_report.html. A pair that
    fails is reported and the rest go on; a pair whose volume exists is skipped, and one whose
    extras exist fails naming them, unless overwrite. single_views: a case with a PA or a
    lateral film alone is reconstructed from it (as `reconstruct --pa` alone; its report and
    NIfTI description say so) instead of failing.
    """
    from tqdm.auto import tqdm

    pairs, problems = find_pairs(folder, single_views)
    result = BatchReport(failed=list(problems))
    if not pairs:
        wanted = "X-ray" if single_views else "complete X-ray pair"
        raise ReconstructionError(f"{folder}: no {wanted} found (expected {{id}}_pa.* and {{id}}_lat.* "
                                  f"with a suffix in {', '.join(XRAY_SUFFIXES)})"
                                  + (f"; problems: {'; '.join(f'{i}: {p}' for i, p in problems)}" if problems else ""))
    out_dir = Path(out_dir)
    suffix = {"nifti": ".nii.gz", "npy": ".npy", "dicom": ""}.get(fmt)
    if suffix is None:
        raise ReconstructionError(f"unknown output format {fmt!r}; valid: {', '.join(FORMATS)}")
    upscale = _check_upscale(upscale)
    model, cfg, dev = load_for_inference(checkpoint, device, cuda_graphs)  # once, before the loop
    for cid, (pa, lat) in tqdm(pairs.items(), desc="reconstruct", unit="case", disable=not progress):
        out = out_dir / f"{cid}{suffix}"
        if out.exists() and not overwrite:
            result.skipped.append((cid, out))
            continue
        try:  # the extras are checked too: an existing {id}_report.html is not replaced without overwrite
            job = _Job.check(out, fmt, out_dir / f"{cid}_uncertainty.nii.gz" if uncertainty else None,
                             out_dir / f"{cid}_preview.png" if preview else None, upscale, overwrite=overwrite,
                             report=out_dir / f"{cid}_report.html" if report else None, refine=refine)
            study = load_study_for(model, cfg, pa, lat, acquisition)
            result.done.append((cid, job.run(model, cfg, dev, None, title=cid, study=study)))
            if pa is None or lat is None:
                result.one_view.append((cid, "pa" if lat is None else "lat"))
        except UserError as e:
            log.info("%s failed: %s", cid, e)  # the report carries it; the CLI prints a table
            result.failed.append((cid, str(e)))
    return result
