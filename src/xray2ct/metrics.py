"""Reconstruction metrics, one definition everywhere (DESIGN.md).

Ours, on normalized volumes n in [0, 1] (B, 1, D, H, W), each returned per case (B,):
  psnr      PSNR with data range 1
  ssim3d    3D SSIM, 7³ Gaussian window (σ 1.5), MONAI `SSIMMetric` semantics
  mae_hu    mean absolute error in Hounsfield units
X2CT-GAN protocol (labelled `x2ct_*`), exactly as its evaluation code computes it
(kylekma/X2CT `3DGAN/test.py` with `lib/utils/metrics_np.py`), so that our numbers can sit
beside published ones. Values are 2500·clip(n, 0, 1) (= HU + 1024 in [0, 2500]) truncated
to integers (their `astype(np.int32)`):
  x2ct_psnr     PSNR-avg, their headline PSNR: per-slice PSNR with peak 4095 (a slice
                with zero error counts 100 dB), averaged over the slices along d, then h,
                then w, and over the three axes
  x2ct_psnr_3d  whole-volume PSNR, peak 4095 (their `psnr-3d`)
  x2ct_ssim     SSIM-avg: scikit-image's `structural_similarity` on n in [0, 1] (data
                range 1, 7×7 uniform window, sample covariance) with the slices along one
                axis as channels, averaged over the three axes
  x2ct_mae      mean |difference| on the integer scale (HU)
  x2ct_mse      mean squared difference on the integer scale (HU²)
All x2ct_* are computed in float64 and returned as float64.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from xray2ct.physics.hu import HU_RANGE

X2CT_PEAK = 4095.0  # PIXEL_MAX of X2CT-GAN's test.py (12-bit CT), although its values stop at 2500
X2CT_ZERO_ERROR_DB = 100.0  # their PSNR for a slice or volume with no error
X2CT_SSIM_WIN = 7  # scikit-image's default uniform window


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """(B, 1, D, H, W) x2 -> (B,) dB."""
    mse = ((pred.float() - target.float()) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse.clamp_min(1e-12))


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


def _x2ct_pair(pred: torch.Tensor, target: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if pred.shape != target.shape or pred.ndim != 5 or pred.shape[1] != 1:
        raise ValueError(f"{what} expects two (B, 1, D, H, W) volumes of one shape, got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
    return pred, target


def x2ct_scale(n: torch.Tensor) -> torch.Tensor:
    """Normalized n (any shape) -> X2CT-GAN's integers 2500·clip(n, 0, 1), truncated, as float64.

    The product is taken at the input's precision (float32 for our volumes) before the
    truncation, as their `unMinMax(...).astype(np.int32)` does, so a value a rounding step
    below an integer falls on the same side as theirs.
    """
    x = n if n.dtype in (torch.float32, torch.float64) else n.float()
    return (x.clamp(0, 1) * HU_RANGE).trunc().double()


def _x2ct_psnr_db(mse: torch.Tensor) -> torch.Tensor:
    """float64 MSE on the integer scale -> PSNR with peak 4095; zero error -> 100 dB (their rule)."""
    db = 20 * torch.log10(X2CT_PEAK / mse.clamp_min(1e-10).sqrt())
    return torch.where(mse == 0, torch.full_like(db, X2CT_ZERO_ERROR_DB), db)


def _x2ct_error(pred: torch.Tensor, target: torch.Tensor, what: str) -> torch.Tensor:
    """(B, 1, D, H, W) x2 -> (B, D, H, W) float64 difference on the integer scale."""
    pred, target = _x2ct_pair(pred, target, what)
    return (x2ct_scale(target) - x2ct_scale(pred))[:, 0]


def x2ct_psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """X2CT-GAN's PSNR-avg (their headline PSNR): (B, 1, D, H, W) x2 -> (B,) dB.

    Per-slice PSNR along each axis, averaged over the slices, then over the three axes.
    """
    se = _x2ct_error(pred, target, "x2ct_psnr") ** 2  # (B, D, H, W)
    per_axis = [_x2ct_psnr_db(se.mean(dim=other)).mean(1) for other in ((2, 3), (1, 3), (1, 2))]  # slices along d, h, w
    return torch.stack(per_axis).mean(0)


def x2ct_psnr_3d(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """X2CT-GAN's psnr-3d: (B, 1, D, H, W) x2 -> (B,) dB over the whole volume, peak 4095."""
    return _x2ct_psnr_db((_x2ct_error(pred, target, "x2ct_psnr_3d") ** 2).flatten(1).mean(1))


