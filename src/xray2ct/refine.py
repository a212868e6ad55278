"""Physics-consistent refinement: correct the network's volume so that its DRRs match the
X-rays it was given, trusting each voxel as much as the network's own uncertainty says.

The network predicts a mean μ and a log-variance log σ² per voxel (normalized CT units).
With the differentiable projector P_g (`xray2ct.project`, the study's geometry g) and an
intensity model R that maps line integrals to the radiograph's grey values, the refined
volume is the maximum a posteriori estimate

    v* = argmin_v  mean_px (clip(R(P_g(v)), 0, 1) − x)²  +  λ · mean_vox (v − μ)² / (t² σ²)

with v kept in the [0, 1] window (n = 0 is air, so attenuation stays ≥ 0), solved by Adam in
whitened coordinates z = (v − μ) / (t σ),
λ = `prior_weight` and t = `sigma_scale` (the calibration temperature of σ) chosen on
held-out phantoms and stored in the model's config (`refine` section).

R is fitted jointly, per view, by least squares at every step (variable projection): an
affine map of the line integrals (the log image) plus a low-order polynomial fog over the
detector, fitted on the unsaturated pixels (0 < x < 1) only. For our DRRs — line integrals
normalized to a percentile window and clipped — this model is exact; for real films the
fog term absorbs scatter and heel effect and the affine map any exposure/processing scale.
The coefficients are held fixed within a step: at the least-squares optimum their gradient
is zero (envelope theorem), so the volume's gradient is the same either way.

Early stopping: the data term is watched; when its best value has not improved by a
relative `tol` within `patience` steps, the loop ends.

How firmly to hold to the network (λ) depends on the films. DRRs rendered from a volume on
this grid can be matched almost exactly (image error ~1e-6 on held-out phantoms), and there a
weak prior is best. A real film carries what no volume on the grid can explain — anatomy finer
than a voxel, noise, blur, a processing curve — and a weak prior then paints that into the
volume (on styled phantom films λ = 3e-5 lost 5 dB to the network's own volume). So the
refinement is first run at `prior_weight`; when the image error e it leaves is above
`explained_error` (twice the most that validation DRRs of the grid leave: a less familiar
anatomy leaves more on them), the excess is taken as
noise, and the run is repeated from the network's volume with the prior weighted as the noise
variance says: λ × (1 + (e − explained_error) / error_floor), where `error_floor` is the
typical error of the films λ was chosen on (both set by the refine suite), at most
`prior_weight_max`. In the MAP estimate above the data term's weight is 1 / noise variance, so
a prior weight relative to it grows in proportion; the rule is continuous at the gate.

Where the patient stood (`xray2ct.pose`): the network reconstructs the patient's frame, the
films are the room's. Before refining, a translation t = (d, h, w) mm is fitted to the
network's mean volume (data term at 4 x 4 then 2 x 2 pixel means, `shift_steps` Adam steps
each, along the axes some film shows side-on); components under `shift_min_mm` are dropped,
and so is a shift that explains the coarse images less than `shift_min_gain` times better than
none: the network's own placement error is about a voxel (more on an unfamiliar body), and
refinement corrects that through the volume. The volume is then refined
in the patient's frame, seen by the films through the shift: v* as above with P_g(shift_t(v)).
The fit sees the network's volume, which half-follows a shifted patient, so with a shift kept
the refinement is repeated at shifts 5 and 10 mm either side along each axis it moves, and the
placement whose refined volume explains the films best is kept (`search_placement`, run by
`engine.refining.refine_placed` on the refinement it keeps).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from xray2ct.config import RefineConfig
from xray2ct.errors import UserError
from xray2ct.geometry import Geometry, get_view
from xray2ct.physics.hu import hu_to_mu, unit_to_hu
from xray2ct.physics.projector import project
from xray2ct.pose import in_room, pad_voxels, padded, shifted


class RefineError(UserError, ValueError):
    """Refinement cannot run with these inputs; the message says which and why."""


@dataclass
class RefineResult:
    """What refinement did, for one batch."""

    volume: torch.Tensor  # (B, 1, D, H, W) refined normalized CT in [0, 1]
    data_before: float  # data term of the network's volume (mean squared image error)
    data_after: float  # ... and of the refined one
    steps: int  # Adam steps taken (by the run kept)
    seconds: float  # of all runs
    history: list[float] = field(default_factory=list)  # data term per step (of the run kept)
    shift_mm: torch.Tensor | None = None  # (B, 3) where the films show the patient, (d, h, w) mm from the
    #   volume's centre; None: not fitted (all zero: centred within shift_min_mm)
    fitted_mm: torch.Tensor | None = None  # (B, 3) the same fit before its gates (where relifting may look)
    prior_weight: float = 0.0  # λ the kept run used
    unexplained: float = 0.0  # image error left at the configured λ: what the films show that the grid cannot
    prior_raised: float = 1.0  # λ over the configured one (> 1: the films hold what the grid cannot explain)

    def firmness(self) -> str | None:
        """One line on a prior weight raised for films the grid cannot explain, or None."""
        if self.prior_raised <= 1:
            return None
        kept = (", which kept the network's volume nearly as it was" if self.data_after > 0.9 * self.data_before
                else "")  # the films barely moved it: the network is all there is to go on
        return (f"the films hold detail no volume on this grid explains (image error {self.unexplained:.1e} left), "
                f"so refinement held {self.prior_raised:.0f}x more firmly to the network (prior weight "
                f"{self.prior_weight:.1e}){kept}")

    def notes(self) -> dict[str, str]:
        """What the log, report and web page say about this refinement beyond its numbers."""
        lines = {"refinement": self.firmness(), "patient position": self.placement()}
        return {k: v for k, v in lines.items() if v}

    def placement(self) -> str | None:
        """One line on where the films show the (first) patient, or None when centred or not fitted."""
        if self.shift_mm is None or not bool(self.shift_mm[0].any()):
            return None
        d, h, w = (float(v) for v in self.shift_mm[0])
        parts = [f"{abs(v):.0f} mm {pos if v > 0 else neg}" for v, pos, neg in
                 ((w, "to the patient's left", "to the patient's right"), (h, "posterior", "anterior"),
                  (d, "towards the feet", "towards the head")) if v]
        return ("the films show the patient off the beam's centre by " + ", ".join(parts)
                + "; the volume is refined in the patient's frame, centred on the patient")


# --- the intensity model R --------------------------------------------------------------
def _fog_basis(rows: int, cols: int, order: int, device, dtype) -> torch.Tensor:
    """Monomials r^i c^j (i + j <= order) over the detector in [-1, 1]: (K, rows, cols)."""
    r = torch.linspace(-1, 1, rows, device=device, dtype=dtype)[:, None].expand(rows, cols)
    c = torch.linspace(-1, 1, cols, device=device, dtype=dtype)[None, :].expand(rows, cols)
    return torch.stack([r**i * c**j for i in range(order + 1) for j in range(order + 1 - i)])


def fit_intensity(line_integrals: torch.Tensor, xrays: torch.Tensor, fog_order: int = 1,
                  valid: torch.Tensor | None = None) -> torch.Tensor:
    """Least-squares intensity model per image: a·L + fog(r, c) ≈ x on unsaturated pixels.

    line_integrals, xrays: (B, V, R, C) -> the fitted images (B, V, R, C), unclipped.
    valid: (B, V, R, C) bool, the pixels to fit on; default: the unsaturated ones (0 < x < 1).
    Differentiable in `line_integrals`; the coefficients are fitted without gradient.
    """
    b, v, rows, cols = xrays.shape
    fog = _fog_basis(rows, cols, fog_order, xrays.device, xrays.dtype)  # (K, R, C)
    design = torch.cat([line_integrals[:, :, None], fog.expand(b, v, *fog.shape)], dim=2)  # (B, V, 1+K, R, C)
    design = design.flatten(3).transpose(2, 3)  # (B, V, R*C, 1+K)
    valid = ((xrays > 0) & (xrays < 1)) if valid is None else valid
    weight = valid.flatten(2).to(xrays.dtype)[..., None]  # (B, V, R*C, 1)
    with torch.no_grad():
        a = design.detach() * weight
        gram = a.transpose(2, 3) @ design.detach()  # (B, V, 1+K, 1+K)
        ridge = 1e-6 * gram.diagonal(dim1=-2, dim2=-1).mean(-1)[..., None, None] + 1e-12
        rhs = a.transpose(2, 3) @ xrays.flatten(2)[..., None]  # (B, V, 1+K, 1)
        coef = torch.linalg.solve(gram + ridge * torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device), rhs)
    return (design @ coef)[..., 0].unflatten(2, (rows, cols))


def line_integrals(volume: torch.Tensor, geometry: Geometry, mu_water: float = 0.02) -> torch.Tensor:
    """Normalized CT (B, 1, D, H, W) -> its DRR line integrals (B, V, R, C)."""
    return project(hu_to_mu(unit_to_hu(volume), mu_water), geometry)


def reproject(volume: torch.Tensor, xrays: torch.Tensor, geometry: Geometry, fog_order: int = 1,
              mu_water: float = 0.02, shift_mm: torch.Tensor | None = None) -> torch.Tensor:
    """The volume's DRRs mapped onto the X-rays' intensities: (B, 1, D, H, W), (B, V, R, C) -> (B, V, R, C) in [0, 1].

    What the refinement compares with the input; shown beside it in reports. shift_mm (B, 3):
    the patient's place in the films (`RefineResult.shift_mm`).
    """
    volume, geometry = in_room(volume, geometry, shift_mm)
    return fit_intensity(line_integrals(volume, geometry, mu_water), xrays, fog_order).clamp(0, 1)


def fit_shift(mu: torch.Tensor, xrays: torch.Tensor, geometry: Geometry, settings: RefineConfig,
              mu_water: float = 0.02) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the films show the patient: (B, 1, D, H, W), (B, V, R, C) -> (shift, fitted), each
    (B, 3) mm, (d, h, w): the placement kept, and the fitted one before the gates below.

    Fitted to the network's mean volume on coarse images (4 x 4, then 2 x 2 pixel means: the
    outline, not the detail, says where the body is), and only along axes some film shows
    side-on: d always, w with a frontal film, h with a lateral one (along a film's rays a
    shift only changes the magnification by ~1 % per 10 mm, which a wrong body size mimics).
    A patient is called off-centre only when that is clear: a fitted placement that does not
    explain the coarse images `shift_min_gain` times better than the centred one is dropped,
    and of one that does, the components under `shift_min_mm` are set to 0 (both measured on
    held-out phantoms: a 20 mm shift explains them 2-8 times better; the network's own
    misplacement of an unfamiliar body reaches 12 mm but at most 1.8 times, and on 120 nominal
    held-out cases no placement with a 12 mm component passed the gain). The rest is clamped to
    ±`shift_max_mm`. `fitted` is where relifting may look when no shift is kept.
    """
    voxel = min(geometry.voxel_mm)
    pad = pad_voxels(settings.shift_max_mm, geometry)
    room = padded(geometry, pad)
    seen = torch.tensor([1.0, any(get_view(v).depth_axis == 2 for v in geometry.views),
                         any(get_view(v).depth_axis == 1 for v in geometry.views)], device=mu.device)  # (d, h, w)
    limit = settings.shift_max_mm

    def error(shift, pool, sample=slice(None)):  # coarse image error of the volume placed at `shift`
        return data_term(shifted(mu[sample], shift[sample], geometry, pad), xrays[sample], room, settings.fog_order,
                         mu_water, pool)

    q = torch.zeros(mu.shape[0], 3, device=mu.device, requires_grad=True)  # shift in voxels
    opt = torch.optim.Adam([q], lr=0.1)
    with torch.enable_grad():
        for pool in (4, 2):
            for _ in range(settings.shift_steps):
                opt.zero_grad(set_to_none=True)
                error((q * seen * voxel).clamp(-limit, limit), pool).backward()
                opt.step()
    with torch.no_grad():
        best = (q * seen * voxel).clamp(-limit, limit)
        shift = torch.where(best.abs() >= settings.shift_min_mm, best, torch.zeros_like(best))
        for i in range(shift.shape[0]):
            # Judged on the whole fitted placement: its small components are part of why it explains
            # the films (a network that half-follows a shifted patient leaves a few mm across the
            # other axes), and are then left to the volume.
            if shift[i].any() and error(torch.zeros_like(best), 4, slice(i, i + 1)) < \
                    settings.shift_min_gain * error(best, 4, slice(i, i + 1)):
                shift[i] = 0
    return shift.cpu(), best.cpu()


