"""Blocks, the sandwich/standard transformer stack and adaptive modulation."""

import copy

import pytest
import torch
import torch.nn.functional as F

from xray2ct.models.blocks import (
    FFN,
    AttentionBlock,
    FFNBlock,
    Residual,
    TokenMixer,
    TransformerStack,
    block_order,
)
from xray2ct.models.conditioning import AdaptiveModulation


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread avoids thread-barrier waits on a loaded machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


DIM, HEADS, GRID = 32, 4, (2, 3, 4)
N = 24


def stack(**kw) -> TransformerStack:
    args = dict(dim=DIM, num_heads=HEADS, grid=GRID, num_attn_blocks=2, num_ffn_blocks=4, key_dim=8)
    args.update(kw)
    return TransformerStack(**args)


def test_block_order():
    assert block_order("sandwich", 2, 4) == ["ffn", "attn", "ffn", "ffn", "attn", "ffn"]
    assert block_order("sandwich", 2, 6) == ["ffn", "attn", "ffn", "ffn"] * 2  # the seed's
    assert block_order("sandwich", 1, 1) == ["attn", "ffn"]
    assert block_order("sandwich", 3, 0) == ["attn"] * 3
    assert block_order("sandwich", 0, 2) == ["ffn"] * 2
    assert block_order("standard", 2, 4) == ["attn", "ffn"] * 6
    for a, f in ((1, 3), (2, 5), (3, 7), (4, 4)):
        order = block_order("sandwich", a, f)
        assert order.count("attn") == a and order.count("ffn") == f
    with pytest.raises(ValueError, match="sandwich, standard"):
        block_order("interleaved", 2, 4)


def test_stack_block_types_follow_layout():
    sw, st = stack(layout="sandwich"), stack(layout="standard", attention="mhsa", multiscale=False)
    assert sw.layout_names == ["ffn", "attn", "ffn", "ffn", "attn", "ffn"]
    assert [type(b) for b in sw.blocks] == [
        FFNBlock, AttentionBlock, FFNBlock, FFNBlock, AttentionBlock, FFNBlock
    ]
    assert [type(b) for b in st.blocks] == [AttentionBlock, FFNBlock] * 6
    # sandwich FFN blocks start with a depthwise token mixer, standard ones do not
    assert all(isinstance(b.mixer, TokenMixer) for b in sw.blocks if isinstance(b, FFNBlock))
    assert not any(isinstance(b.mixer, TokenMixer) for b in st.blocks if isinstance(b, FFNBlock))
    x = torch.randn(2, N, DIM)
    assert sw(x).shape == st(x).shape == x.shape


@pytest.mark.parametrize("layout", ("sandwich", "standard"))
@pytest.mark.parametrize("attention", ("cga", "mhsa"))
def test_stack_every_parameter_gets_gradient(layout, attention):
    torch.manual_seed(0)
    m = stack(layout=layout, attention=attention, multiscale=attention == "cga", cond_dim=6)
    with torch.no_grad():  # move modulation off zero so its input projection gets a gradient too
        for mod in m.modules():
            if isinstance(mod, AdaptiveModulation):
                mod.proj.weight.normal_(0, 0.1)
    y = m(torch.randn(2, N, DIM), torch.randn(2, 6))
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {name}"


def test_modulation_identity_at_init_then_learns_cond():
    torch.manual_seed(0)
    m = stack(cond_dim=6)
    x, c1, c2 = torch.randn(2, N, DIM), torch.randn(2, 6), torch.randn(2, 6)
    torch.testing.assert_close(m(x, c1), m(x), atol=5e-3, rtol=0)  # near-identity init
    mod_params = [p for n, p in m.named_parameters() if "modulation" in n]
    assert len(mod_params) == 2 * 6  # weight + bias per block
    opt = torch.optim.SGD(mod_params, lr=0.1)
    target = torch.randn(2, N, DIM)
    F.mse_loss(m(x, c1), target).backward()
    opt.step()
    assert (m(x, c1) - m(x, c2)).abs().max() > 1e-4  # output now depends on the conditioning


