"""A random acquisition per training sample, a pure function of (seed, epoch, index).

What a chest film's acquisition varies in practice (issue #14), drawn from the
`data.acquisition` ranges: source–detector distance, isocentre–detector gap, cassette size
(or a detector that just covers the 320 mm cube, as the stored DRRs have), PA or AP, and
the patient's offset and rotation on the table. A share `nominal_fraction` of the samples
is the training geometry itself (541 / 949 mm, covering detector, PA, centred), so nominal
quality holds. A share `centred_fraction` of the others has the patient centred and unturned,
so that a centred patient is not something only the training geometry shows: otherwise the
network learns that any other geometry means an uncertain position and blurs for it. View
dropout (one view replaced by zeros) and the film style's seed come from the same generator,
so a sample is reproducible from its three numbers alone and a resumed run replays the same
films.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xray2ct.config import AcquisitionConfig, GeometryConfig

LATERAL_SHARE_OF_DROPS = 0.8  # a dropped view is the lateral 80 % of the time (a PA alone is the common case)


@dataclass(frozen=True)
class FilmAcquisition:
    """How one sample's two films are taken.

    source_iso_mm / source_det_mm: mm. detector_mm: cassette side, mm; None: just covering the
    cube. offset_mm: patient shift (d, h, w), mm; rotation_deg: about the (d, h, w) axes,
    degrees (both unknown to the model, as at inference). cut: filmed from the cube alone (air
    around it) instead of the wide field. crop: the films are read as DICOM files are, uniform
    borders cropped. dropped: "pa" / "lat" / None, the view replaced by zeros. style_seed: seed
    of the film style's generator.
    """

    nominal: bool
    frontal: str  # "pa" or "ap"
    source_iso_mm: float
    source_det_mm: float
    detector_mm: float | None
    offset_mm: tuple = (0.0, 0.0, 0.0)
    rotation_deg: tuple = (0.0, 0.0, 0.0)
    cut: bool = False
    dropped: str | None = None
    style_seed: int = 0
    crop: bool = False

    @property
    def views(self) -> tuple:
        return (self.frontal, "lat")


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of sample `index` in `epoch`; SeedSequence mixes the three numbers, so
    nearby (epoch, index) pairs are unrelated."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), int(index)]))


def draw_acquisition(cfg: AcquisitionConfig, geometry: GeometryConfig, rng: np.random.Generator,
                     view_dropout: float = 0.0) -> FilmAcquisition:
    """One acquisition from `rng`. Every number is drawn whatever the branch, so the
    stream's use never depends on earlier outcomes."""
    u = rng.random(7)  # nominal?, covering?, AP?, dropout?, which view, cut?, crop?
    sdd = rng.uniform(*cfg.source_det_mm)
    gap = rng.uniform(*cfg.patient_det_mm)
    det = rng.uniform(*cfg.detector_mm)
    offset = tuple(float(v) for v in rng.uniform(-cfg.offset_mm, cfg.offset_mm, 3))
    rotation = tuple(float(v) for v in rng.uniform(-cfg.rotation_deg, cfg.rotation_deg, 3))
    style_seed = int(rng.integers(2**62))
    centred = rng.random() < cfg.centred_fraction  # drawn last, so the draws above keep their values
    if centred:
        offset, rotation = (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)
    dropped = None
    if u[3] < view_dropout:
        dropped = "lat" if u[4] < LATERAL_SHARE_OF_DROPS else "pa"
    if u[0] < cfg.nominal_fraction:
        return FilmAcquisition(True, "pa", geometry.source_iso_mm, geometry.source_det_mm, None,
                               dropped=dropped, style_seed=style_seed)
    return FilmAcquisition(False, "ap" if u[2] < cfg.ap_fraction else "pa", float(sdd - gap), float(sdd),
                           None if u[1] < cfg.covering_fraction else float(det), offset, rotation,
                           bool(u[5] < cfg.cut_fraction), dropped, style_seed, bool(u[6] < cfg.crop_fraction))


def sample_acquisition(cfg: AcquisitionConfig, geometry: GeometryConfig, seed: int, epoch: int, index: int,
                       view_dropout: float = 0.0) -> FilmAcquisition:
    """The acquisition of sample `index` in `epoch` of a run seeded `seed`."""
    return draw_acquisition(cfg, geometry, sample_rng(seed, epoch, index), view_dropout)
