"""Self-attention over a 3D token grid: the MHSA baseline, cascaded group attention and
its grouped multi-scale variant.

Tokens are (B, N, C) with N = D*H*W of a known grid (D, H, W); every module maps
(B, N, dim) -> (B, N, dim).

- `MultiHeadSelfAttention`: the ViT baseline (fused qkv, scaled dot-product attention).
- `CascadedGroupAttention`: EfficientViT's CGA (Liu et al., "EfficientViT: Memory
  Efficient Vision Transformer with Cascaded Group Attention", arXiv 2305.07027; upstream
  github.com/microsoft/Cream/tree/main/EfficientViT), in 3D: head i sees only its own
  slice of the channels plus head i-1's output, so heads differ and the cascade adds depth.
- `GroupedMultiScaleAttention`: CGA whose heads are split into groups, group g attending
  to keys/values average-pooled by kv_pool**g per axis (queries stay at full resolution),
  so most heads attend to a few hundred coarse tokens instead of all N.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

Grid = tuple[int, int, int]
ATTENTION_KINDS = ("mhsa", "cga")
_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


def tokens_to_grid(x: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """(B, N, C) tokens -> (B, C, D, H, W) volume laid out for a fast conv/pool on x's device."""
    B, _, C = x.shape
    # (B, N, C) -> (B, D, H, W, C) -> (B, C, D, H, W); on CPU this is a free view that is a
    # dense channels_last_3d tensor, the layout under which oneDNN's depthwise Conv3d
    # backward is about twice as fast.
    y = x.reshape(B, *grid, C).permute(0, 4, 1, 2, 3)
    if x.device.type != "cpu":
        # cuDNN's channels_last_3d depthwise Conv3d is up to 60x slower in bf16: go
        # channels-first off the CPU.
        y = y.contiguous()
    return y


