"""Cross-attention fusion (identity on the ViT stream at init, learns the CNN stream) and decoder."""

import pytest
import torch

from xray2ct.models.decoder import VolumeDecoder, voxel_shuffle
from xray2ct.models.fusion import CrossAttention, CrossAttentionFusion

GRID = (4, 4, 4)


def _tokens(b=2, dim=32):
    return torch.randn(b, 64, dim), torch.randn(b, 64, dim)


@pytest.mark.parametrize("kv_pool", [1, 2])
def test_fusion_is_identity_on_vit_at_init(kv_pool):
    torch.manual_seed(0)
    fusion = CrossAttentionFusion(32, 4, head_dim=8, grid=GRID, kv_pool=kv_pool)
    vit, cnn = _tokens()
    torch.testing.assert_close(fusion(vit, cnn), vit, atol=5e-3, rtol=0)  # gates start near 0


def test_fusion_uses_cnn_after_training_steps():
    torch.manual_seed(0)
    fusion = CrossAttentionFusion(32, 4, head_dim=8, grid=GRID, kv_pool=2)
    vit, cnn = _tokens()
    target = torch.randn_like(vit)
    opt = torch.optim.SGD(fusion.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        (fusion(vit, cnn) - target).square().mean().backward()
        opt.step()
    # after the gates open every parameter learns
    opt.zero_grad()
    (fusion(vit, cnn) - target).square().mean().backward()
    for name, p in fusion.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    out = fusion(vit, cnn)
    assert not torch.allclose(out, vit)
    # the output now depends on the CNN tokens
    assert not torch.allclose(out, fusion(vit, torch.randn_like(cnn)))


def test_cross_attention_pooled_matches_manual():
    torch.manual_seed(0)
    ca = CrossAttention(16, 2, head_dim=8, grid=GRID, kv_pool=4)
    x, ctx = torch.randn(1, 64, 16), torch.randn(1, 64, 16)
    # kv_pool = grid: one context token, the mean; attention over one key returns its value
    c = ca.norm_kv(ctx).mean(1, keepdim=True)
    v = ca.kv(c)[..., 16:]
    expected = ca.proj(v).expand(1, 64, 16)
    torch.testing.assert_close(ca(x, ctx), expected, atol=1e-5, rtol=1e-5)


def test_fusion_rejects_mismatched_streams():
    fusion = CrossAttentionFusion(32, 4, head_dim=8, grid=GRID)
    with pytest.raises(ValueError, match="must match"):
        fusion(torch.randn(1, 64, 32), torch.randn(1, 8, 32))
    with pytest.raises(ValueError, match="grid"):
        CrossAttention(32, 4, kv_pool=2)


@pytest.mark.parametrize("cond_dim", [None, 8])
def test_decoder_shapes_range_and_log_var_start(cond_dim):
    torch.manual_seed(0)
    dec = VolumeDecoder(16, channels=(8, 4), cond_dim=cond_dim)
    x = torch.randn(2, 16, 4, 4, 4) * 5
    cond = torch.randn(2, cond_dim) if cond_dim else None
    volume, log_var = dec(x, cond)
    assert volume.shape == log_var.shape == (2, 1, 16, 16, 16)
    assert dec.upsample == 4
    assert volume.min() >= 0 and volume.max() <= 1 and volume.std() > 0
    assert log_var.abs().max() == 0  # starts at unit variance
    (volume.mean() + log_var.square().mean() + (log_var * volume).mean()).backward()
    grads = {n: p.grad for n, p in dec.named_parameters()}
    # zero-init heads / modulation still get gradients (their inputs are non-zero)
    assert grads["log_var_head.weight"].abs().sum() > 0
    if cond_dim:
        assert grads["stages.0.modulation.proj.weight"].abs().sum() > 0


def test_decoder_conditioning_changes_output_after_init():
    torch.manual_seed(0)
    dec = VolumeDecoder(8, channels=(4,), cond_dim=6).eval()
    x = torch.randn(1, 8, 4, 4, 4)
    a, b = torch.randn(1, 6), torch.randn(1, 6)
    torch.testing.assert_close(dec(x, a)[0], dec(x, b)[0], atol=5e-3, rtol=0)  # near-identity modulation at init
    with torch.no_grad():
        dec.stages[0].modulation.proj.weight.normal_()
    assert not torch.allclose(dec(x, a)[0], dec(x, b)[0])


def test_voxel_shuffle_places_channel_blocks_as_children():
    b, c, r = 2, 3, 4
    x = torch.randn(b, c * 8, r, r, r)
    y = voxel_shuffle(x)
    assert y.shape == (b, c, 2 * r, 2 * r, 2 * r)
    for i, j, k in [(0, 0, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1)]:
        # child (i, j, k) of every voxel comes from channel block c*8 + 4i + 2j + k
        torch.testing.assert_close(y[:, :, i::2, j::2, k::2], x[:, [ch * 8 + 4 * i + 2 * j + k for ch in range(c)]])


def test_subvoxel_decoder_equals_trilinear_at_init_and_learns_a_one_voxel_spike():
    torch.manual_seed(0)
    plain, sub = VolumeDecoder(16, (8, 8)), VolumeDecoder(16, (8, 8), subvoxel=True)
    sub.load_state_dict(plain.state_dict(), strict=False)  # shared parameters; detail convs stay zero
    x = torch.randn(2, 16, 4, 4, 4)
    for m in (plain, sub):
        m.eval()
    torch.testing.assert_close(sub(x)[0], plain(x)[0])
    # a target a trilinear stage cannot place: one bright output voxel in a dark volume
    target = torch.zeros(2, 1, 16, 16, 16)
    target[:, :, 7, 8, 9] = 1.0

    def fit(m: VolumeDecoder) -> float:
        m.train()
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        for _ in range(150):
            loss = (m(x)[0] - target).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        m.eval()
        return (m(x)[0] - target).square().mean().item()

    assert all(stage.detail.weight.abs().sum() == 0 for stage in sub.stages)
    err_sub, err_plain = fit(sub), fit(plain)
    assert all(stage.detail.weight.abs().sum() > 0 for stage in sub.stages)
    assert err_sub < 0.5 * err_plain
