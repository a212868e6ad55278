"""Differentiable cone-beam DRR projector.

Algorithm (Joseph's method, 1982): every ray is walked one volume slice at a time along
the view's depth axis (h for PA, w for lateral). Where the ray crosses slice k the slice
is sampled bilinearly; the samples are summed and multiplied by the ray's length between
two slices. Because our detectors are perpendicular to a volume axis, all rays cross
slice k on a grid that is the detector grid scaled by 1/magnification(k), so one batched
`grid_sample` over all K slices does the whole view: no per-ray loop, autograd for free,
the same code on CPU and CUDA. Each slice is visited exactly once per ray (step = one
voxel along the depth axis, i.e. <= one voxel along the ray since the cone half-angle is
small), and bilinear in-slice sampling makes this as accurate as trilinear ray marching
at half-voxel steps at a fraction of the samples.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from xray2ct.geometry import Geometry, get_view


def _slices(mu: torch.Tensor, depth_axis: int) -> torch.Tensor:
    """(B, 1, D, H, W) -> (K, B, D, X): slices along depth_axis, batch as channels."""
    vol = mu[:, 0]  # (B, D, H, W)
    if depth_axis == 1:  # PA: slices over h, image (d, w)
        return vol.permute(2, 0, 1, 3)
    if depth_axis == 2:  # lateral: slices over w, image (d, h)
        return vol.permute(3, 0, 1, 2)
    raise ValueError(f"depth_axis must be 1 or 2, got {depth_axis}")


def project_view(mu: torch.Tensor, geometry: Geometry, view: str) -> torch.Tensor:
    """Line integrals of attenuation for one view.

    mu: (B, 1, D, H, W) attenuation, 1/mm  ->  (B, rows, cols), dimensionless (1/mm × mm).
    """
    v = get_view(view)
    slices = _slices(mu, v.depth_axis)  # (K, B, D, X)
    d_mm, c_mm, step_mm = geometry.ray_in_slice(view, mu.device, slices.dtype)
    half_d = max((geometry.volume_shape[0] - 1) / 2 * geometry.voxel_mm[0], 1e-12)
    half_c = max((geometry.volume_shape[v.col_axis] - 1) / 2 * geometry.voxel_mm[v.col_axis], 1e-12)
    rows, cols = geometry.det_shape
    k = slices.shape[0]
    grid = torch.stack(
        [(c_mm / half_c).expand(k, rows, cols), (d_mm / half_d).expand(k, rows, cols)], dim=-1
    )  # (K, R, C, 2) as (x=col axis, y=d), align_corners=True
    samples = F.grid_sample(slices, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return samples.sum(0) * step_mm  # (B, R, C)


def project(mu: torch.Tensor, geometry: Geometry, views=None) -> torch.Tensor:
    """Cone-beam DRR line integrals.

    mu: (B, 1, D, H, W) attenuation in 1/mm, float32/float64 (bf16 is computed in float32)
    returns (B, V, rows, cols) with V = len(views), PA then lateral by default.
    """
    if mu.ndim != 5 or mu.shape[1] != 1:
        raise ValueError(f"project expects mu of shape (B, 1, D, H, W), got {tuple(mu.shape)}")
    if tuple(mu.shape[2:]) != geometry.volume_shape:
        raise ValueError(f"volume {tuple(mu.shape[2:])} does not match geometry {geometry.volume_shape}")
    dtype = mu.dtype
    if dtype not in (torch.float32, torch.float64):
        mu = mu.float()
    out = torch.stack([project_view(mu, geometry, v) for v in (views or geometry.views)], dim=1)
    return out.to(dtype)
