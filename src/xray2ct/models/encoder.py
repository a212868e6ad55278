"""2D X-ray encoder: a light CNN shared by the PA and lateral views.

Each stage halves the resolution with a stride-2 3x3 conv (conv-BN-act) and refines with
one residual depthwise-separable block (MobileNet, arXiv 1704.04861), so widths stay
modest and most weights sit in the 3D token model. The deepest map is projected to
`out_dim`, the width the lifting samples. A learned view embedding, added after the stem
and to the deepest map, lets the shared weights treat the two views differently and
marks which view a lifted feature came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn


class ConvBNAct2d(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> GELU (act optional)."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, groups: int = 1, act: bool = True
    ) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.GELU() if act else nn.Identity(),
        )


class DepthwiseSeparable2d(nn.Module):
    """Residual depthwise 3x3 -> pointwise 1x1 block: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.dw = ConvBNAct2d(ch, ch, 3, groups=ch)
        self.pw = ConvBNAct2d(ch, ch, 1, act=False)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        return self.act(x + self.pw(self.dw(x)))


class EncoderOutput(NamedTuple):
    """Per-view multi-scale features; the last entry of each list is the deepest (out_dim)."""

    features: list[torch.Tensor]  # per stage (B, V, C_s, H_s, W_s)
    descriptors: list[torch.Tensor]  # per stage (B, V, C_s), global average pool


class XRayEncoder(nn.Module):
    """Shared-weight 2D CNN over V views with a learned view embedding.

    Args:
        in_ch: channels per view image (1 for radiographs).
        channels: width of each stride-2 stage; the total stride is 2**len(channels).
        out_dim: width of the deepest map after a 1x1 projection (what the lifting samples).
        num_views: number of views (2: PA, lateral).
    """

    def __init__(
        self,
        in_ch: int = 1,
        channels: Sequence[int] = (32, 64, 128, 256),
        out_dim: int = 512,
        num_views: int = 2,
    ) -> None:
        super().__init__()
        if not channels or min(channels) < 1:
            raise ValueError(f"channels must be a non-empty list of positive widths, got {list(channels)}")
        self.in_ch, self.num_views = in_ch, num_views
        self.channels = tuple(channels)
        self.out_dim = out_dim
        widths = (in_ch, *channels)
        self.stages = nn.ModuleList(
            nn.Sequential(ConvBNAct2d(c_in, c_out, 3, stride=2), DepthwiseSeparable2d(c_out))
            for c_in, c_out in zip(widths[:-1], widths[1:])
        )
        self.proj = ConvBNAct2d(channels[-1], out_dim, 1, act=False)
        # (V, C): one vector per view, broadcast over the image
        self.view_embed_stem = nn.Parameter(torch.zeros(num_views, channels[0]))
        self.view_embed = nn.Parameter(torch.zeros(num_views, out_dim))
        nn.init.trunc_normal_(self.view_embed_stem, std=0.02)
        nn.init.trunc_normal_(self.view_embed, std=0.02)

    @property
    def stride(self) -> int:
        return 2 ** len(self.channels)

    @property
    def descriptor_dims(self) -> tuple[int, ...]:
        """Width of each scale's global descriptor (the deepest is out_dim)."""
        return (*self.channels[:-1], self.out_dim)

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        """x (B, V, H, W) (in_ch=1) or (B, V, in_ch, H, W) -> EncoderOutput (see its fields)."""
        if x.ndim == 4 and self.in_ch == 1:
            x = x.unsqueeze(2)  # (B, V, H, W) -> (B, V, 1, H, W)
        if x.ndim != 5 or x.shape[1] != self.num_views or x.shape[2] != self.in_ch:
            raise ValueError(
                f"expected X-rays (B, {self.num_views}, H, W) or (B, {self.num_views}, {self.in_ch}, H, W), "
                f"got {tuple(x.shape)}"
            )
        B, V = x.shape[:2]
        if x.shape[-1] % self.stride or x.shape[-2] % self.stride:
            raise ValueError(f"X-ray size {tuple(x.shape[-2:])} must be divisible by the encoder stride {self.stride}")
        h = x.flatten(0, 1)  # (B, V, C, H, W) -> (B*V, C, H, W): views share the weights
        features = []
        for i, stage in enumerate(self.stages):
            h = stage(h)
            if i == 0:
                # (B*V, C0, h, w) + (B*V, C0, 1, 1): view identity from the stem on
                h = h + self.view_embed_stem.repeat(B, 1)[:, :, None, None]
            if i == len(self.stages) - 1:
                h = self.proj(h) + self.view_embed.repeat(B, 1)[:, :, None, None]
            features.append(h.unflatten(0, (B, V)))  # (B*V, C, h, w) -> (B, V, C, h, w)
        descriptors = [f.mean(dim=(-2, -1)) for f in features]  # (B, V, C_s)
        return EncoderOutput(features, descriptors)