def x2ct_mae(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """X2CT-GAN's MAE: (B, 1, D, H, W) x2 -> (B,) mean |difference| on the integer scale (HU)."""
    return _x2ct_error(pred, target, "x2ct_mae").abs().flatten(1).mean(1)


def x2ct_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """X2CT-GAN's MSE: (B, 1, D, H, W) x2 -> (B,) mean squared difference on the integer scale (HU²)."""
    return (_x2ct_error(pred, target, "x2ct_mse") ** 2).flatten(1).mean(1)


def x2ct_ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """X2CT-GAN's SSIM-avg: (B, 1, D, H, W) x2 -> (B,), on n clipped to [0, 1], float64.

    Equals scikit-image's `structural_similarity(data_range=1, channel_axis=-1)` with the
    slices along one axis as channels, averaged over the three axes. skimage filters with a
    7×7 uniform window, scales the variances by N/(N-1) (sample covariance, N = 49) and
    averages the SSIM map without the 3-pixel border that the window's padding reached;
    that is a 7×7 mean with no padding, which `avg_pool3d` with a flat (1, 7, 7)-style
    kernel computes for every slice at once.
    """
    pred, target = _x2ct_pair(pred, target, "x2ct_ssim")
    w = X2CT_SSIM_WIN
    if min(pred.shape[2:]) < w:
        raise ValueError(f"x2ct_ssim needs >= {w} voxels along every axis (scikit-image's {w}x{w} window), "
                         f"got shape {tuple(pred.shape)}")
    x, y = (v.double().clamp(0, 1) for v in (target, pred))
    c1, c2 = (0.01 * 1.0) ** 2, (0.03 * 1.0) ** 2  # skimage's K1, K2 on data range 1
    cov_norm = w * w / (w * w - 1)
    per_axis = []
    for axis in range(3):  # slices along d, h, w: the window spans the other two axes
        kernel = [w, w, w]
        kernel[axis] = 1

        def mean(v: torch.Tensor) -> torch.Tensor:
            return F.avg_pool3d(v, kernel, stride=1)  # (B, 1, D', H', W'), valid positions only

        ux, uy = mean(x), mean(y)
        vx = cov_norm * (mean(x * x) - ux * ux)
        vy = cov_norm * (mean(y * y) - uy * uy)
        vxy = cov_norm * (mean(x * y) - ux * uy)
        ssim_map = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
        per_axis.append(ssim_map.flatten(1).mean(1))  # every slice has the same size: mean of slice means
    return torch.stack(per_axis).mean(0)


def all_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every metric, per case: ours {"psnr", "ssim3d", "mae_hu"} and X2CT-GAN's {"x2ct_psnr",
    "x2ct_psnr_3d", "x2ct_ssim", "x2ct_mae", "x2ct_mse"} -> (B,) each."""
    return {
        "psnr": psnr(pred, target),
        "ssim3d": ssim3d(pred, target),
        "mae_hu": mae_hu(pred, target),
        "x2ct_psnr": x2ct_psnr(pred, target),
        "x2ct_psnr_3d": x2ct_psnr_3d(pred, target),
        "x2ct_ssim": x2ct_ssim(pred, target),
        "x2ct_mae": x2ct_mae(pred, target),
        "x2ct_mse": x2ct_mse(pred, target),
    }
