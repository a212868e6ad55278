"""Gated bidirectional cross-attention between the CNN branch and the ViT tokens.

The ViT tokens attend to the CNN tokens (local detail into global context) and the CNN
tokens attend to the ViT tokens (global context into local detail); the updated CNN
tokens are then merged into the ViT stream. Every path that reaches the output goes
through a zero-initialised per-channel gate (LayerScale / ReZero style), so a freshly
built fusion returns the ViT tokens unchanged and the CNN branch is blended in as
training finds it useful. Keys/values are average-pooled over the token grid (kv_pool
per axis) so cross-attention costs N*N/kv_pool³, not N².
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from xray2ct.models.attention import grid_to_tokens, sdpa, tokens_to_grid
from xray2ct.models.conditioning import init_near_zero_


class CrossAttention(nn.Module):
    """Pre-norm multi-head cross-attention, heads of width head_dim.

    Args:
        dim: token width of queries and context.
        num_heads: heads.
        head_dim: q/k/v width per head (equal widths keep PyTorch's fast SDPA kernel).
        grid: token grid (D, H, W) of the context, needed for kv_pool > 1.
        kv_pool: average-pool factor per axis of the context before keys/values.
    """

    def __init__(
        self, dim: int, num_heads: int, head_dim: int = 16, grid: Sequence[int] | None = None, kv_pool: int = 1
    ) -> None:
        super().__init__()
        if kv_pool > 1 and grid is None:
            raise ValueError("kv_pool > 1 needs the token grid")
        self.num_heads, self.head_dim, self.kv_pool = num_heads, head_dim, kv_pool
        self.grid = tuple(grid) if grid is not None else None
        inner = num_heads * head_dim
        self.norm_q, self.norm_kv = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q = nn.Linear(dim, inner)
        self.kv = nn.Linear(dim, 2 * inner)
        self.proj = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x (B, N, dim), context (B, M, dim) -> (B, N, dim)."""
        B, N, _ = x.shape
        h, d = self.num_heads, self.head_dim
        c = self.norm_kv(context)
        if self.kv_pool > 1:
            # (B, M, dim) -> (B, dim, D, H, W) -> pooled -> (B, M', dim)
            c = tokens_to_grid(c, self.grid)
            c = grid_to_tokens(F.avg_pool3d(c, self.kv_pool, self.kv_pool, ceil_mode=True))
        q = self.q(self.norm_q(x)).view(B, N, h, d).transpose(1, 2).contiguous()  # (B, h, N, d)
        k, v = self.kv(c).view(B, -1, 2, h, d).permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (B, h, M', d)
        y = sdpa(q, k.contiguous(), v.contiguous())  # (B, h, N, d)
        return self.proj(y.transpose(1, 2).reshape(B, N, h * d))  # (B, h, N, d) -> (B, N, h*d) -> (B, N, dim)


class CrossAttentionFusion(nn.Module):
    """vit' = vit + g_v * CA(vit <- cnn); cnn' = cnn + g_c * CA(cnn <- vit); out = vit' + g_m * cnn'.

    g_v and g_m start at zero (output = ViT tokens at init), g_c at one (the CNN stream is
    an ordinary residual that reaches the output only through g_m).

    Args:
        dim: token width of both streams.
        num_heads: cross-attention heads.
        head_dim: q/k/v width per head.
        grid: token grid (D, H, W).
        kv_pool: K/V pooling per axis (1: full cross-attention).
    """

    def __init__(
        self, dim: int, num_heads: int, head_dim: int = 16, grid: Sequence[int] | None = None, kv_pool: int = 1
    ) -> None:
        super().__init__()
        self.vit_from_cnn = CrossAttention(dim, num_heads, head_dim, grid, kv_pool)
        self.cnn_from_vit = CrossAttention(dim, num_heads, head_dim, grid, kv_pool)
        self.gate_vit = nn.Parameter(torch.empty(dim))
        self.gate_cnn = nn.Parameter(torch.ones(dim))
        self.gate_merge = nn.Parameter(torch.empty(dim))
        init_near_zero_(self.gate_vit, self.gate_merge)  # fusion starts as (almost) the ViT alone

    def forward(self, vit: torch.Tensor, cnn: torch.Tensor) -> torch.Tensor:
        """vit (B, N, dim), cnn (B, N, dim) -> (B, N, dim)."""
        if vit.shape != cnn.shape:
            raise ValueError(f"ViT tokens {tuple(vit.shape)} and CNN tokens {tuple(cnn.shape)} must match")
        vit_new = vit + self.gate_vit * self.vit_from_cnn(vit, cnn)
        cnn_new = cnn + self.gate_cnn * self.cnn_from_vit(cnn, vit)
        return vit_new + self.gate_merge * cnn_new
