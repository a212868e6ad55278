"""1D linear interpolation as a matrix: the building block of separable bilinear sampling.

Where a 2D sampling grid is separable (rows depend on one input axis only, columns on the
other), bilinear sampling is `rows @ image @ cols.T`; both the DRR projector and the
model's lifting sample that way. Matmuls are several times faster than `grid_sample` on a
CPU, above all in the backward pass (a matmul instead of a scatter).
"""
from __future__ import annotations

import torch


def linear_weights(pix: torch.Tensor, size: int) -> torch.Tensor:
    """Linear interpolation weights at positions `pix` in pixel units (centres at 0 … size-1).

    pix (...,) -> (..., size): the weight of each input sample; taps outside the input are
    dropped, exactly as `grid_sample`'s zero padding does.
    """
    left = pix.floor()
    frac = pix - left
    weights = pix.new_zeros(*pix.shape, size)
    for index, w in ((left, 1 - frac), (left + 1, frac)):
        inside = (index >= 0) & (index <= size - 1)
        weights.scatter_add_(-1, index.clamp(0, size - 1).long().unsqueeze(-1), (w * inside).unsqueeze(-1))
    return weights
