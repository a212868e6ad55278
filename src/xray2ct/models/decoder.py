"""3D decoder: token-grid features -> CT volume in [0, 1] and its log-variance.

Each stage refines with a residual depthwise 3x3x3 conv and mixes channels with a
1x1x1 conv at its input resolution, upsamples x2 trilinearly, then optionally applies
the stage's adaptive modulation from the X-ray descriptors (hierarchical conditioning).
A stage can also receive a geometry-aware skip (`lifting.LiftedSkip`), added after upsampling.

Sub-voxel detail (optional, `subvoxel=True`): trilinear upsampling makes each fine voxel a
blend of its coarse neighbours, so a structure one output voxel thick (a rib at 32³ is
one or two voxels) cannot be placed by the stage. A zero-initialised 1x1x1 conv to 8x the
channels, rearranged into the 2x2x2 children of every voxel (voxel shuffle, the 3D
ESPCN "pixel shuffle", Shi et al. 2016), adds a learned value per child on top of the
trilinear result: at init the stage is exactly the trilinear one.
All spatial convs run below the output resolution and the full-resolution part is
pointwise (an MLP then the heads): PyTorch's CPU Conv3d backward at 64³ takes seconds
even depthwise (measured), more than the whole transformer.
Heads: volume = sigmoid(1x1x1 conv), in [0, 1]; log_var = 1x1x1 conv starting at
exactly 0 (unit variance) so the uncertainty loss starts neutral (Kendall & Gal 2017).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from xray2ct.models.cnn3d import ConvBNAct3d
from xray2ct.models.conditioning import AdaptiveModulation


def voxel_shuffle(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """(B, C*f³, r, r, r) -> (B, C, f*r, f*r, f*r): channel block (i, j, k) of each voxel
    becomes its child at offset (i, j, k), as torch.nn.PixelShuffle does in 2D."""
    b, c8, d, h, w = x.shape
    c, f = c8 // factor ** 3, factor
    x = x.view(b, c, f, f, f, d, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)  # (B, C, d, f, h, f, w, f)
    return x.reshape(b, c, d * f, h * f, w * f)


class UpStage(nn.Module):
    """(B, C_in, r, r, r) -> (B, C_out, 2r, 2r, 2r): residual DW 3x3x3 and 1x1x1 conv at r, x2
    trilinear, plus (subvoxel) a learned value for each of the 8 children of every voxel."""

    def __init__(self, in_ch: int, out_ch: int, cond_dim: int | None = None, subvoxel: bool = False) -> None:
        super().__init__()
        self.refine = ConvBNAct3d(in_ch, in_ch, 3, groups=in_ch)
        self.reduce = ConvBNAct3d(in_ch, out_ch, 1)
        self.detail = nn.Conv3d(out_ch, out_ch * 8, 1) if subvoxel else None
        if self.detail is not None:  # exactly the trilinear stage at init; the weight still learns
            nn.init.zeros_(self.detail.weight)
            nn.init.zeros_(self.detail.bias)
        self.modulation = AdaptiveModulation(cond_dim, out_ch) if cond_dim else None

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor | None = None, skip: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, C_in, r, r, r), cond (B, cond_dim) | None, skip (B, C_out, 2r, 2r, 2r) | None
        -> (B, C_out, 2r, 2r, 2r)."""
        x = self.reduce(x + self.refine(x))  # (B, C_out, r, r, r)
        up = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)
        x = up if self.detail is None else up + voxel_shuffle(self.detail(x))  # (B, C_out, 2r, 2r, 2r)
        if skip is not None:
            x = x + skip
        if self.modulation is not None and cond is not None:
            x = self.modulation(x, cond)
        return x


class VolumeDecoder(nn.Module):
    """Upsample x2 per entry of channels, a residual pointwise MLP, then the volume and log-variance heads.

    Args:
        in_dim: channels of the token-grid volume.
        channels: width of each x2 stage (len(channels) = log2(N / G)).
        cond_dim: width of the conditioning vector; None disables modulation.
        subvoxel: every stage adds learned sub-voxel detail to its trilinear upsampling.
    """

    def __init__(self, in_dim: int, channels: Sequence[int] = (128, 64), cond_dim: int | None = None,
                 subvoxel: bool = False) -> None:
        super().__init__()
        widths = (in_dim, *channels)
        self.stages = nn.ModuleList(UpStage(a, b, cond_dim, subvoxel) for a, b in zip(widths[:-1], widths[1:]))
        self.mlp = ConvBNAct3d(widths[-1], widths[-1], 1)  # full-resolution pointwise sharpening
        self.volume_head = nn.Conv3d(widths[-1], 1, 1)
        self.log_var_head = nn.Conv3d(widths[-1], 1, 1)
        # exactly 0 at init: unit variance everywhere; the weight still gets gradients
        nn.init.zeros_(self.log_var_head.weight)
        nn.init.zeros_(self.log_var_head.bias)

    @property
    def upsample(self) -> int:
        return 2 ** len(self.stages)

    @property
    def stage_channels(self) -> tuple[int, ...]:
        """Output width of each x2 stage (what a skip into that stage must have)."""
        return tuple(stage.reduce[0].out_channels for stage in self.stages)

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor | None = None, skips: Sequence[torch.Tensor | None] = ()
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, in_dim, G, G, G), cond (B, cond_dim) | None, skips: per stage (B, C_s, 2^(s+1) G, ...)
        or None, added after the stage's upsampling -> volume, log_var, each (B, 1, N, N, N)."""
        skips = list(skips) + [None] * (len(self.stages) - len(skips))
        for stage, skip in zip(self.stages, skips):
            x = stage(x, cond, skip)
        x = x + self.mlp(x)
        return torch.sigmoid(self.volume_head(x)), self.log_var_head(x)