def data_term(volume: torch.Tensor, xrays: torch.Tensor, geometry: Geometry, fog_order: int = 1,
              mu_water: float = 0.02, pool: int = 1) -> torch.Tensor:
    """Mean squared difference between the volume's fitted DRRs and the X-rays: a scalar.

    pool > 1 compares pool x pool pixel averages: detail finer than a voxel's shadow cannot
    be explained by the volume, and fitting it anyway paints artefacts into the volume.
    """
    li = line_integrals(volume, geometry, mu_water)
    valid = (xrays > 0) & (xrays < 1)
    if pool > 1:
        li, xrays = (F.avg_pool2d(t, pool, ceil_mode=True) for t in (li, xrays))
        valid = F.avg_pool2d(valid.to(xrays.dtype), pool, ceil_mode=True) > 1 - 1e-6  # no saturated pixel inside
    return (fit_intensity(li, xrays, fog_order, valid).clamp(0, 1) - xrays).pow(2).mean()


def shadow(geometry: Geometry, device=None) -> torch.Tensor:
    """The pixels whose ray crosses the volume: (V, R, C) bool, one detector per view.

    A film much wider than this shadow (a 430 mm cassette, a real chest film) shows body
    and arms beyond the reconstructed field, which no volume on this grid can explain.
    """
    masks = []
    for view in geometry.views:
        spec = get_view(view)
        d_mm, c_mm, _ = geometry.ray_in_slice(view, device, torch.float64)  # (K, R, 1), (K, 1, C)
        half = [n * s / 2 for n, s in zip(geometry.volume_shape, geometry.voxel_mm)]
        rows = (d_mm[:, :, 0].abs() <= half[0]).double()  # (K, R): the ray is inside along d at slice k
        cols = (c_mm[:, 0, :].abs() <= half[spec.col_axis]).double()  # (K, C): ... and along the column axis
        masks.append(rows.t() @ cols > 0)  # inside at some slice: (R, C)
    return torch.stack(masks)


