"""3D decoder: token-grid features -> CT volume in [0, 1] and its log-variance.

Each stage refines with a residual depthwise 3x3x3 conv and mixes channels with a
1x1x1 conv at its input resolution, upsamples x2 trilinearly, then optionally applies
the stage's adaptive modulation from the X-ray descriptors (hierarchical conditioning).
A stage can also receive a geometry-aware skip (`lifting.LiftedSkip`), added after upsampling.
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


class UpStage(nn.Module):
    """(B, C_in, r, r, r) -> (B, C_out, 2r, 2r, 2r): residual DW 3x3x3 and 1x1x1 conv at r, x2 trilinear."""

    def __init__(self, in_ch: int, out_ch: int, cond_dim: int | None = None) -> None:
        super().__init__()
        self.refine = ConvBNAct3d(in_ch, in_ch, 3, groups=in_ch)
        self.reduce = ConvBNAct3d(in_ch, out_ch, 1)
        self.modulation = AdaptiveModulation(cond_dim, out_ch) if cond_dim else None

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor | None = None, skip: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, C_in, r, r, r), cond (B, cond_dim) | None, skip (B, C_out, 2r, 2r, 2r) | None
        -> (B, C_out, 2r, 2r, 2r)."""
        x = self.reduce(x + self.refine(x))
        x = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)
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
    """

    def __init__(self, in_dim: int, channels: Sequence[int] = (128, 64), cond_dim: int | None = None) -> None:
        super().__init__()
        widths = (in_dim, *channels)
        self.stages = nn.ModuleList(UpStage(a, b, cond_dim) for a, b in zip(widths[:-1], widths[1:]))
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
