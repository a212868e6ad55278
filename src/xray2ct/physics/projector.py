"""Differentiable cone-beam DRR projector.

Algorithm (Joseph's method, 1982): every ray is walked one volume slice at a time along
the view's depth axis (h for PA, w for lateral). Where the ray crosses slice k the slice
is sampled bilinearly; the samples are summed and multiplied by the ray's length between
two slices. Because our detectors are perpendicular to a volume axis, all rays cross
slice k on a grid that is the detector grid scaled by 1/magnification(k): separable, so
sampling slice k is two small interpolation matrices around it (rows_k @ slice_k @
cols_k.T) and the whole view is two batched matmuls — no per-ray loop, autograd for free,
the same code on CPU and CUDA, and a backward pass that is a matmul, not grid_sample's
scatter (1.8x forward, 2.7x forward + backward on one CPU thread at 32³ / 128²;
benchmarks/bench_projector_separable.py). Each slice is visited exactly once per ray (step = one
voxel along the depth axis, i.e. <= one voxel along the ray since the cone half-angle is
small), and bilinear in-slice sampling makes this as accurate as trilinear ray marching
at half-voxel steps at a fraction of the samples.
"""
from __future__ import annotations

import torch

from xray2ct.geometry import Geometry, get_view
from xray2ct.interpolation import linear_weights


def _slices(mu: torch.Tensor, depth_axis: int) -> torch.Tensor:
    """(B, 1, D, H, W) -> (K, B, D, X): slices along depth_axis, batch as channels."""
    vol = mu[:, 0]  # (B, D, H, W)
    if depth_axis == 1:  # PA: slices over h, image (d, w)
        return vol.permute(2, 0, 1, 3)
    if depth_axis == 2:  # lateral: slices over w, image (d, h)
        return vol.permute(3, 0, 1, 2)
    raise ValueError(f"depth_axis must be 1 or 2, got {depth_axis}")


CHUNK_ELEMENTS = 1 << 24  # bound on the intermediate (slices x batch x rows x cols) per chunk of slices


def project_view(mu: torch.Tensor, geometry: Geometry, view: str) -> torch.Tensor:
    """Line integrals of attenuation for one view.

    mu: (B, 1, D, H, W) attenuation, 1/mm  ->  (B, rows, cols), dimensionless (1/mm × mm).
    """
    v = get_view(view)
    slices = _slices(mu, v.depth_axis)  # (K, B, D, X)
    k, b, d, x = slices.shape
    d_mm, c_mm, step_mm = geometry.ray_in_slice(view, mu.device, slices.dtype)
    # Where each pixel's ray crosses slice k, in voxel units of the slice (centres at 0 … n-1):
    # rows depend only on (k, row) and columns only on (k, col), so bilinear sampling of the
    # slice is rows_k @ slice_k @ cols_k.T with two sparse interpolation matrices.
    rows = linear_weights(d_mm[:, :, 0] / geometry.voxel_mm[0] + (d - 1) / 2, d)  # (K, R, D)
    cols = linear_weights(c_mm[:, 0, :] / geometry.voxel_mm[v.col_axis] + (x - 1) / 2, x)  # (K, C, X)
    r, c = rows.shape[1], cols.shape[1]
    chunk = max(1, CHUNK_ELEMENTS // max(b * d * max(r, c), 1))
    total = None
    for k0 in range(0, k, chunk):
        ks = slice(k0, k0 + chunk)
        t = slices[ks] @ cols[ks].transpose(1, 2)[:, None]  # (k, B, D, C)
        # sum over slices and their rows in one matmul: (R, k*D) @ (B, k*D, C) -> (B, R, C)
        part = rows[ks].permute(1, 0, 2).reshape(r, -1) @ t.permute(1, 0, 2, 3).reshape(b, -1, c)
        total = part if total is None else total + part
    return total * step_mm  # (B, R, C)


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