# --- the refinement -----------------------------------------------------------------------
def _check(mu: torch.Tensor, log_var: torch.Tensor, xrays: torch.Tensor, geometry: Geometry) -> None:
    if mu.ndim != 5 or mu.shape[1] != 1:
        raise RefineError(f"the volume must be (B, 1, D, H, W), got {tuple(mu.shape)}")
    if log_var.shape != mu.shape:
        raise RefineError(f"the log-variance {tuple(log_var.shape)} must match the volume {tuple(mu.shape)}")
    if tuple(mu.shape[2:]) != geometry.volume_shape:
        raise RefineError(f"the volume {tuple(mu.shape[2:])} does not match the geometry's {geometry.volume_shape}")
    want = (mu.shape[0], len(geometry.views), *geometry.det_shape)
    if tuple(xrays.shape) != want:
        raise RefineError(f"the X-rays are {tuple(xrays.shape)}, but the geometry's detector needs {want} "
                          f"(batch, views {geometry.views}, rows, cols)")
    for name, t in (("volume", mu), ("log-variance", log_var), ("X-rays", xrays)):
        if not torch.isfinite(t).all():
            raise RefineError(f"the {name} holds NaN or infinite values; refinement needs finite inputs")


def refine(mu: torch.Tensor, log_var: torch.Tensor, xrays: torch.Tensor, geometry: Geometry,
           settings: RefineConfig = RefineConfig(), mu_water: float = 0.02) -> RefineResult:
    """MAP volume given the network's prior and the X-rays (see the module docstring).

    mu, log_var: (B, 1, D, H, W) network mean in [0, 1] and log-variance, on the geometry's grid.
    xrays: (B, V, R, C) the model's input images in [0, 1], on the geometry's detector.
    settings: the model's `refine` config; mu_water: its geometry's (1/mm).
    Runs on the inputs' device; gradients of the callers' tensors are not touched.
    """
    start = time.perf_counter()
    mu, scale, xrays = _inputs(mu, log_var, xrays, geometry, settings)
    shift = fitted = None
    if min(settings.shift_steps, settings.steps) > 0:
        shift, fitted = fit_shift(mu, xrays, geometry, settings, mu_water)
    return _result(_refine_at(shift, mu, scale, xrays, geometry, settings, mu_water), fitted, start, settings)


