"""Adaptive modulation: a conditioning vector scales and shifts features channel-wise.

FiLM (Perez et al., arXiv 1709.07871) with the zero initialisation of DiT's adaLN-Zero
(Peebles & Xie, arXiv 2212.09748): the projection starts at zero, so a freshly built
modulated network computes exactly what the unmodulated one does, and the conditioning
is learnt as a perturbation of it.
"""

from __future__ import annotations

import torch
from torch import nn


NEAR_ZERO_STD = 1e-4


def init_near_zero_(*params: torch.Tensor, std: float = NEAR_ZERO_STD) -> None:
    """Start a branch (almost) switched off: output ≈ 0, so the network begins as the
    simpler model. Not exactly 0: a zero weight would also stop the gradient to every
    layer that feeds it, and those layers could not learn on the first step."""
    with torch.no_grad():
        for p in params:
            p.normal_(0.0, std)


class AdaptiveModulation(nn.Module):
    """x * (1 + scale(c)) + shift(c), identity at initialisation.

    Args:
        cond_dim: width of the conditioning vector c.
        dim: number of feature channels modulated.
    """

    def __init__(self, cond_dim: int, dim: int) -> None:
        super().__init__()
        self.dim = dim
        # SiLU before the projection as in DiT, so the conditioning enters non-linearly.
        self.act = nn.SiLU()
        self.proj = nn.Linear(cond_dim, 2 * dim)
        # scale = shift ≈ 0 at init -> (near) identity, as adaLN-Zero
        init_near_zero_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x (B, N, dim) or (B, dim, D, H, W), cond (B, cond_dim) -> same shape as x."""
        if cond.ndim != 2 or cond.shape[0] != x.shape[0]:
            raise ValueError(
                f"conditioning must be (B, cond_dim) with B={x.shape[0]}, got {tuple(cond.shape)}"
            )
        scale, shift = self.proj(self.act(cond)).chunk(2, dim=-1)  # (B, 2*dim) -> 2 x (B, dim)
        if x.ndim == 3:
            # tokens: broadcast over the token axis, (B, dim) -> (B, 1, dim)
            scale, shift = scale.unsqueeze(1), shift.unsqueeze(1)
        else:
            # channel-first volume: (B, dim) -> (B, dim, 1, 1, 1)
            view = (x.shape[0], self.dim) + (1,) * (x.ndim - 2)
            scale, shift = scale.view(view), shift.view(view)
        return torch.addcmul(x + shift, x, scale)  # x*(1+scale)+shift in two kernels, not three
