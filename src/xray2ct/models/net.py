"""The reconstruction network, assembled from the config.

    X-rays (B, 2, S, S)
      -> XRayEncoder (shared 2D CNN, view embedding)      multi-scale maps + descriptors
      -> GeometryLifting + LearnableDepthPriors + ViewFusion    (B, dim, G, G, G)
      -> TransformerStack on G³ tokens  ||  EfficientNet3D branch (optional)
      -> CrossAttentionFusion (only with the CNN branch)
      -> VolumeDecoder (x2 per stage to N³)                volume, log_var (B, 1, N, N, N)
           + learned sub-voxel detail per stage (optional, voxel shuffle)
           + LiftedSkip per stage (optional): the encoder map closest to the stage's
             resolution, lifted by geometry, added after the stage's upsampling

Hierarchical adaptive conditioning (optional): the global descriptors of every encoder
scale of both views -> MLP -> one vector that modulates every transformer block and
decoder stage through their own near-zero-initialised `AdaptiveModulation`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from xray2ct.geometry import Geometry
from xray2ct.models.attention import grid_to_tokens, tokens_to_grid
from xray2ct.models.blocks import TransformerStack
from xray2ct.models.cnn3d import EfficientNet3D
from xray2ct.models.decoder import VolumeDecoder
from xray2ct.models.encoder import XRayEncoder
from xray2ct.models.fusion import CrossAttentionFusion
from xray2ct.models.lifting import GeometryLifting, LearnableDepthPriors, LiftedSkip, ViewFusion, nearest_scale

if TYPE_CHECKING:  # the models package imports without the config module
    from xray2ct.config import Config, ModelConfig


def sincos_3d(grid: int, dim: int) -> torch.Tensor:
    """Fixed 3D sine-cosine position embedding (MAE's 2D one, one third of the channels
    per axis, the rest zero): (G³, dim) in (d, h, w) token order."""
    per_axis = (dim // 3) // 2 * 2  # even number of channels per axis
    freqs = 1.0 / 10000 ** (torch.arange(per_axis // 2, dtype=torch.float64) / max(per_axis // 2, 1))
    pos = torch.arange(grid, dtype=torch.float64)
    axis = torch.cat([torch.sin(pos[:, None] * freqs), torch.cos(pos[:, None] * freqs)], dim=1)  # (G, per_axis)
    d, h, w = torch.meshgrid(*(torch.arange(grid),) * 3, indexing="ij")
    emb = torch.cat([axis[d.flatten()], axis[h.flatten()], axis[w.flatten()]], dim=1)  # (G³, 3*per_axis)
    return nn.functional.pad(emb, (0, dim - emb.shape[1])).float()


class DescriptorConditioning(nn.Module):
    """Global descriptors of several encoder scales and all views -> one conditioning vector.

    Args:
        dims: descriptor width of each scale.
        num_views: V.
        cond_dim: output width.
    """

    def __init__(self, dims: Sequence[int], num_views: int, cond_dim: int) -> None:
        super().__init__()
        width = num_views * sum(dims)
        self.mlp = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, cond_dim), nn.GELU(), nn.Linear(cond_dim, cond_dim)
        )

    def forward(self, descriptors: Sequence[torch.Tensor]) -> torch.Tensor:
        """list of (B, V, C_s) -> (B, cond_dim)."""
        return self.mlp(torch.cat([d.flatten(1) for d in descriptors], dim=1))  # (B, V*sum C_s)


class XRay2CT(nn.Module):
    """Two X-rays -> CT volume in [0, 1] and per-voxel log-variance.

    Args:
        config: the `model` section (xray2ct.config.ModelConfig).
        geometry: full-resolution geometry (N³ volume, S² detector) shared with the projector.
    """

    def __init__(self, config: ModelConfig, geometry: Geometry) -> None:
        super().__init__()
        c = config
        n, s, grid, dim = c.volume_size, c.xray_img_size, c.grid, c.voxel_dim
        if tuple(geometry.volume_shape) != (n, n, n):
            raise ValueError(f"geometry volume {geometry.volume_shape} does not match model.volume_size {n}")
        if 2 ** len(c.decoder_channels) * grid != n:
            raise ValueError(
                f"decoder_channels {list(c.decoder_channels)} upsample the {grid}³ token grid to "
                f"{2 ** len(c.decoder_channels) * grid}³, not volume_size {n}³"
            )
        self.volume_size, self.xray_size, self.grid = n, s, grid
        views = len(geometry.views)
        grid3 = (grid, grid, grid)
        self.encoder = XRayEncoder(1, c.encoder_channels, c.xray_feature_dim, views)
        self.lifting = GeometryLifting(geometry, grid)
        self.priors = LearnableDepthPriors(
            views, c.xray_feature_dim, c.xray_feature_dim, learnable=c.use_learnable_priors
        )
        self.view_fusion = ViewFusion(views, c.xray_feature_dim, dim)
        self.register_buffer("pos_embed", sincos_3d(grid, dim), persistent=False)  # (G³, dim)
        cond_dim = max(32, dim // 4) if c.use_conditioning else None
        self.conditioning = (
            DescriptorConditioning(self.encoder.descriptor_dims, views, cond_dim) if cond_dim else None
        )
        self.transformer = TransformerStack(
            dim, c.num_heads, grid3, c.num_attn_blocks, c.num_ffn_blocks, layout=c.layout,
            attention=c.attention, multiscale=c.use_multiscale, key_dim=c.key_dim, kv_pool=c.kv_pool,
            ffn_ratio=c.ffn_ratio, drop_path=c.drop_path, cond_dim=cond_dim,
        )
        if c.use_cnn_branch:
            # a quarter of the token width: pointwise convs cost width², the branch is for local detail
            self.cnn = EfficientNet3D(dim, dim, widths=(max(16, dim // 4),), depths=(3,), expand=c.cnn_expand,
                                      drop_path=c.drop_path)
            self.fusion = CrossAttentionFusion(dim, c.num_heads, c.key_dim, grid3, c.kv_pool)
        else:
            self.cnn, self.fusion = None, None
        self.decoder = VolumeDecoder(dim, c.decoder_channels, cond_dim, subvoxel=c.subvoxel_detail)
        self.skips, self.skip_sources = None, ()
        if c.lifted_skips:
            # each decoder stage takes the encoder map whose side is closest to its own
            sides = [s // 2 ** (i + 1) for i in range(len(c.encoder_channels))]
            widths = self.encoder.descriptor_dims  # the deepest map is projected to xray_feature_dim
            stage_sides = [grid * 2 ** (i + 1) for i in range(len(c.decoder_channels))]
            self.skip_sources = tuple(nearest_scale(sides, r) for r in stage_sides)
            self.skips = nn.ModuleList(
                LiftedSkip(geometry, r, widths[src], ch)
                for r, src, ch in zip(stage_sides, self.skip_sources, self.decoder.stage_channels)
            )

    def liftings(self) -> list[GeometryLifting]:
        """Every module whose sampling positions come from the geometry."""
        return [self.lifting] + ([] if self.skips is None else [skip.lifting for skip in self.skips])

    @property
    def geometry(self) -> Geometry:
        """The geometry the lifting samples with now."""
        return self.lifting.geometry

    def set_geometry(self, geometry: Geometry) -> None:
        """Lift with another acquisition (same volume grid and detector size), e.g. a study's
        own source/detector distances and pitch: `Geometry.project_points` under `geometry`
        gives every lifting's sampling positions. See `using_geometry` for a scoped change."""
        if geometry.det_shape != (self.xray_size, self.xray_size):
            raise ValueError(f"geometry detector {geometry.det_shape} is not the model's "
                             f"{self.xray_size}x{self.xray_size} X-ray size")
        for lifting in self.liftings():
            lifting.set_geometry(geometry)

    def components(self) -> dict[str, nn.Module]:
        """Named sub-modules for parameter accounting (absent ones left out)."""
        parts = {
            "encoder": self.encoder,
            "lifting": nn.ModuleList([self.lifting, self.priors, self.view_fusion]),
            "conditioning": self.conditioning,
            "transformer": self.transformer,
            "cnn_branch": self.cnn,
            "fusion": self.fusion,
            "decoder": self.decoder,
            "skips": self.skips,
        }
        return {k: v for k, v in parts.items() if v is not None}

    def forward(self, xrays: torch.Tensor, geometry: Sequence[Geometry] | None = None) -> dict:
        """xrays (B, 2, S, S) -> {"volume" (B, 1, N, N, N) in [0, 1], "log_var" (B, 1, N, N, N),
        "priors": dict (see LearnableDepthPriors.forward)}.

        geometry: one Geometry per sample (each film's own acquisition, e.g. views ("ap", "lat")),
        or None: the model's own geometry (`set_geometry`)."""
        views, s = len(self.lifting.views), self.xray_size
        if xrays.ndim != 4 or xrays.shape[1] != views or tuple(xrays.shape[-2:]) != (s, s):
            raise ValueError(
                f"expected X-rays (B, {views}, {s}, {s}) ({'/'.join(self.lifting.views)} views, "
                f"model.xray_img_size {s}), got {tuple(xrays.shape)}"
            )
        if geometry is not None:
            geometry = list(geometry)
            if len(geometry) != xrays.shape[0]:
                raise ValueError(f"{len(geometry)} geometries for a batch of {xrays.shape[0]} X-ray pairs")
            for g in geometry:
                if g.det_shape != (s, s):
                    raise ValueError(f"geometry detector {g.det_shape} is not the model's {s}x{s} X-ray size")
        enc = self.encoder(xrays)
        lifted = self.lifting(enc.features[-1], geometry)  # (B, V, C, G, G, G)
        lifted, priors = self.priors(lifted, self.lifting.depth, enc.descriptors[-1])
        volume = self.view_fusion(lifted)  # (B, dim, G, G, G)
        cond = self.conditioning(enc.descriptors) if self.conditioning is not None else None
        tokens = grid_to_tokens(volume) + self.pos_embed.to(volume.dtype)  # (B, G³, dim)
        tokens = self.transformer(tokens, cond)
        if self.cnn is not None:
            tokens = self.fusion(tokens, grid_to_tokens(self.cnn(volume)))
        grid = tokens_to_grid(tokens, (self.grid,) * 3)  # (B, G³, dim) -> (B, dim, G, G, G)
        skips = [] if self.skips is None else [
            skip(enc.features[src], geometry) for skip, src in zip(self.skips, self.skip_sources)
        ]  # per decoder stage (B, C_s, r, r, r)
        out, log_var = self.decoder(grid, cond, skips)
        return {"volume": out, "log_var": log_var, "priors": priors}


@contextlib.contextmanager
def using_geometry(model: XRay2CT, geometry: Geometry | None):
    """Run `model` with `geometry` inside the block and restore its own afterwards (a
    served model is shared between requests). None: leave the model as it is."""
    if geometry is None:
        yield model
        return
    previous = model.geometry
    model.set_geometry(geometry)
    try:
        yield model
    finally:
        model.set_geometry(previous)


def build_model(config: Config) -> XRay2CT:
    """The network for a full `xray2ct.config.Config` (its model and geometry sections)."""
    m = config.model
    geometry = config.geometry.build(volume_size=m.volume_size, det_size=m.xray_img_size)
    return XRay2CT(m, geometry)
