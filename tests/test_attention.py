"""Attention modules on a 3D token grid: contracts, references, cascade, parameter counts."""

import math

import pytest
import torch
import torch.nn.functional as F

from xray2ct.models.attention import (
    CascadedGroupAttention,
    GroupedMultiScaleAttention,
    MultiHeadSelfAttention,
    build_attention,
    cga_param_count,
    mhsa_param_count,
    multiscale_pools,
)



@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: with 2 threads on a loaded machine every op waits on a thread barrier
    (60 ms per op measured); one thread runs these tests ~100x faster."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


KINDS = ("mhsa", "cga", "multiscale")
GRIDS = ((4, 4, 4), (2, 3, 4))


def make(kind: str, dim: int = 32, heads: int = 4, grid=(4, 4, 4), key_dim: int = 8):
    if kind == "multiscale":
        return build_attention("cga", dim, heads, grid, key_dim=key_dim, multiscale=True)
    return build_attention(kind, dim, heads, grid, key_dim=key_dim)


def randomize_bn(module: torch.nn.Module) -> None:
    """Give every BatchNorm non-trivial running stats and affine so eval-mode tests see them."""
    g = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("key_dim", (8, 16))  # key_dim == d_v and key_dim > d_v (padding of v)
def test_shape_finite_and_every_parameter_gets_gradient(kind, grid, key_dim):
    torch.manual_seed(0)
    m = make(kind, grid=grid, key_dim=key_dim)
    x = torch.randn(2, math.prod(grid), 32)
    y = m(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {name}"


@pytest.mark.parametrize("kind", KINDS)
def test_float64(kind):
    torch.manual_seed(0)
    m = make(kind, dim=64, key_dim=8).double()  # d_v = 16 > key_dim: q/k padding path
    x = torch.randn(2, 64, 64, dtype=torch.float64, requires_grad=True)
    y = m(x)
    assert y.dtype == torch.float64 and torch.isfinite(y).all()
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_autocast_close_to_fp32(kind):
    torch.manual_seed(0)
    m = make(kind, dim=64, key_dim=8).eval()
    randomize_bn(m)
    x = torch.randn(2, 64, 64, requires_grad=True)
    ref = m(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert y.shape == x.shape and torch.isfinite(y.float()).all()
    # bf16 has ~3 significant digits; a broken cast path gives O(1) errors
    assert (y.float() - ref).abs().max() < 0.05 * ref.abs().max() + 0.02
    y.float().sum().backward()
    assert torch.isfinite(x.grad).all()


def test_mhsa_matches_explicit_softmax_reference():
    torch.manual_seed(0)
    dim, heads, grid = 32, 4, (2, 3, 4)
    m = MultiHeadSelfAttention(dim, heads, grid)
    x = torch.randn(3, 24, dim)
    B, N, C = x.shape
    d = C // heads
    q, k, v = (m.qkv(x)).split(C, dim=-1)
    ref = torch.empty_like(x)
    for h in range(heads):
        s = slice(h * d, (h + 1) * d)
        attn = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(d), dim=-1)
        ref[..., s] = attn @ v[..., s]
    ref = m.proj(ref)
    torch.testing.assert_close(m(x), ref, atol=1e-5, rtol=1e-5)


def reference_cga(m: CascadedGroupAttention, x: torch.Tensor) -> torch.Tensor:
    """CGA in eval mode, written the naive way: channels-first conv, explicit pooling/softmax."""
    B, N, C = x.shape
    D, H, W = m.grid
    chunks = x.split(C // m.num_heads, dim=-1)
    outs = []
    for i, head in enumerate(m.heads):
        feat = chunks[i] + (outs[-1] if outs else 0)
        qkv = bn_eval(feat @ head.qkv.weight.T, head.qkv_norm)  # BN over the last axis
        kd = m.key_dim
        q, k, v = qkv[..., :kd], qkv[..., kd : 2 * kd], qkv[..., 2 * kd :]
        qg = q.transpose(1, 2).reshape(B, kd, D, H, W)
        qg = F.conv3d(qg, head.q_dw.weight, padding=1, groups=kd)
        qg = bn_eval(qg.movedim(1, -1), head.q_norm).movedim(-1, 1)
        q = qg.reshape(B, kd, N).transpose(1, 2)
        k, v = (pool_reference(t, (D, H, W), head.kv_pool) for t in (k, v))
        attn = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(kd), dim=-1)
        outs.append(attn @ v)
    return m.proj(m.act(torch.cat(outs, dim=-1)))


def bn_eval(t: torch.Tensor, bn) -> torch.Tensor:
    """Eval-mode BatchNorm over the last axis, from its formula."""
    return (t - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias


def pool_reference(t: torch.Tensor, grid, pool) -> torch.Tensor:
    """Mean over each pool window (the last one possibly partial), by explicit loops."""
    B, _, C = t.shape
    g = t.reshape(B, *grid, C)
    cells = []
    for a in range(0, grid[0], pool[0]):
        for b in range(0, grid[1], pool[1]):
            for c in range(0, grid[2], pool[2]):
                win = g[:, a : a + pool[0], b : b + pool[1], c : c + pool[2]]
                cells.append(win.reshape(B, -1, C).mean(dim=1))
    return torch.stack(cells, dim=1)


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("multiscale", (False, True))
def test_cga_matches_naive_reference(grid, multiscale):
    torch.manual_seed(0)
    cls = GroupedMultiScaleAttention if multiscale else CascadedGroupAttention
    m = cls(32, 4, grid, key_dim=8).eval()
    randomize_bn(m)
    x = torch.randn(2, math.prod(grid), 32)
    if multiscale:
        assert any(h.kv_pool != (1, 1, 1) for h in m.heads)
    torch.testing.assert_close(m(x), reference_cga(m, x), atol=1e-5, rtol=1e-4)


def test_cga_cascade_direction():
    torch.manual_seed(0)
    m = CascadedGroupAttention(32, 4, (4, 4, 4), key_dim=8).eval()
    randomize_bn(m)
    x = torch.randn(2, 64, 32)
    _, heads = m(x, return_heads=True)
    d = 8
    for i in range(1, 4):
        prev = x.clone()
        prev[..., (i - 1) * d : i * d] += torch.randn(2, 64, d)  # perturb head i-1's chunk
        _, heads_prev = m(prev, return_heads=True)
        assert (heads_prev[i] - heads[i]).abs().max() > 1e-3, f"head {i} ignores head {i - 1}"
        own = x.clone()
        own[..., i * d : (i + 1) * d] += torch.randn(2, 64, d)  # perturb head i's chunk
        _, heads_own = m(own, return_heads=True)
        assert (heads_own[i] - heads[i]).abs().max() > 1e-3
        for j in range(i):
            torch.testing.assert_close(heads_own[j], heads[j], atol=0, rtol=0)


def test_parameter_counts_match_formulas():
    for dim, heads, kd in ((32, 4, 8), (256, 8, 16), (64, 4, 16)):
        mhsa = MultiHeadSelfAttention(dim, heads)
        assert sum(p.numel() for p in mhsa.parameters()) == mhsa_param_count(dim)
        for cls in (CascadedGroupAttention, GroupedMultiScaleAttention):
            cga = cls(dim, heads, (4, 4, 4), key_dim=kd)
            assert sum(p.numel() for p in cga.parameters()) == cga_param_count(dim, heads, kd)
    # the formula is the EfficientViT one, written out for dim 256, 8 heads, key_dim 16:
    # per head qkv 32*64 + BN 2*64, dw 16*27 + BN 2*16; proj 256*256 + 256
    assert cga_param_count(256, 8, 16) == 8 * (2048 + 128 + 432 + 32) + 65792
    assert mhsa_param_count(256) == 4 * 256 * 256 + 4 * 256


def test_multiscale_with_pool_one_equals_cga():
    torch.manual_seed(0)
    grid = (2, 3, 4)
    cga = CascadedGroupAttention(32, 4, grid, key_dim=8)
    ms = GroupedMultiScaleAttention(32, 4, grid, key_dim=8, kv_pool=1)
    ms.load_state_dict(cga.state_dict())
    x = torch.randn(2, 24, 32)
    torch.testing.assert_close(ms(x), cga(x))  # train mode: batch statistics too
    ms2 = GroupedMultiScaleAttention(32, 4, grid, key_dim=8, kv_pool=2)
    ms2.load_state_dict(cga.state_dict())
    assert (ms2(x) - cga(x)).abs().max() > 1e-3  # pooling changes the result


def test_multiscale_pool_factors():
    assert multiscale_pools(8, (16, 16, 16), kv_pool=2) == [(1,) * 3] * 2 + [(2,) * 3] * 2 + [
        (4,) * 3
    ] * 2 + [(8,) * 3] * 2
    # capped per axis so the pooled grid keeps >= 1 token along every axis
    assert multiscale_pools(4, (2, 3, 8), kv_pool=3, num_groups=4) == [
        (1, 1, 1), (2, 3, 3), (2, 3, 8), (2, 3, 8)
    ]
    with pytest.raises(ValueError, match="num_groups"):
        multiscale_pools(4, (4, 4, 4), num_groups=5)


def test_bad_inputs():
    with pytest.raises(ValueError, match="mhsa, cga"):
        build_attention("linear", 32, 4, (4, 4, 4))
    with pytest.raises(ValueError, match="divisible"):
        CascadedGroupAttention(30, 4, (4, 4, 4))
    m = CascadedGroupAttention(32, 4, (4, 4, 4))
    with pytest.raises(ValueError, match="64 tokens"):
        m(torch.randn(1, 60, 32))
    with pytest.warns(UserWarning, match="mhsa"):
        build_attention("mhsa", 32, 4, (4, 4, 4), multiscale=True)


def test_cascaded_heads_count_batches_like_batchnorm_modules():
    """The heads' BatchNorms run functionally; their counters still advance once per training call."""
    m = make("multiscale")
    x = torch.randn(2, 64, 32)
    m(x)
    m.eval()(x)
    counts = {n: int(b) for n, b in m.named_buffers() if n.endswith("num_batches_tracked")}
    assert len(counts) == 2 * 4 and set(counts.values()) == {1}, counts
