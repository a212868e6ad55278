"""Hounsfield units <-> linear attenuation and the model's normalized intensity.

mu = mu_water * (1 + HU / 1000), clipped at 0 (air has HU = -1000, mu = 0).
The model's target is n = clip((HU + 1024) / 2500, 0, 1) (X2CT-GAN's HU window).
"""
from __future__ import annotations

import torch

MU_WATER = 0.02  # 1/mm, water at ~70 keV effective energy
HU_MIN, HU_RANGE = -1024.0, 2500.0  # normalization window: HU -1024 … 1476


def hu_to_mu(hu: torch.Tensor, mu_water: float = MU_WATER) -> torch.Tensor:
    """HU -> attenuation, 1/mm (never negative)."""
    return (mu_water * (1.0 + hu / 1000.0)).clamp_min(0.0)


def mu_to_hu(mu: torch.Tensor, mu_water: float = MU_WATER) -> torch.Tensor:
    """attenuation, 1/mm -> HU."""
    return (mu / mu_water - 1.0) * 1000.0


def hu_to_unit(hu: torch.Tensor) -> torch.Tensor:
    """HU -> normalized intensity in [0, 1] (the model's target)."""
    return ((hu - HU_MIN) / HU_RANGE).clamp(0.0, 1.0)


def unit_to_hu(n: torch.Tensor) -> torch.Tensor:
    """normalized intensity -> HU (inverse of hu_to_unit inside the window)."""
    return n * HU_RANGE + HU_MIN
