"""Is the network's uncertainty honest? Coverage of its predicted σ, and a temperature that fixes it.

For Gaussian errors, |error| <= z σ should hold for a fraction 2Φ(z) − 1 of voxels: 68.3 %
at z = 1, 95.4 % at z = 2. Networks trained with a Gaussian NLL are often over- or
under-confident by a roughly constant factor, so one temperature t per model (σ → t σ),
fitted on held-out data, is the standard fix (Kuleshov et al., ICML 2018; Laves et al.,
MIDL 2020). Refinement weighs its prior by 1 / (t σ)², so t matters there too.
"""
from __future__ import annotations

import math

import torch

ONE_SIGMA = math.erf(1 / math.sqrt(2))  # 0.6827: Gaussian mass within ±1σ


def normalized_error(pred: torch.Tensor, target: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """|pred − target| / σ per voxel, flattened: (B, 1, D, H, W) x3 -> (N,)."""
    return ((pred.float() - target.float()).abs() * torch.exp(-0.5 * log_var.float())).flatten()


def coverage(z_error: torch.Tensor, k: float, temperature: float = 1.0) -> float:
    """Fraction of voxels with |error| <= k t σ, from `normalized_error`'s output."""
    return float((z_error <= k * temperature).float().mean())


def fit_temperature(z_error: torch.Tensor) -> float:
    """t such that exactly 68.3 % of voxels fall within ±t σ."""
    from xray2ct.physics.radiograph import percentile

    return float(percentile(z_error.double(), 100 * ONE_SIGMA))


def reliability(z_error: torch.Tensor, temperature: float = 1.0, levels=None) -> tuple[list[float], list[float]]:
    """(nominal, observed) coverage of Gaussian intervals at several nominal levels: the reliability curve."""
    levels = levels or [0.1 * i for i in range(1, 10)] + [0.95, 0.99]
    observed = [coverage(z_error, math.sqrt(2) * torch.special.erfinv(torch.tensor(p)).item(), temperature)
                for p in levels]
    return list(levels), observed