# cuDNN's fused attention is left out on CUDA: its bf16 backward failed ("mha_graph.execute(...)
# .is_good()", then illegal memory accesses) for the grouped multi-scale heads at 64³, batch 4,
# on an H100 with torch 2.11; the flash and memory-efficient kernels run those shapes.
_CUDA_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """F.scaled_dot_product_attention, (B, h, N, d) q and (B, h, M, d) k, v -> (B, h, N, d_v)."""
    if q.is_cuda:
        with sdpa_kernel(_CUDA_SDPA_BACKENDS):
            return F.scaled_dot_product_attention(q, k, v, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


def grid_to_tokens(y: torch.Tensor) -> torch.Tensor:
    """(B, C, D, H, W) volume -> (B, N, C) tokens (a view when y is channels_last_3d)."""
    B, C = y.shape[:2]
    # (B, C, D, H, W) -> (B, D, H, W, C) -> (B, N, C)
    return y.permute(0, 2, 3, 4, 1).reshape(B, -1, C)


def check_tokens(x: torch.Tensor, dim: int, grid: Sequence[int] | None) -> None:
    """Raise a ValueError naming the sizes when x is not (B, prod(grid), dim)."""
    if x.ndim != 3 or x.shape[-1] != dim:
        raise ValueError(f"expected tokens (B, N, {dim}), got {tuple(x.shape)}")
    if grid is not None and x.shape[1] != math.prod(grid):
        raise ValueError(
            f"expected N = {'*'.join(map(str, grid))} = {math.prod(grid)} tokens for grid "
            f"{tuple(grid)}, got N = {x.shape[1]}"
        )


def mhsa_param_count(dim: int, qkv_bias: bool = True) -> int:
    """Parameters of `MultiHeadSelfAttention`: qkv (3 dim^2) + proj (dim^2) + biases."""
    return 4 * dim * dim + (3 * dim if qkv_bias else 0) + dim


def cga_param_count(dim: int, num_heads: int, key_dim: int = 16, kernel_size: int = 3) -> int:
    """Parameters of `CascadedGroupAttention` (and of the multi-scale variant: pooling is free)."""
    d_v = dim // num_heads
    c_qkv = 2 * key_dim + d_v
    per_head = (
        d_v * c_qkv  # qkv Linear, no bias (the BatchNorm after it has one)
        + 2 * c_qkv  # its BatchNorm affine
        + key_dim * kernel_size**3  # depthwise Conv3d on Q, no bias
        + 2 * key_dim  # its BatchNorm affine
    )
    return num_heads * per_head + dim * dim + dim  # + output projection with bias


# Above this many scores per batch item (N * M) a head goes through SDPA's fused kernels,
# whose memory does not grow with N * M; below it, the explicit softmax(q k^T) v takes
# fewer operators (no padding to equal head widths, no 4D views), and at these sizes
# the scores are small (2^22 floats = 16 MiB per batch item).
EXPLICIT_ATTENTION_MAX_SCORES = 2**22


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """One head, softmax(q k^T * scale) v: q (B,N,dk), k (B,M,dk), v (B,M,dv) -> (B,N,dv)."""
    # M == 1 (K/V pooled to one token) stays on SDPA as before: softmax over one key is 1, so
    # the output is v whatever q is and the head's query branch (q_dw, q_norm) has no effect;
    # the explicit form would make its gradient exactly 0 where SDPA's rounding leaves it
    # tiny, and that changes what "every parameter gets a gradient" reports.
    if 1 < k.shape[1] and q.shape[1] * k.shape[1] <= EXPLICIT_ATTENTION_MAX_SCORES:
        return torch.bmm((torch.bmm(q, k.transpose(1, 2)) * scale).softmax(-1), v)  # (B, N, M) scores
    d_k, d_v = q.shape[-1], v.shape[-1]
    # PyTorch's CPU flash kernel needs equal head dims; with d_k != d_v SDPA drops to the
    # math path (2.6x slower fwd+bwd at N=4096, measured). Zero-padding q and k leaves q.k
    # unchanged, so pad the narrower side and keep the fast kernel.
    if d_k < d_v:
        q, k = F.pad(q, (0, d_v - d_k)), F.pad(k, (0, d_v - d_k))
    elif d_v < d_k:
        v = F.pad(v, (0, d_k - d_v))
    # (B, L, d) -> (B, 1, L, d): SDPA's one-head layout; all three are dense here.
    out = sdpa(q.unsqueeze(1), k.unsqueeze(1), v.contiguous().unsqueeze(1), scale=scale)
    return out.squeeze(1)[..., :d_v]  # (B, 1, N, max(dk, dv)) -> (B, N, dv)


class MultiHeadSelfAttention(nn.Module):
    """ViT multi-head self-attention, the baseline: every head sees all channels.

    Args:
        dim: token width; must be divisible by num_heads.
        num_heads: number of heads, each of width dim // num_heads.
        grid: token grid (D, H, W); only used to check N (attention is grid-agnostic).
        qkv_bias: bias in the fused qkv projection.
    """

    def __init__(
        self, dim: int, num_heads: int, grid: Sequence[int] | None = None, qkv_bias: bool = True
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.dim, self.num_heads = dim, num_heads
        self.grid = tuple(grid) if grid is not None else None
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, dim) -> (B, N, dim)."""
        check_tokens(x, self.dim, self.grid)
        B, N, C = x.shape
        h = self.num_heads
        # (B, N, 3C) -> (B, N, 3, h, C/h) -> (3, B, h, N, C/h)
        qkv = self.qkv(x).view(B, N, 3, h, C // h).permute(2, 0, 3, 1, 4)
        # dense copies: SDPA's CPU fast path is much slower on these strided views
        q, k, v = (t.contiguous() for t in qkv.unbind(0))
        y = sdpa(q, k, v)  # (B, h, N, C/h), scale (C/h)^-0.5
        y = y.transpose(1, 2).reshape(B, N, C)  # (B, h, N, C/h) -> (B, N, h, C/h) -> (B, N, C)
        return self.proj(y)


class CascadedHead(nn.Module):
    """One CGA head: qkv projection + BN, depthwise Conv3d + BN on Q, attention.

    Args:
        d_v: input and value width (dim // num_heads).
        key_dim: query/key width.
        kernel_size: depthwise kernel on Q, over the token grid.
        kv_pool: average-pool factor of K/V per axis; (1, 1, 1) = plain CGA.
    """

    def __init__(
        self, d_v: int, key_dim: int, kernel_size: int = 3, kv_pool: Sequence[int] = (1, 1, 1)
    ) -> None:
        super().__init__()
        self.d_v, self.key_dim = d_v, key_dim
        self.kv_pool = tuple(kv_pool)
        self.scale = key_dim**-0.5
        c = 2 * key_dim + d_v
        # Linear + BN as EfficientViT's Conv2d_BN: the BN keeps the cascaded input
        # (own channels + previous head's output), whose scale drifts along the cascade, in range.
        self.qkv = nn.Linear(d_v, c, bias=False)
        self.qkv_norm = nn.BatchNorm1d(c)
        # Depthwise conv on Q adds local (3x3x3 neighbourhood) information to the queries.
        self.q_dw = nn.Conv3d(
            key_dim, key_dim, kernel_size, padding=kernel_size // 2, groups=key_dim, bias=False
        )
        self.q_norm = nn.BatchNorm3d(key_dim)

    def forward(self, x: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        """(B, N, d_v) -> (B, N, d_v)."""
        # The heads run one after another (the cascade), so every operator here is paid
        # num_heads times per block: the fewest dispatches that keep the math (one
        # split instead of slices, no copies the kernels would make anyway).
        B, N, _ = x.shape
        kd = self.key_dim
        # BN over channels on (B*N, c): a free view of (B, N, c), no permute needed.
        qkv = batch_norm(F.linear(x.reshape(B * N, -1), self.qkv.weight), self.qkv_norm)  # (B*N, 2kd+d_v)
        q, kv = qkv.view(B, N, -1).split([kd, kd + self.d_v], dim=-1)  # (B, N, kd), (B, N, kd+d_v)
        q = grid_to_tokens(batch_norm(self.q_dw(tokens_to_grid(q, grid)), self.q_norm))  # (B, N, kd)
        if self.kv_pool != (1, 1, 1):
            # pool K and V in one call; ceil_mode keeps a partial last window, whose mean
            # PyTorch takes over the voxels actually inside the grid.
            kv = tokens_to_grid(kv, grid)  # (B, kd+d_v, D, H, W)
            kv = F.avg_pool3d(kv, self.kv_pool, self.kv_pool, ceil_mode=True)
            kv = grid_to_tokens(kv)  # (B, M, kd+d_v), M = prod(ceil(grid / kv_pool))
        k, v = kv.split([kd, self.d_v], dim=-1)
        return _attend(q, k, v, self.scale)


def _plain_batch_norm(bn: nn.Module) -> bool:
    """A torch BatchNorm{1,2,3}d with a fixed momentum and running stats. Anything else
    keeps its own forward: a cumulative average (momentum None) needs the counter first,
    and a SyncBatchNorm / GlobalBatchNorm (DDP) reduces its statistics over the ranks."""
    return (type(bn) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d) and bn.momentum is not None
            and bn.track_running_stats)


def batch_norm(x: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """bn(x) for (B, C, ...) x in one dispatch (F.batch_norm goes through three wrappers).

    The module's own num_batches_tracked is not counted here: with a fixed momentum it is
    unused, and the cascaded attention advances all its heads' counters in one call."""
    if not _plain_batch_norm(bn):
        return bn(x)
    training = bn.training
    return torch.native_batch_norm(
        x, bn.weight, bn.bias, bn.running_mean, bn.running_var, training, bn.momentum, bn.eps
    )[0]


class CascadedGroupAttention(nn.Module):
    """EfficientViT cascaded group attention on a 3D token grid.

    The input channels are split into num_heads chunks; head i attends over
    (chunk i + output of head i-1), with queries/keys of width key_dim and values of
    width dim // num_heads. The concatenated head outputs go through an activation and a
    Linear back to dim.

    Args:
        dim: token width; must be divisible by num_heads.
        num_heads: number of cascaded heads.
        grid: token grid (D, H, W), needed by the depthwise conv on Q.
        key_dim: query/key width per head; attention scale is key_dim ** -0.5.
        kernel_size: depthwise kernel on Q.
        act: activation before the output projection, "relu" (EfficientViT) or "gelu".
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid: Sequence[int],
        key_dim: int = 16,
        kernel_size: int = 3,
        act: str = "relu",
    ) -> None:
        super().__init__()
        self._init(dim, num_heads, grid, key_dim, kernel_size, act, [(1, 1, 1)] * num_heads)

    def _init(
        self,
        dim: int,
        num_heads: int,
        grid: Sequence[int],
        key_dim: int,
        kernel_size: int,
        act: str,
        kv_pools: Sequence[Sequence[int]],
    ) -> None:
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        if len(grid) != 3 or min(grid) < 1:
            raise ValueError(f"grid must be three positive sizes (D, H, W), got {tuple(grid)}")
        if act not in _ACTIVATIONS:
            raise ValueError(f"act={act!r} is not one of {sorted(_ACTIVATIONS)}")
        self.dim, self.num_heads, self.key_dim = dim, num_heads, key_dim
        self.grid: Grid = tuple(int(g) for g in grid)  # type: ignore[assignment]
        d_v = dim // num_heads
        self.heads = nn.ModuleList(
            CascadedHead(d_v, key_dim, kernel_size, pool) for pool in kv_pools
        )
        self.act = _ACTIVATIONS[act]()
        self.proj = nn.Linear(num_heads * d_v, dim)

    def _bn_counters(self) -> list[torch.Tensor]:
        """num_batches_tracked of every head's BatchNorms (see `batch_norm`)."""
        return [bn.num_batches_tracked for h in self.heads for bn in (h.qkv_norm, h.q_norm)
                if _plain_batch_norm(bn)]

    def forward(
        self, x: torch.Tensor, return_heads: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, N, dim) -> (B, N, dim); with return_heads also the h per-head (B, N, d_v) outputs."""
        check_tokens(x, self.dim, self.grid)
        counters = self._bn_counters() if self.training else []
        if counters:
            # what each BatchNorm module would do on its own call, for all 2h of them at once
            torch._foreach_add_(counters, 1)
        chunks = x.chunk(self.num_heads, dim=-1)  # h x (B, N, d_v), strided views
        outs: list[torch.Tensor] = []
        for chunk, head in zip(chunks, self.heads):
            # the cascade: head i refines head i-1's output with its own channels
            feat = chunk if not outs else chunk + outs[-1]
            outs.append(head(feat, self.grid))
        y = self.proj(self.act(torch.cat(outs, dim=-1)))  # h x (B, N, d_v) -> (B, N, dim)
        return (y, outs) if return_heads else y


def multiscale_pools(
    num_heads: int, grid: Sequence[int], kv_pool: int = 2, num_groups: int | None = None
) -> list[tuple[int, int, int]]:
    """Per-head K/V pool factors: heads split into num_groups contiguous groups, group g
    pooled by kv_pool**g per axis, capped at the axis size (pooled grid >= 1 per axis)."""
    if kv_pool < 1:
        raise ValueError(f"kv_pool must be >= 1, got {kv_pool}")
    groups = min(num_heads, 4) if num_groups is None else num_groups
    if not 1 <= groups <= num_heads:
        raise ValueError(f"num_groups={groups} must be in 1..num_heads={num_heads}")
    pools = []
    for i in range(num_heads):
        factor = kv_pool ** (i * groups // num_heads)  # group of head i
        pools.append(tuple(min(factor, int(s)) for s in grid))
    return pools  # type: ignore[return-value]


class GroupedMultiScaleAttention(CascadedGroupAttention):
    """Cascaded group attention whose head groups attend to K/V pooled at growing scales.

    Heads are split into num_groups groups (default min(num_heads, 4)); group g's keys
    and values are average-pooled over the token grid by kv_pool**g per axis, while its
    queries stay at full resolution. With 8 heads, 4 groups, kv_pool 2 on a 16^3 grid
    the heads attend to 4096, 4096, 512, 512, 64, 64, 8, 8 tokens. Same parameters as
    CGA (pooling is parameter-free), so the two load each other's state dicts.

    Args:
        dim, num_heads, grid, key_dim, kernel_size, act: as `CascadedGroupAttention`.
        kv_pool: pool factor between consecutive groups.
        num_groups: number of head groups (scales).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid: Sequence[int],
        key_dim: int = 16,
        kv_pool: int = 2,
        num_groups: int | None = None,
        kernel_size: int = 3,
        act: str = "relu",
    ) -> None:
        nn.Module.__init__(self)
        pools = multiscale_pools(num_heads, grid, kv_pool, num_groups)
        self._init(dim, num_heads, grid, key_dim, kernel_size, act, pools)


def build_attention(
    kind: str,
    dim: int,
    num_heads: int,
    grid: Sequence[int],
    key_dim: int = 16,
    multiscale: bool = False,
    kv_pool: int = 2,
) -> nn.Module:
    """Attention by name: "mhsa" (baseline) or "cga"; multiscale=True gives the grouped
    multi-scale CGA."""
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"unknown attention {kind!r}; valid: {', '.join(ATTENTION_KINDS)}")
    if kind == "mhsa":
        if multiscale:
            warnings.warn("multiscale K/V pooling applies to 'cga' only; ignored for 'mhsa'")
        return MultiHeadSelfAttention(dim, num_heads, grid)
    if multiscale:
        return GroupedMultiScaleAttention(dim, num_heads, grid, key_dim=key_dim, kv_pool=kv_pool)
    return CascadedGroupAttention(dim, num_heads, grid, key_dim=key_dim)