def test_adaptive_modulation_formula_tokens_and_volumes():
    torch.manual_seed(0)
    mod = AdaptiveModulation(5, 4)
    c = torch.randn(3, 5)
    x_tok, x_vol = torch.randn(3, 7, 4), torch.randn(3, 4, 2, 3, 2)
    torch.testing.assert_close(mod(x_tok, c), x_tok, atol=1e-2, rtol=0)  # near-identity init
    torch.testing.assert_close(mod(x_vol, c), x_vol, atol=1e-2, rtol=0)
    with torch.no_grad():
        mod.proj.weight.normal_()
        mod.proj.bias.normal_()
    scale, shift = mod.proj(F.silu(c)).chunk(2, dim=-1)
    torch.testing.assert_close(mod(x_tok, c), x_tok * (1 + scale[:, None]) + shift[:, None])
    s5, t5 = scale[:, :, None, None, None], shift[:, :, None, None, None]
    torch.testing.assert_close(mod(x_vol, c), x_vol * (1 + s5) + t5)
    with pytest.raises(ValueError, match="cond_dim"):
        mod(x_tok, torch.randn(2, 5))


def test_drop_path_train_and_eval():
    ones = Residual(torch.nn.Identity(), 8, drop_path=0.5)
    ones.norm = torch.nn.Identity()  # branch output = input, so each sample's branch is visible
    x = torch.ones(256, 3, 8)
    ones.train()
    branch = ones(x) - x  # per sample: dropped -> 0, kept -> 1 / 0.5 = 2
    per_sample = branch[:, 0, 0]
    assert set(per_sample.unique().tolist()) == {0.0, 2.0}
    assert (branch == per_sample[:, None, None]).all()  # whole sample dropped, not elements
    assert 0.3 < (per_sample == 0).float().mean() < 0.7
    ones.eval()
    torch.testing.assert_close(ones(x), 2 * x)


def test_stack_drop_path_is_identity_in_eval():
    torch.manual_seed(0)
    m = stack(drop_path=0.5).eval()
    ref = copy.deepcopy(m)
    for block in ref.modules():
        if isinstance(block, Residual):
            block.drop_path = 0.0
    x = torch.randn(2, N, DIM)
    torch.testing.assert_close(m(x), ref(x), atol=0, rtol=0)
    m.train()
    assert (m(x) - ref.train()(x)).abs().max() > 1e-4  # and it does act in training


def test_token_mixer_matches_channels_first_conv():
    torch.manual_seed(0)
    mixer = TokenMixer(DIM, GRID)
    x = torch.randn(2, N, DIM)
    vol = x.transpose(1, 2).reshape(2, DIM, *GRID)  # token n = (d*H + h)*W + w
    ref = F.conv3d(vol, mixer.conv.weight, mixer.conv.bias, padding=1, groups=DIM)
    ref = x + ref.reshape(2, DIM, N).transpose(1, 2)
    torch.testing.assert_close(mixer(x), ref, atol=1e-5, rtol=1e-5)


def test_ffn_shape_and_params():
    f = FFN(DIM, ratio=2.0)
    assert f(torch.randn(2, N, DIM)).shape == (2, N, DIM)
    assert sum(p.numel() for p in f.parameters()) == 2 * DIM * 64 + 64 + DIM


def test_stack_bad_names():
    with pytest.raises(ValueError, match="mhsa, cga"):
        stack(attention="performer")
    with pytest.raises(ValueError, match="sandwich, standard"):
        stack(layout="deep")


def test_stack_bf16_autocast_and_float64():
    torch.manual_seed(0)
    m = stack(cond_dim=6).eval()
    x, c = torch.randn(2, N, DIM), torch.randn(2, 6)
    ref = m(x, c)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x, c)
    assert torch.isfinite(y.float()).all()
    assert (y.float() - ref).abs().max() < 0.1 * ref.abs().max()
    y64 = m.double()(x.double(), c.double())
    assert y64.dtype == torch.float64
    torch.testing.assert_close(y64.float(), ref, atol=1e-4, rtol=1e-4)
