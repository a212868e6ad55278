"""From line integrals to a radiograph-like image, and augmentations that make DRRs look
like real films.

A digital chest radiograph is displayed after log transform, so its grey value is close
to the line integral itself: dense paths (bone, mediastinum) are bright, lungs dark. We
therefore use the line integral directly, normalized robustly by percentiles — the same
normalization `load_xray` applies to real radiographs, so both look alike to the model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOW_PCT, HIGH_PCT = 0.5, 99.5  # robust window: ignores collimator edges and burnt-out pixels


def robust_normalize(img: torch.Tensor, low: float = LOW_PCT, high: float = HIGH_PCT) -> torch.Tensor:
    """Map each image's [low, high] percentile window to [0, 1], clipped. (..., H, W) -> same."""
    flat = img.float().flatten(-2)
    lo, hi = (percentile(flat, p)[..., None, None] for p in (low, high))
    return ((img - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)


def percentile(flat: torch.Tensor, pct: float) -> torch.Tensor:
    """torch.quantile(flat, pct / 100, dim=-1) (linear interpolation), (..., n) -> (...).

    Two selections instead of a sort: 2x faster on a 512² image, where sorting took a
    quarter of the data loader's time per case.
    """
    n = flat.shape[-1]
    pos = pct / 100 * (n - 1)
    k = int(pos)  # the interpolation runs between order statistics k and k + 1 (0-based)
    below = flat.kthvalue(k + 1, dim=-1).values
    if k + 1 >= n or pos == k:
        return below
    above = flat.kthvalue(k + 2, dim=-1).values
    return torch.lerp(below, above, pos - k)


def _gaussian_blur(img: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, 1, H, W), reflect-padded."""
    if sigma_px <= 0:
        return img
    radius = max(1, int(3 * sigma_px))
    x = torch.arange(-radius, radius + 1, dtype=img.dtype, device=img.device)
    k = torch.exp(-(x**2) / (2 * sigma_px**2))
    k = k / k.sum()
    radius = min(radius, img.shape[-1] - 1, img.shape[-2] - 1)
    k = k[len(k) // 2 - radius : len(k) // 2 + radius + 1]
    k = k / k.sum()
    img = F.conv2d(F.pad(img, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(img, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1))


def _wide_blur(img: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """A wide Gaussian blur computed at reduced resolution (scatter fog is smooth), same shape out."""
    factor = max(1, int(sigma_px // 2))
    small = F.avg_pool2d(img, factor, ceil_mode=True) if factor > 1 else img
    fog = _gaussian_blur(small, sigma_px / factor)
    return F.interpolate(fog, size=img.shape[-2:], mode="bilinear", align_corners=False) if factor > 1 else fog


@dataclass(frozen=True)
class RadiographStyle:
    """Random film-like degradations, each drawn uniformly from [0, max] (or a range).

    blur_px: focal-spot/detector blur, Gaussian sigma in pixels.
    scatter: fraction of a very wide blur added (scatter fog lowers contrast).
    noise: std of additive Gaussian noise on the [0, 1] image (quantum + electronic).
    gamma: range of display gamma.  contrast: range of a contrast stretch about the mean.
    rotate_deg: max in-plane rotation (patient positioning).
    """

    blur_px: float = 1.0
    scatter: float = 0.15
    noise: float = 0.02
    gamma: tuple = (0.8, 1.25)
    contrast: tuple = (0.85, 1.15)
    rotate_deg: float = 3.0

    def __call__(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """img (N, 1, H, W) in [0, 1] -> augmented (N, 1, H, W) in [0, 1]."""

        def u(a, b):
            return a + (b - a) * torch.rand((), generator=generator).item()

        n, _, h, w = img.shape
        img = _gaussian_blur(img, u(0, self.blur_px))
        s = u(0, self.scatter)
        img = (1 - s) * img + s * _wide_blur(img, max(h, w) / 8)
        angle = math.radians(u(-self.rotate_deg, self.rotate_deg))
        if angle:
            rot = torch.tensor([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0]], dtype=img.dtype)
            grid = F.affine_grid(rot.expand(n, 2, 3).to(img.device), list(img.shape), align_corners=False)
            img = F.grid_sample(img, grid, padding_mode="border", align_corners=False)
        c = u(*self.contrast)
        mean = img.mean(dim=(-1, -2), keepdim=True)
        img = ((img - mean) * c + mean).clamp(0, 1) ** u(*self.gamma)
        noise = torch.randn(img.shape, generator=generator, dtype=img.dtype).to(img.device)
        return (img + u(0, self.noise) * noise).clamp(0, 1)


def drr_to_radiograph(line_integrals: torch.Tensor, style: RadiographStyle | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Line integrals (..., H, W) -> radiograph-like image in [0, 1], bones bright."""
    img = robust_normalize(line_integrals)
    if style is None:
        return img
    shape = img.shape
    return style(img.reshape(-1, 1, *shape[-2:]), generator).reshape(shape)
