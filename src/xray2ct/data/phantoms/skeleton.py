"""How densely the v2 anatomy's skeleton is built: cortex thickness, the mean HU of the
posterior vertebral elements and scapulae, and the trabecular HU.

At the 5–10 mm voxels the model sees, a bone is its mass: cortex thickness × cortical HU,
plus the marrow's HU over its core. Version 2 built every cortex 2.3–2.5 mm thick and the
posterior elements and scapulae of solid cortical bone. Two real chest CTs cut as `prepare`
cuts them (`docs/RESULTS.md`, *Bone mass*) hold about half of v2's bone excess over soft tissue, at
the spine and at the chest wall alike, and a network trained on v2 paints a bright spine and
rib ring into them. Version 3 builds the same anatomy (the same random draws, seed for seed)
with the published thicknesses, which leave 0.7 of v2's bone mass (HU above 60 around the
bones at 64³; the rest of the way to those two CTs, whose patients may be old, is not taken):

- rib cortex about 1 mm: the thickest, mid-rib pleural aspect peaks at 0.9–2.6 mm (mean
  1.4 mm) over adults, the rest is thinner, and cortices thin with age (Holcombe et al.,
  J Anat 2019; Holcombe & Derstine, J Anat 2022);
- vertebral body shell under 1 mm (Silva et al., Bone 1994), drawn 1 mm to keep the shell
  at 5 mm voxels;
- the sternum's shell as thin as the ribs';
- pedicles, laminae and processes: thin cortices over trabecular bone, so their mean is
  nearer 500 HU than solid cortical bone;
- the scapular blade 2–4 mm thick (its borders and spine thicker);
- vertebral trabecular bone 100–280 HU, 190 at the centre: the adult L1 means of Pickhardt
  et al. (Ann Intern Med 2013) fall from about 260 HU at 20–30 years to about 120 HU past
  80, and chest CTs are mostly of adults past 40.

Humeri, forearm bones and clavicles keep v2's 2.5 mm cortex: a long bone's shaft is thick.
"""
from __future__ import annotations

from dataclasses import dataclass

from .tissues import Tissue


@dataclass(frozen=True)
class BoneBuild:
    rib_cortex_mm: float  # cortical wall of a rib (the rest of its 5 mm radius is trabecular)
    sternum_cortex_mm: float
    vertebra_cortex_mm: float  # the vertebral body's shell
    posterior_fraction: float  # pedicles, laminae and processes: their mean HU × the cortical HU
    scapula_fraction: float  # the scapular blade's mean HU × the cortical HU
    scapula_half_mm: float  # half the blade's thickness
    cancellous_centre: float  # trabecular HU = centre + (drawn − 270) × cancellous_scale
    cancellous_scale: float

    def tissue_hu(self, hu: dict) -> dict:
        """The phantom's HU table with its trabecular HU mapped (the draw itself is v2's)."""
        out = dict(hu)
        if (self.cancellous_centre, self.cancellous_scale) == (270.0, 1.0):
            return out  # v2 exactly, bit for bit
        out[Tissue.CANCELLOUS] = self.cancellous_centre + (hu[Tissue.CANCELLOUS] - 270.0) * self.cancellous_scale
        return out


V2_BONES = BoneBuild(rib_cortex_mm=2.3, sternum_cortex_mm=2.5, vertebra_cortex_mm=2.5, posterior_fraction=0.85,
                     scapula_fraction=0.8, scapula_half_mm=3.5, cancellous_centre=270.0, cancellous_scale=1.0)
V3_BONES = BoneBuild(rib_cortex_mm=1.2, sternum_cortex_mm=1.2, vertebra_cortex_mm=1.0, posterior_fraction=0.5,
                     scapula_fraction=0.7, scapula_half_mm=2.0, cancellous_centre=190.0, cancellous_scale=0.9)
