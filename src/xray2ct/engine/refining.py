"""When and how a reconstruction is refined against its films (`xray2ct.refine` does the fitting).

- `RefineOptions`: what the user asked (on, off, or automatic; steps; grid size).
- `refine_skip_reason`: automatic refinement is skipped when a film shows anatomy beyond the
  reconstructed field, which the volume cannot explain.
- `refine_placed`: refine the network's volume, and for a patient found off-centre also the
  network's second volume lifted where the films show them; keep the better.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from xray2ct.engine.inference import ReconstructionError, predict
from xray2ct.refine import RefineResult, search_placement, upsample
from xray2ct.refine import refine as run_refine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefineOptions:
    """What the user asked of refinement; the model's config (`refine` section) fills in the rest.

    enabled: True / False, or None (the default): refine unless a film shows anatomy well
    beyond the reconstructed field (`AUTO_MIN_SHADOW`, `AUTO_MAX_OUTSIDE`): the volume would
    have to explain arms and body outside it. With a fixed prior that cost 1-2 dB; with the
    prior rising with the image error left (`refine.explained_error`) it gains 0.1 dB for a
    second run (docs/RESULTS.md). A wide film of air around the field is refined.
    """

    enabled: bool | None = None
    steps: int | None = None  # None: the model's refine.steps
    size: int | None = None  # refine on an N³ grid (prior upsampled); None: the network's grid
    # None: the model's refine.prior_weight, raised where the films show what the grid cannot
    # explain (refine.explained_error); a given λ is used as it is, on every film
    prior_weight: float | None = None

    def settings(self, cfg):
        """The model's RefineConfig with the user's steps and prior weight, or None when off."""
        import dataclasses

        if self.enabled is False:
            return None
        mine = {k: v for k, v in (("steps", self.steps), ("prior_weight", self.prior_weight)) if v is not None}
        if self.prior_weight is not None:
            mine["explained_error"] = 0.0  # the user's λ, not adapted
        return dataclasses.replace(cfg.refine, **mine) if mine else cfg.refine


NO_REFINE = RefineOptions(enabled=False)
AUTO_MIN_SHADOW = 0.9  # auto refinement: the volume's shadow covers at least this share of every film, ...
AUTO_MAX_OUTSIDE = 0.05  # ... or what lies outside it is air (mean grey below this)
MAX_REFINE_STEPS = 10_000
MAX_REFINE_SIZE = 256  # refinement grid side: 256³ is ~1 min per step on a CPU


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
    time (docs/RESULTS.md).

    Below the shift gate: a network can follow a shifted patient half-way, and then its volume
    is already so misplaced that refinement's own fit stays under `shift_min_mm` (one phantom
    at +20 mm: 7 mm found). So where no shift was kept, the raw placement (gates off) is
    lifted at when it reaches `relift_min_mm`, and again from the new volume's raw placement,
    for up to `relift_rounds` passes; each is kept only if it explains the films better, and the
    first that does not ends the search. A case whose ungated fit reaches relift_min_mm pays a
    relift.

    Last, where a shift was kept, refinement is repeated at shifts 5 and 10 mm either side of
    it and the placement whose refined volume explains the films best is kept
    (`refine.search_placement`, `refine.shift_search_mm`).
    """
    films = given_views(lift_geometry, xrays, present)[1].to(dev)
    size = geometry.volume_shape[-1]

    def refined(mu, lv):
        mu, lv = upsample(mu, size), upsample(lv, size)
        return run_refine(mu.to(dev), lv.to(dev), films, geometry, settings, mu_water=mu_water), mu, lv

    result, mu, lv = _relifted(model, dev, xrays, lift_geometry, settings, refined(volume, log_var), refined)
    return search_placement(result, mu.to(dev), lv.to(dev), films, geometry, settings, mu_water), mu, lv


def _relifted(model, dev, xrays, lift_geometry, settings, best, refined):
    """The relift passes of `refine_placed` from its first refinement `best`: the kept (result, mu, log_var)."""
    from xray2ct.models.net import using_geometry
    from xray2ct.pose import placed

    if not settings.relift or best[0].fitted_mm is None:  # no placement was fitted
        return best
    kept = best[0].shift_mm
    at = kept[0] if kept is not None and bool(kept.any()) else best[0].fitted_mm[0]  # kept, else ungated
    for _ in range(settings.relift_rounds):
        if float(at.abs().max()) < settings.relift_min_mm:
            break
        with using_geometry(model, placed(lift_geometry, at)):
            again = refined(*predict(model, xrays, dev))
        # Compared at the configured λ (`unexplained`): the error after an adapted λ depends on that λ
        log.info("relifted at (%.0f, %.0f, %.0f) mm: image error %.3g (before %.3g)", *at.tolist(),
                 again[0].unexplained, best[0].unexplained)
        if again[0].unexplained >= best[0].unexplained:
            break
        best, previous, at = again, at, again[0].fitted_mm[0]
        if float((at - previous).abs().max()) < 1.0:
            break  # the network stays where it was lifted
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

