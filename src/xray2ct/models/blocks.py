"""Transformer building blocks on a 3D token grid and the sandwich / standard stack.

Sandwich layout (EfficientViT, arXiv 2305.07027, Sec. 3.1): fewer attention blocks, each
wrapped between FFN blocks that start with a depthwise-conv token mixer, because attention
is the memory- and time-heavy part and FFNs carry most of the capacity per FLOP. The
standard layout is the plain ViT [attention -> FFN] pair repeated, as baseline.

Normalisation: pre-norm LayerNorm on every residual branch (not EfficientViT's BatchNorm).
Reasons: training runs with 2 volumes per batch (BN statistics would come from two
patients' strongly correlated tokens, and would differ between train and eval), and the
conditioning modulates the normalised branch input as adaLN does in DiT. Inside CGA the
per-head qkv keeps EfficientViT's BatchNorm (see attention.py), over B*N tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from xray2ct.models.attention import (
    ATTENTION_KINDS,
    build_attention,
    grid_to_tokens,
    tokens_to_grid,
)
from xray2ct.models.conditioning import AdaptiveModulation
from xray2ct.models.depthwise import DepthwiseConv3d

LAYOUTS = ("sandwich", "standard")


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth (Huang et al. 2016): zero a whole residual branch per sample."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    if keep <= 0.0:
        return x * 0.0  # p = 1: branch always dropped
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)  # (B, 1, 1)
    return x * mask / keep  # rescale so the expectation is unchanged


class FFN(nn.Module):
    """Position-wise MLP: Linear(dim, ratio*dim) -> act -> Linear(ratio*dim, dim)."""

    def __init__(self, dim: int, ratio: float = 2.0, act: str = "gelu") -> None:
        super().__init__()
        hidden = int(round(dim * ratio))
        acts = {"gelu": nn.GELU, "relu": nn.ReLU}
        if act not in acts:
            raise ValueError(f"act={act!r} is not one of {sorted(acts)}")
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), acts[act](), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, dim) -> (B, N, dim)."""
        return self.fc2(self.act(self.fc1(x)))


class TokenMixer(nn.Module):
    """Residual depthwise Conv3d over the token grid (EfficientViT's DWConv before each FFN):
    local mixing plus implicit position information, at 27*dim weights."""

    def __init__(self, dim: int, grid: Sequence[int], kernel_size: int = 3) -> None:
        super().__init__()
        self.grid = tuple(grid)
        self.conv = DepthwiseConv3d(dim, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, dim) -> (B, N, dim)."""
        # (B, N, C) -> (B, C, D, H, W) -> conv -> (B, N, C); free views on CPU (channels_last_3d)
        return x + grid_to_tokens(self.conv(tokens_to_grid(x, self.grid)))


class Residual(nn.Module):
    """x + drop_path(fn(modulate(LayerNorm(x), cond))); modulation only when cond_dim is set
    and a cond is passed."""

    def __init__(
        self, fn: nn.Module, dim: int, drop_path: float = 0.0, cond_dim: int | None = None
    ) -> None:
        super().__init__()
        self.fn, self.drop_path = fn, drop_path
        self.norm = nn.LayerNorm(dim)
        self.modulation = AdaptiveModulation(cond_dim, dim) if cond_dim else None

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, dim), cond (B, cond_dim) | None -> (B, N, dim)."""
        h = self.norm(x)
        if self.modulation is not None and cond is not None:
            h = self.modulation(h, cond)
        return x + drop_path(self.fn(h), self.drop_path, self.training)


class AttentionBlock(Residual):
    """Residual attention block (kind "attn" in a stack's layout)."""

    kind = "attn"


