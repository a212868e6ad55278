"""`xray2ct reconstruct`: two radiographs in, a CT volume in Hounsfield units out.

    pa, lat files --load_xray--> (1, 2, S, S) --model--> normalized CT (1, 1, N, N, N)
        --unit_to_hu, optional trilinear upscale--> NIfTI / NPY / DICOM series

The checkpoint carries its config (X-ray size, volume size, field of view), so nothing
else is needed. Voxel spacing is fov_mm / N (or fov_mm / upscaled size) per axis; the
orientation is ctio's (d, h, w) = head→feet, anterior→posterior, right→left.

Every file is written atomically (temp name beside it, then one rename), the extras
(uncertainty, preview) before the volume, so "the volume exists" means "this
reconstruction is complete". An existing output is refused unless `overwrite=True`.

The parts live beside it: `inference` (weights -> model -> volume), `refining` (when and how
the volume is refined against the films), `outputs` (the files), `batch` (a folder of pairs).
"""
from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from xray2ct.engine.inference import (VIEW_NAMES, ReconstructionError, load_for_inference, predict,
                                      uncertainty_hu)
from xray2ct.engine.outputs import OutputExistsError, check_output, format_of, save_preview, save_report, save_volume
from xray2ct.engine.refining import (MAX_REFINE_SIZE, MAX_REFINE_STEPS, NO_REFINE, RefineOptions, given_views,
                                     refine_placed, refine_skip_reason)
from xray2ct.physics.hu import unit_to_hu
from xray2ct.refine import RefineResult, reproject

log = logging.getLogger(__name__)

XRAY_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom", ".npy")


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
        for line in result.notes().values():
            log.info("%s", line)
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

def _upscale(vol: torch.Tensor, upscale) -> torch.Tensor:
    """(1, 1, N, N, N) -> (1, 1, D, H, W), trilinear."""
    if upscale is None:
        return vol
    return F.interpolate(vol, size=tuple(upscale), mode="trilinear", align_corners=False)


MAX_UPSCALE_SIDE = 1024  # voxels per axis: beyond a clinical CT's 512² × a few hundred slices
MAX_UPSCALE_VOXELS = 512 * 512 * 1024  # 2^28: about 1 GiB per float32 copy, and a few copies are made


def check_upscale(upscale) -> tuple[int, int, int] | None:
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
class Job:
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
              refine: RefineOptions = NO_REFINE) -> "Job":
        out = Path(out)
        check_output(out, fmt, overwrite)
        unc = None if uncertainty is None else Path(uncertainty)
        if unc is not None:
            check_output(unc, format_of(unc, "uncertainty"), overwrite)
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
        if refine.prior_weight is not None and not (math.isfinite(refine.prior_weight) and refine.prior_weight > 0):
            raise ReconstructionError(f"--refine-prior must be a positive number, got {refine.prior_weight}")
        return cls(out, fmt, unc, prev, check_upscale(upscale), rep, refine)

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
            save_volume(self.uncertainty, std, spacing, format_of(self.uncertainty, "uncertainty"), dtype="float32")
        if self.preview is not None:
            save_preview(self.preview, hu, std, title=title, spacing=spacing)
        if self.report is not None:
            from xray2ct.surface import try_bone_surface

            details = {} if study is None else dict(study.details())
            if rec.refinement is not None:
                details.update(rec.refinement.notes())
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
    job = Job.check(out, fmt, uncertainty, preview, upscale, overwrite, report, refine)
    model, cfg, dev = load_for_inference(checkpoint, device, cuda_graphs)
    study = load_study_for(model, cfg, pa, lat, acquisition)
    if study.mode != "biplanar":
        log.info("one view only (%s): the volume rests more on the model's anatomy prior", study.mode)
    title = " + ".join(Path(f).name for f in (pa, lat) if f is not None)
    path = job.run(model, cfg, dev, None, title=title, study=study)
    log.debug("wrote %s", path)
    return path

