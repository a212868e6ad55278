"""3D CNN branch: EfficientNet's MBConv blocks with squeeze-excitation, in 3D.

MBConv (Tan & Le, "EfficientNet", arXiv 1905.11946; MobileNetV2 arXiv 1801.04381):
1x1x1 expand -> depthwise 3x3x3 -> squeeze-excitation -> 1x1x1 project, residual with
stochastic depth. The branch runs on the lifted volume at the token grid, at a fraction
of the token width (pointwise convs cost width² and dominate), and projects back, so it
adds local anatomical detail beside the ViT for few parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from xray2ct.models.blocks import drop_path
from xray2ct.models.depthwise import DepthwiseConv3d


class ConvBNAct3d(nn.Sequential):
    """Conv3d (no bias) -> BatchNorm3d -> SiLU (act optional); a depthwise k>1 conv uses
    DepthwiseConv3d (same parameters, faster backward on CPU)."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int = 1, groups: int = 1, act: bool = True
    ) -> None:
        depthwise = groups == in_ch == out_ch and kernel_size > 1
        super().__init__(
            DepthwiseConv3d(in_ch, kernel_size, bias=False) if depthwise else
            nn.Conv3d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, groups=groups, bias=False),
            nn.BatchNorm3d(out_ch),
            nn.SiLU() if act else nn.Identity(),
        )


class SqueezeExcite3d(nn.Module):
    """Channel gates in (0, 1) from the global average: x * sigmoid(W2 act(W1 mean(x)))."""

    def __init__(self, ch: int, reduced: int) -> None:
        super().__init__()
        self.reduce = nn.Conv3d(ch, reduced, 1)
        self.act = nn.SiLU()
        self.expand = nn.Conv3d(reduced, ch, 1)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, D, H, W) -> gates (B, C, 1, 1, 1) in (0, 1)."""
        return torch.sigmoid(self.expand(self.act(self.reduce(x.mean(dim=(2, 3, 4), keepdim=True)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, D, H, W) -> (B, C, D, H, W)."""
        return x * self.gate(x)


class MBConv3d(nn.Module):
    """Inverted-residual block: (B, C, D, H, W) -> (B, C, D, H, W).

    Args:
        ch: in/out channels.
        expand: hidden width = expand * ch.
        se_ratio: squeeze width = max(1, se_ratio * ch) (EfficientNet: relative to the input).
        drop_path: probability of dropping the residual branch per sample while training.
    """

    def __init__(self, ch: int, expand: int = 4, se_ratio: float = 0.25, drop_path: float = 0.0) -> None:
        super().__init__()
        hidden = ch * expand
        self.expand = ConvBNAct3d(ch, hidden, 1) if expand != 1 else nn.Identity()
        self.dw = ConvBNAct3d(hidden, hidden, 3, groups=hidden)
        self.se = SqueezeExcite3d(hidden, max(1, int(ch * se_ratio)))
        self.project = ConvBNAct3d(hidden, ch, 1, act=False)
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, D, H, W) -> (B, C, D, H, W)."""
        h = self.project(self.se(self.dw(self.expand(x))))
        return x + drop_path(h, self.drop_path, self.training)


class EfficientNet3D(nn.Module):
    """Stages of MBConv3d blocks on a volume, between a 1x1x1 stem and head.

    Args:
        in_dim: channels of the input volume.
        out_dim: channels of the output volume.
        widths: width of each stage (a 1x1x1 conv changes width between stages).
        depths: MBConv blocks per stage.
        expand: MBConv expansion ratio.
        se_ratio: squeeze-excitation ratio.
        drop_path: stochastic-depth rate of the last block, linearly from 0.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        widths: Sequence[int] = (64,),
        depths: Sequence[int] = (3,),
        expand: int = 4,
        se_ratio: float = 0.25,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if len(widths) != len(depths) or not widths or min(widths) < 1 or min(depths) < 1:
            raise ValueError(f"widths {list(widths)} and depths {list(depths)} must be equally long positive lists")
        self.stem = ConvBNAct3d(in_dim, widths[0], 1)
        n = sum(depths)
        rates = iter(drop_path * i / max(n - 1, 1) for i in range(n))
        layers: list[nn.Module] = []
        prev = widths[0]
        for width, depth in zip(widths, depths):
            if width != prev:
                layers.append(ConvBNAct3d(prev, width, 1))
            layers += [MBConv3d(width, expand, se_ratio, next(rates)) for _ in range(depth)]
            prev = width
        self.blocks = nn.Sequential(*layers)
        self.head = ConvBNAct3d(prev, out_dim, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_dim, D, H, W) -> (B, out_dim, D, H, W)."""
        return self.head(self.blocks(self.stem(x)))
