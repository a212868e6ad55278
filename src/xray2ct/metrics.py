"""Reconstruction metrics, one definition everywhere (DESIGN.md).

Ours, on normalized volumes n in [0, 1] (B, 1, D, H, W), each returned per case (B,):
  psnr      PSNR with data range 1
  ssim3d    3D SSIM, 7³ Gaussian window (σ 1.5), MONAI `SSIMMetric` semantics
  mae_hu    mean absolute error in Hounsfield units
X2CT-GAN protocol, for comparison with published numbers (labelled `x2ct_*`):
  values are HU + 1024 clipped to [0, 2500] (= 2500 n); PSNR with peak 4095; SSIM is
  2D SSIM (11×11 Gaussian, σ 1.5, data range 4095) averaged over the slices along each
  of the three axes, then over the axes.
"""
from __future__ import annotations

import torch

from xray2ct.physics.hu import HU_RANGE

X2CT_PEAK = 4095.0


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """(B, 1, D, H, W) x2 -> (B,) dB."""
    mse = ((pred.float() - target.float()) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse.clamp_min(1e-12))


def _ssim(pred: torch.Tensor, target: torch.Tensor, spatial_dims: int, win: int, data_range: float) -> torch.Tensor:
    from monai.metrics import SSIMMetric

    metric = SSIMMetric(spatial_dims=spatial_dims, data_range=data_range, win_size=win, kernel_sigma=1.5,
                        reduction="none")
    return metric(pred.float(), target.float()).reshape(-1)


def ssim3d(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, 1, D, H, W) x2 -> (B,) 3D SSIM with a 7³ Gaussian window.

    The training loss's separable implementation: MONAI's SSIMMetric values (tested to
    1e-5), several times faster at 64³.
    """
    from xray2ct.losses import ssim3d as separable_ssim3d

    with torch.no_grad():
        return separable_ssim3d(pred.float(), target.float(), win_size=7, sigma=1.5, data_range=1.0)


def mae_hu(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, 1, D, H, W) x2 -> (B,) mean |ΔHU| (the normalization is linear: ΔHU = 2500 Δn)."""
    return (pred.float() - target.float()).abs().flatten(1).mean(1) * HU_RANGE


def x2ct_psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """X2CT-GAN protocol PSNR: (B,) dB on 2500·n with peak 4095."""
    return psnr(pred.clamp(0, 1) * HU_RANGE, target.clamp(0, 1) * HU_RANGE, data_range=X2CT_PEAK)


def x2ct_ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """X2CT-GAN protocol SSIM: (B,) mean of slice-wise 2D SSIM along d, h and w."""
    p, t = pred.clamp(0, 1) * HU_RANGE, target.clamp(0, 1) * HU_RANGE
    b = p.shape[0]
    per_axis = []
    for axis in (2, 3, 4):
        # (B, 1, D, H, W) -> (B * n_slices, 1, X, Y): every slice along `axis` is one image
        ps = p.movedim(axis, 1).reshape(-1, 1, *[s for i, s in enumerate(p.shape) if i not in (0, 1, axis)])
        ts = t.movedim(axis, 1).reshape(ps.shape)
        win = min(11, (min(ps.shape[-2:]) - 1) // 2 * 2 + 1)  # largest odd window that fits
        per_axis.append(_ssim(ps, ts, spatial_dims=2, win=win, data_range=X2CT_PEAK).reshape(b, -1).mean(1))
    return torch.stack(per_axis).mean(0)


def all_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every metric, per case: {"psnr", "ssim3d", "mae_hu", "x2ct_psnr", "x2ct_ssim"} -> (B,)."""
    return {
        "psnr": psnr(pred, target),
        "ssim3d": ssim3d(pred, target),
        "mae_hu": mae_hu(pred, target),
        "x2ct_psnr": x2ct_psnr(pred, target),
        "x2ct_ssim": x2ct_ssim(pred, target),
    }
