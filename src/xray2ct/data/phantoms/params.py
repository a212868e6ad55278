"""The random anatomy of one v2 phantom: `PhantomParamsV2.draw(rng)`.

All lengths are mm in the patient frame (z head→feet, y anterior→posterior, x patient
right→left; origin at the centre of the cube, which `xray2ct prepare` puts at the centre
of the body's bounding box, hence the middle of the scan range in z). Ranges aim at adult
chest CTs from the 5th to the 95th percentile; the sources are cited beside each group.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .tissues import TISSUE_HU_V2, Tissue

DISEASES = ("nodules", "mass", "consolidation", "effusion", "emphysema", "atelectasis")


@dataclass(frozen=True)
class PhantomParamsV2:
    """One phantom's anatomy; see `draw` for the distribution of every field."""

    # coverage and placement
    scan_len: float  # head–feet length of the scan range
    above_apex: float  # how far the scan starts above the lung apex (neck coverage)
    recon_diam: float  # reconstruction circle diameter (scan field of view)
    recon_centre: tuple  # (y, x) of the circle centre (the scanner isocentre) vs the cube centre
    table: bool  # a patient couch under the back
    table_gap: float  # mattress / pad between back and couch
    table_thick: float
    table_radius: float  # curvature of the couch's upper surface
    rotation_deg: float  # patient rotation about d
    shift_mm: tuple  # (z, y, x) offset of the body centre from the cube centre
    # habitus
    female: bool
    half_w: float  # lean (fat-free) half-width of the lower chest
    half_h: float  # lean half-depth of the lower chest
    fat_mm: float  # subcutaneous fat thickness
    power: float  # superellipse exponent of the cross-section (2 = ellipse, more = squarer)
    back_flat: float  # posterior / anterior semi-axis ratio (supine: the back is flattened)
    belly: float  # abdominal anterior semi-axis vs the chest's (obese > 1)
    wall_mm: float  # chest wall muscle thickness (pectorals, intercostals) inside the fat
    breast: tuple  # (projection mm, radius mm, lateral fall mm); projection 0 = none
    neck: tuple  # (half-depth, half-width)
    # limbs
    arms_up: bool
    arm_r: float  # upper-arm radius (skin)
    arm_spread: tuple  # (right, left) lateral distance of the elbow from the body / the head
    arm_y: tuple  # (right, left) antero-posterior position of the elbow
    # lungs and diaphragm
    breath: float  # 0 full expiration … 1 deep inspiration
    apex_to_dome: float  # lung apex to the right dome top at expiration
    dome_drop: float  # left dome below the right one (negative: left higher)
    mediastinum_mm: float  # half-width of the anterior mediastinum between the lungs
    lung_gradient_hu: float  # supine: posterior (dependent) lung is denser
    perihilar_hu: float  # extra density near the hila (vessels and interstitium)
    # heart and vessels
    heart_scale: float
    heart_offset: tuple  # (y, x)
    heart_yaw_deg: float  # long axis turned from patient-left toward anterior
    heart_tilt_deg: float  # long axis pointing down toward the feet
    epicardial_fat: float  # fat layer around the heart
    aorta_r: tuple  # (ascending, descending) radius
    trunk_r: float  # pulmonary trunk radius
    contrast: float  # 0: none; else arterial blood HU
    right_heart_factor: float  # right heart / pulmonary artery HU vs contrast
    svc_factor: float  # SVC HU vs contrast (undiluted contrast arriving)
    enhancement: float  # organ enhancement per HU of arterial contrast (phase: arterial low, portal high)
    # abdomen
    liver_scale: float
    spleen_scale: float
    stomach: tuple  # (scale, gas fraction)
    colon_gas: int  # gas pockets at the lower edge
    visceral_fat: float  # share of fat in the bowel and mesentery (grows with obesity)
    # spine
    kyphosis_mm: float
    vertebra_pitch: float
    rib_drop: float
    # disease and devices
    diseases: tuple  # names from DISEASES
    pacemaker: bool
    line: bool
    hu: dict  # Tissue -> HU of this phantom

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "PhantomParamsV2":
        u = rng.uniform
        female = bool(u() < 0.5)
        # Habitus. Chest lateral diameter 26–40 cm, AP 18–30 cm (brief; CT body diameters,
        # e.g. AAPM report 204 effective diameters 20–40 cm in adults); subcutaneous fat at
        # the chest wall 5–50 mm (thin to obese, skewed: Beta(1.6, 3.5)).
        fat = 4.0 + 50.0 * rng.beta(1.6, 3.5)
        half_w = u(128.0, 160.0) if not female else u(115.0, 148.0)
        half_w = float(np.clip(half_w + fat, 130.0, 200.0) - fat)  # outer lateral 260–400 mm
        half_h = float(np.clip(half_w * u(0.6, 0.78) + fat, 90.0, 150.0) - fat)  # outer AP 180–300 mm
        breast = (0.0, 0.0, 0.0)
        if female and u() < 0.9:
            breast = (u(15.0, 45.0) + 0.5 * fat, u(55.0, 90.0), u(0.0, 25.0))  # supine: flattened, fallen outward
        # Coverage: chest CT from the neck (5–80 mm above the apices) to the upper abdomen;
        # range 250–400 mm (brief).
        scan_len = u(250.0, 400.0)
        table = bool(u() < 0.7)
        # Lungs: apex to right dome top 15.5–20.5 cm at expiration; inspiration lowers the domes
        # by up to 4.5 cm (quiet-to-deep excursion 2–6 cm: Kolar et al. 2009, MRI); chest CTs
        # are taken at inspiration (breath skewed toward 1).
        breath = float(rng.beta(3.0, 1.5))
        # Right dome higher than the left in ~90%, by ~1.5 cm on average (Felson,
        # "Chest Roentgenology": right hemidiaphragm 1–2.5 cm higher).
        dome_drop = float(np.clip(rng.normal(15.0, 9.0), -10.0, 35.0))
        contrast = u(150.0, 350.0) if u() < 0.5 else 0.0
        n_dis = 0 if u() > 0.3 else 1 + int(u() < 0.35)
        diseases = tuple(str(d) for d in rng.choice(DISEASES, size=n_dis, replace=False)) if n_dis else ()
        device = u() < 0.05
        pacemaker = bool(device and u() < 0.6)
        arms_up = bool(u() < 0.7)
        return cls(
            scan_len=scan_len, above_apex=u(5.0, 80.0),
            recon_diam=u(350.0, 500.0), recon_centre=(u(-25.0, 15.0), u(-10.0, 10.0)),
            table=table, table_gap=u(0.0, 15.0), table_thick=u(15.0, 45.0), table_radius=u(300.0, 900.0),
            rotation_deg=u(-5.0, 5.0), shift_mm=(0.0, u(-8.0, 8.0), u(-8.0, 8.0)),
            female=female, half_w=half_w, half_h=half_h, fat_mm=fat, power=u(2.0, 3.0),
            back_flat=u(0.82, 1.0), belly=u(0.9, 1.05) + 0.006 * fat, wall_mm=u(8.0, 16.0) - 3.0 * female,
            breast=breast, neck=(u(48.0, 62.0), u(50.0, 66.0)),
            arms_up=arms_up, arm_r=u(38.0, 52.0) + 0.5 * fat,
            arm_spread=(u(-5.0, 30.0), u(-5.0, 30.0)) if not arms_up else (u(40.0, 110.0), u(40.0, 110.0)),
            arm_y=(u(-20.0, 30.0), u(-20.0, 30.0)),
            breath=breath, apex_to_dome=u(155.0, 205.0) - 10.0 * female, dome_drop=dome_drop,
            mediastinum_mm=u(8.0, 18.0), lung_gradient_hu=u(20.0, 80.0), perihilar_hu=u(20.0, 60.0),
            # Heart: CTR 0.42–0.50 typical, > 0.5 in ~10% (cardiomegaly).
            heart_scale=u(0.98, 1.25) * (1.25 if u() < 0.1 else 1.0) * (0.93 if female else 1.0),
            heart_offset=(u(-10.0, 10.0), u(-12.0, 12.0)), heart_yaw_deg=u(25.0, 55.0), heart_tilt_deg=u(15.0, 40.0),
            epicardial_fat=u(1.0, 6.0) + 0.2 * fat,
            # Aorta: ascending diameter 28–38 mm, descending 20–28 mm (Hager et al., Radiology 2002);
            # pulmonary trunk < 29 mm (Truong et al., 2012).
            aorta_r=(u(14.0, 19.0), u(10.0, 14.0)), trunk_r=u(11.0, 15.0),
            contrast=contrast, right_heart_factor=u(0.7, 1.4), svc_factor=u(1.0, 3.0), enhancement=u(0.1, 0.6),
            liver_scale=u(0.85, 1.15), spleen_scale=u(0.7, 1.3), stomach=(u(0.6, 1.3), u(0.0, 0.5)),
            colon_gas=int(rng.integers(0, 5)),
            # Visceral fat grows with subcutaneous fat (Kvist et al., Am J Clin Nutr 1988).
            visceral_fat=float(np.clip(u(0.0, 0.25) + 0.01 * fat, 0.0, 0.75)),
            # Thoracic kyphosis 20–50° (Fon et al. 1980): a posterior bow of ~5–25 mm over T1–T12.
            kyphosis_mm=u(5.0, 25.0), vertebra_pitch=u(21.0, 27.0) - 1.5 * female, rib_drop=u(35.0, 65.0),
            diseases=diseases, pacemaker=pacemaker,
            line=bool(device and not pacemaker) or bool(pacemaker and u() < 0.3),
            hu={t: m + u(-j, j) for t, (m, j) in TISSUE_HU_V2.items()},
        )

    @property
    def apex_z(self) -> float:
        """z of the lung apices: the scan range is centred on the cube."""
        return -self.scan_len / 2 + self.above_apex


def blood_hu(p: PhantomParamsV2, side: str) -> float:
    """HU of blood in the 'left' heart and aorta, the 'right' heart and pulmonary arteries,
    or the 'svc': unenhanced blood, or contrast that is densest where it arrives (SVC)."""
    if not p.contrast:
        return p.hu[Tissue.BLOOD]
    factor = {"left": 1.0, "right": p.right_heart_factor, "svc": p.svc_factor}[side]
    return min(p.contrast * factor, 1200.0)