def search_placement(result: RefineResult, mu: torch.Tensor, log_var: torch.Tensor, xrays: torch.Tensor,
                     geometry: Geometry, settings: RefineConfig = RefineConfig(),
                     mu_water: float = 0.02) -> RefineResult:
    """`result` (of `refine` on these inputs, one case) or a better placed refinement: where a
    shift was kept, refine again at shifts ±k·`shift_search_mm` (k = 1, 2) from it along each
    axis it moves, one axis after the other, and keep the run whose volume explains the films
    best (image error at the configured λ). The shift is fitted to the network's volume, which
    half-follows a shifted patient; a refined volume shows better where the patient stood (on
    held-out phantoms filmed 20 mm off centre the fit fell 2–7 mm short, now and then 10 mm
    over, and each such miss cost 2–4 dB)."""
    shift = result.shift_mm
    if shift is None or shift.shape[0] != 1 or not bool(shift.any()) or settings.shift_search_mm <= 0:
        return result
    start = time.perf_counter() - result.seconds
    mu, scale, xrays = _inputs(mu, log_var, xrays, geometry, settings)
    best = _Run(shift.to(mu.device), result.volume, result.history, result.unexplained, result.data_after,
                result.prior_weight)
    step, limit = settings.shift_search_mm, settings.shift_max_mm
    for axis in torch.nonzero(shift[0]).flatten().tolist():
        centre = best.shift.clone()
        for k in (-2, -1, 1, 2):
            candidate = centre.clone()
            candidate[0, axis] = (candidate[0, axis] + k * step).clamp(-limit, limit)
            if torch.equal(candidate, centre):
                continue
            run = _refine_at(candidate, mu, scale, xrays, geometry, settings, mu_water)
            if run.unexplained < best.unexplained:
                best = run
    return _result(best, result.fitted_mm, start, settings)