class FFNBlock(nn.Module):
    """Optional residual depthwise token mixer, then a residual FFN (kind "ffn")."""

    kind = "ffn"

    def __init__(
        self,
        dim: int,
        grid: Sequence[int],
        ffn_ratio: float = 2.0,
        drop_path: float = 0.0,
        cond_dim: int | None = None,
        token_mixer: bool = True,
    ) -> None:
        super().__init__()
        self.mixer = TokenMixer(dim, grid) if token_mixer else nn.Identity()
        self.ffn = Residual(FFN(dim, ffn_ratio), dim, drop_path, cond_dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, dim), cond (B, cond_dim) | None -> (B, N, dim)."""
        return self.ffn(self.mixer(x), cond)


def block_order(layout: str, num_attn_blocks: int, num_ffn_blocks: int) -> list[str]:
    """Block kinds in order, e.g. sandwich 2 attn + 4 ffn -> ffn attn ffn | ffn attn ffn.

    Sandwich: the FFN blocks are spread over the 2*A slots before/after each attention
    block, slot j getting floor((j+1)F/2A) - floor(jF/2A) of them (so 2 attn + 6 ffn ->
    ffn attn ffn ffn | ffn attn ffn ffn, the seed's "[FFN -> Attn -> FFN -> FFN] x 2").
    With no attention block all are FFN. Standard: ["attn", "ffn"] x (A + F).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    if num_attn_blocks < 0 or num_ffn_blocks < 0 or num_attn_blocks + num_ffn_blocks == 0:
        raise ValueError(
            f"need num_attn_blocks, num_ffn_blocks >= 0 and not both 0, got "
            f"{num_attn_blocks}, {num_ffn_blocks}"
        )
    A, F = num_attn_blocks, num_ffn_blocks
    if layout == "standard":
        return ["attn", "ffn"] * (A + F)
    if A == 0:
        return ["ffn"] * F
    order: list[str] = []
    for j in range(2 * A):
        order += ["ffn"] * ((j + 1) * F // (2 * A) - j * F // (2 * A))
        if j % 2 == 0:  # an attention block after every "before" slot
            order.append("attn")
    return order


class TransformerStack(nn.Module):
    """Sandwich (EfficientViT) or standard (ViT) stack of residual blocks on a token grid.

    Args:
        dim: token width.
        num_heads: attention heads.
        grid: token grid (D, H, W); N = D*H*W.
        num_attn_blocks, num_ffn_blocks: block counts (see `block_order`).
        layout: "sandwich" (FFN blocks with depthwise token mixer around attention) or
            "standard" ([attention -> FFN] x (num_attn_blocks + num_ffn_blocks), no mixer).
        attention: "cga" or "mhsa"; multiscale, key_dim, kv_pool: see `build_attention`.
        ffn_ratio: FFN hidden width / dim.
        drop_path: stochastic-depth rate of the last block, linearly from 0 at the first.
        cond_dim: width of the conditioning vector; each block's (normalised) input is
            then modulated by its own `AdaptiveModulation`.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid: Sequence[int],
        num_attn_blocks: int,
        num_ffn_blocks: int,
        layout: str = "sandwich",
        attention: str = "cga",
        multiscale: bool = True,
        key_dim: int = 16,
        kv_pool: int = 2,
        ffn_ratio: float = 2.0,
        drop_path: float = 0.0,
        cond_dim: int | None = None,
    ) -> None:
        super().__init__()
        if attention not in ATTENTION_KINDS:
            valid = ", ".join(ATTENTION_KINDS)
            raise ValueError(f"unknown attention {attention!r}; valid: {valid}")
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {drop_path}")
        self.layout_names = block_order(layout, num_attn_blocks, num_ffn_blocks)
        n = len(self.layout_names)
        rates = [drop_path * i / max(n - 1, 1) for i in range(n)]
        blocks: list[nn.Module] = []
        for kind, rate in zip(self.layout_names, rates):
            if kind == "attn":
                attn = build_attention(
                    attention, dim, num_heads, grid, key_dim, multiscale, kv_pool
                )
                blocks.append(AttentionBlock(attn, dim, rate, cond_dim))
            else:
                mixer = layout == "sandwich"
                blocks.append(
                    FFNBlock(dim, grid, ffn_ratio, rate, cond_dim, token_mixer=mixer)
                )
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(dim)  # pre-norm residual stream needs a final norm

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, dim), cond (B, cond_dim) | None -> (B, N, dim)."""
        for block in self.blocks:
            x = block(x, cond)
        return self.norm(x)
