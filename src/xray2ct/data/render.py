"""Films rendered from the CT on the training device, at each sample's acquisition.

`FilmRenderer.render` turns a batch of wide fields (the CT with the margin a real film
sees, HU) and their `FilmAcquisition`s into the model's input and, per sample, the
`Geometry` that `reconstruct` would build for such a film from its acquisition record:

  1. the patient is turned and shifted in the lab (one batched affine `grid_sample` of the
     wide field, or of the cube alone with air around it for a `cut` sample, as films
     rendered from a 320 mm CT look; air outside). The target stays the un-moved cube: the
     model reconstructs the patient frame, the shift and turn are unknown to it, as at inference;
  2. both views are projected (`xray2ct.project`) on a 2S² detector of the drawn cassette
     (or one just covering the cube) and normalized by percentiles (`drr_to_radiograph`):
     the film as a file would hold it;
  3. the film style (exposure, processing curve, blur, scatter fog, noise) is applied to
     that film;
  4. the film is read as `load_view` reads a 2S² file: for a share of samples (`crop`) as a
     DICOM is, its uniform borders (air, collimation) cropped to the exposed field
     (`xrayio.exposed_field`), then `prepare_xray` (pad square, area resize to S², percentile
     window); tested against a 16-bit PNG and a DICOM read by `load_study`;
  5. the model geometry comes from `Acquisition.view_setup` + `study_geometry` with the
     distances, pitch and PA/AP of the record and the crop (not the patient's offset or
     rotation).

Nominal samples are rendered as the stored DRRs are (`layout.render_drrs`: the cube alone,
S² detector covering it, training distances), so the films of the nominal reference
(robustness suite, acceptance) are exactly in the training distribution.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from xray2ct.acquisition import Acquisition, study_geometry
from xray2ct.data.acquisition_sampler import FilmAcquisition
from xray2ct.data.xrayio import exposed_field, prepare_xray
from xray2ct.geometry import Geometry
from xray2ct.physics.hu import hu_to_mu
from xray2ct.physics.projector import project
from xray2ct.physics.radiograph import RadiographStyle, drr_to_radiograph

SUPERSAMPLE = 2  # films are rendered at 2x the model's detector and area-pooled (no aliasing)
POSITION = {"pa": "PA", "ap": "AP", "lat": "LL"}


def _rotation(deg: tuple, dtype=torch.float64) -> torch.Tensor:
    """Rotation (3, 3) in (d, h, w) coordinates: about d, then h, then w, degrees."""
    a, b, c = (math.radians(x) for x in deg)
    rd = torch.tensor([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]], dtype=dtype)
    rh = torch.tensor([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]], dtype=dtype)
    rw = torch.tensor([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]], dtype=dtype)
    return rw @ rh @ rd


def position_patients(mu: torch.Tensor, acquisitions, voxel_mm: float) -> torch.Tensor:
    """Turn and shift each sample's field in the lab: (B, 1, W, W, W) -> same, air (0) outside.

    The lab point x shows the patient's point R^T (x - t): one affine grid per sample, in
    grid_sample's (x=w, y=h, z=d) order, align_corners=True (the voxel-centre convention of
    `Geometry.world_to_grid`)."""
    n = mu.shape[-1]
    half = (n - 1) / 2 * voxel_mm  # mm from the centre to the outermost voxel centre
    flip = torch.eye(3, dtype=torch.float64).flip(0)  # (d, h, w) <-> (w, h, d)
    thetas = []
    for a in acquisitions:
        rt = _rotation(a.rotation_deg).t()
        shift = -rt @ torch.tensor(a.offset_mm, dtype=torch.float64) / half
        thetas.append(torch.cat([flip @ rt @ flip, (flip @ shift)[:, None]], dim=1))  # (3, 4)
    theta = torch.stack(thetas).to(mu.device, mu.dtype)  # (B, 3, 4)
    grid = F.affine_grid(theta, list(mu.shape), align_corners=True)  # (B, W, W, W, 3)
    return F.grid_sample(mu, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


class FilmRenderer:
    """Wide fields + acquisitions -> model input (B, 2, S, S) and per-sample Geometry.

    Args:
        nominal: the model's geometry (N³ cube, S² detector, training distances).
        margin: voxels of wide field around the cube on every side.
        style: film style applied to every non-dropped film (None: plain DRRs).
        mu_water: attenuation of water, 1/mm.
    """

    def __init__(self, nominal: Geometry, margin: int, style: RadiographStyle | None = None,
                 mu_water: float = 0.02):
        self.nominal, self.margin, self.style, self.mu_water = nominal, int(margin), style, mu_water
        self.size = nominal.det_shape[0]
        self.voxel_mm = nominal.voxel_mm[0]

    def film_geometry(self, a: FilmAcquisition, field_voxels: int) -> Geometry:
        """The lab geometry the films of `a` are rendered with: the wide field, a 2S² detector."""
        det = SUPERSAMPLE * self.size
        pitch = None if a.detector_mm is None else a.detector_mm / det
        if pitch is None:  # the cassette that just covers the cube, as the stored DRRs' detector
            pitch = Geometry(volume_shape=self.nominal.volume_shape, voxel_mm=self.voxel_mm, source_iso_mm=a.source_iso_mm,
                             source_det_mm=a.source_det_mm, det_shape=(det, det), views=a.views).det_pixel_mm
        return Geometry(volume_shape=(field_voxels,) * 3, voxel_mm=self.voxel_mm, source_iso_mm=a.source_iso_mm,
                        source_det_mm=a.source_det_mm, det_shape=(det, det), det_pixel_mm=pitch, views=a.views)

    def model_geometry(self, a: FilmAcquisition, film: Geometry, crops=((0, 0, 0, 0),) * 2) -> Geometry:
        """What `reconstruct --sid --sod --pixel-mm [--ap]` builds for these films, each cropped
        by (top, bottom, left, right) film pixels."""
        if a.nominal:
            return self.nominal
        setups = {}
        for view, crop in zip(a.views, crops):
            record = Acquisition(POSITION[view], a.source_iso_mm, a.source_det_mm, film.det_pixel_mm)
            setups[view] = record.view_setup(film.det_shape, crop, self.size, self.nominal)
        return study_geometry(self.nominal, setups)

    def render(self, fields: torch.Tensor, acquisitions) -> tuple[torch.Tensor, list[Geometry]]:
        """fields (B, 1, W, W, W) HU with the cube at the centre (W = N + 2 margin), one
        FilmAcquisition per sample -> xrays (B, 2, S, S) in [0, 1], B geometries."""
        b, w = fields.shape[0], fields.shape[-1]
        if len(acquisitions) != b or w != self.nominal.volume_shape[0] + 2 * self.margin:
            raise ValueError(f"{len(acquisitions)} acquisitions for fields {tuple(fields.shape)} with margin "
                             f"{self.margin} around a {self.nominal.volume_shape[0]}³ cube")
        with torch.no_grad():
            mu = hu_to_mu(fields.float(), self.mu_water)  # (B, 1, W, W, W)
            nominal = [i for i, a in enumerate(acquisitions) if a.nominal]
            moving = [i for i, a in enumerate(acquisitions) if not a.nominal]
            xrays, geometries = [None] * b, [None] * b
            m = self.margin
            inner = (slice(None), slice(None)) + (slice(m, w - m),) * 3  # the cube inside the field
            if nominal:  # the cube alone at S², as layout.render_drrs renders the stored DRRs; one batch
                films = drr_to_radiograph(project(mu[nominal][inner], self.nominal))  # (n, 2, S, S)
                for j, i in enumerate(nominal):
                    xrays[i], geometries[i] = self._style(films[j], acquisitions[i]), self.nominal
            if moving:
                chosen = mu[moving]  # (b, 1, W, W, W), a copy
                cut = [j for j, i in enumerate(moving) if acquisitions[i].cut]
                if cut and m:  # the cube alone: air in the margin
                    chosen[cut] = F.pad(chosen[cut][inner], (m,) * 6)
                placed = position_patients(chosen, [acquisitions[i] for i in moving], self.voxel_mm)
                for j, i in enumerate(moving):
                    a = acquisitions[i]
                    film_geometry = self.film_geometry(a, w)
                    films = self._style(drr_to_radiograph(project(placed[j : j + 1], film_geometry))[0], a)  # (2, 2S, 2S)
                    # what load_view does to a 2S² file: a DICOM's uniform borders cropped, then
                    # prepare_xray (pad square, area resize to S², percentile window)
                    crops = [exposed_field(f.numpy()) if a.crop else (0, 0, 0, 0) for f in films]
                    xrays[i] = torch.stack([prepare_xray(f[t : f.shape[0] - b, left : f.shape[1] - r], self.size)
                                            for f, (t, b, left, r) in zip(films, crops)])
                    geometries[i] = self.model_geometry(a, film_geometry, crops)
            out = torch.stack(xrays)  # (B, 2, S, S)
            for i, a in enumerate(acquisitions):
                if a.dropped is not None:
                    out[i, 1 if a.dropped == "lat" else 0] = 0  # the frontal slot is 0 for PA and AP alike
        return out, geometries

    def _style(self, films: torch.Tensor, a: FilmAcquisition) -> torch.Tensor:
        """(2, H, W) -> the film style applied to each view, independent draws per view."""
        if self.style is None:
            return films
        g = torch.Generator().manual_seed(a.style_seed)
        return torch.cat([self.style(v[None, None], g)[0] for v in films])  # (2, H, W)


def make_renderer(cfg, augment: bool) -> FilmRenderer:
    """The renderer of a Config: model geometry, margin from data.acquisition.margin_mm, the film
    style when `augment` (no in-plane film rotation: the patient's own turn makes it)."""
    a, n = cfg.data.acquisition, cfg.model.volume_size
    nominal = cfg.geometry.build(n, cfg.model.xray_img_size)
    style = None
    if augment:
        style = RadiographStyle(blur_px=a.blur_px, scatter=a.scatter, noise=a.noise, gamma=a.gamma,
                                contrast=a.contrast, rotate_deg=0.0)
    return FilmRenderer(nominal, margin_voxels(cfg), style, cfg.geometry.mu_water)


def margin_voxels(cfg) -> int:
    """data.acquisition.margin_mm in voxels of the model's grid (rounded)."""
    return int(round(cfg.data.acquisition.margin_mm / (cfg.geometry.fov_mm / cfg.model.volume_size)))