def _inputs(mu, log_var, xrays, geometry, settings: RefineConfig):
    """Checked, detached float inputs -> (mu in [0, 1], t σ per voxel, xrays)."""
    _check(mu, log_var, xrays, geometry)
    scale = settings.sigma_scale * torch.exp(0.5 * log_var.detach().float())  # t σ per voxel
    return mu.detach().float().clamp(0, 1), scale, xrays.detach().float()


def _result(run: "_Run", fitted, start: float, settings: RefineConfig) -> RefineResult:
    shift = None if run.shift is None else run.shift.cpu()
    return RefineResult(run.volume, run.history[0] if run.history else run.after, run.after, len(run.history),
                        time.perf_counter() - start, run.history, shift_mm=shift, fitted_mm=fitted,
                        prior_weight=run.prior_weight, unexplained=run.unexplained,
                        prior_raised=run.prior_weight / settings.prior_weight if settings.prior_weight > 0 else 1.0)


@dataclass
class _Run:
    """One refinement at one placement of the patient."""

    shift: torch.Tensor | None  # (B, 3) mm, or None: centred
    volume: torch.Tensor  # (B, 1, D, H, W)
    history: list[float]
    unexplained: float  # image error at the configured λ
    after: float  # ... at the λ the kept run used
    prior_weight: float


def _refine_at(shift, mu, scale, xrays, geometry, settings: RefineConfig, mu_water: float) -> _Run:
    """The MAP volume with the films seen through `shift` (see `refine`)."""
    room_geometry = in_room(mu, geometry, shift, settings.shift_max_mm)[1]

    # Whitened coordinates, v = μ + t σ z: the prior is λ·mean(z²), and Adam's steps in z are
    # steps of about t σ in v, so a voxel the network is sure of barely moves (σ → 0: v = μ)
    # while an uncertain one is free to. The clamp keeps the [0, 1] window.
    def volume(z):
        return (mu + scale * z).clamp(0, 1)

    def image_error(z):  # the data term of v(z), seen by the films through the shift
        return data_term(in_room(volume(z), geometry, shift, settings.shift_max_mm)[0], xrays, room_geometry,
                         settings.fog_order, mu_water, settings.image_pool)

    prior_weight = settings.prior_weight
    z, history = _descend(image_error, torch.zeros_like(mu), settings, prior_weight)
    with torch.no_grad():
        unexplained = after = float(image_error(z))
    if settings.explained_error > 0 and unexplained > settings.explained_error:  # (a batch: its mean error)
        noise = 1 + (unexplained - settings.explained_error) / settings.error_floor  # in error_floor units
        prior_weight = min(max(settings.prior_weight_max, prior_weight), prior_weight * noise)
        z, history = _descend(image_error, torch.zeros_like(mu), settings, prior_weight)
        with torch.no_grad():
            after = float(image_error(z))
    return _Run(shift, volume(z), history, unexplained, after, prior_weight)


def _descend(image_error, z: torch.Tensor, settings: RefineConfig, prior_weight: float) -> tuple[torch.Tensor, list[float]]:
    """Adam on the whitened offsets from z (zeros) -> (z, data term per step); early stopping on the data term."""
    z = z.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=settings.lr)
    best, best_at, history = float("inf"), 0, []
    with torch.enable_grad():
        for step in range(settings.steps):
            opt.zero_grad(set_to_none=True)
            data = image_error(z)
            loss = data + prior_weight * z.pow(2).mean()
            loss.backward()
            history.append(float(data.detach()))
            if history[-1] < best * (1 - settings.tol):
                best, best_at = history[-1], step
            elif step - best_at >= settings.patience:
                break
            opt.step()
    return z.detach(), history


def upsample(volume: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 1, N, N, N) -> (B, 1, size, size, size), trilinear: a prior on a finer refinement grid."""
    if volume.shape[-1] == size:
        return volume
    return F.interpolate(volume, size=(size,) * 3, mode="trilinear", align_corners=False)
