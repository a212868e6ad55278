"""2D X-ray encoder: shapes per scale, shared weights with a view embedding, gradients."""

import pytest
import torch

from xray2ct.models.encoder import XRayEncoder


def test_shapes_per_scale():
    enc = XRayEncoder(channels=(8, 16, 24), out_dim=32, num_views=2)
    out = enc(torch.rand(3, 2, 64, 64))
    assert [tuple(f.shape) for f in out.features] == [(3, 2, 8, 32, 32), (3, 2, 16, 16, 16), (3, 2, 32, 8, 8)]
    assert [tuple(d.shape) for d in out.descriptors] == [(3, 2, 8), (3, 2, 16), (3, 2, 32)]
    assert enc.descriptor_dims == (8, 16, 32) and enc.stride == 8
    torch.testing.assert_close(out.descriptors[1], out.features[1].mean(dim=(-2, -1)))


def test_views_share_weights_but_differ_by_embedding():
    torch.manual_seed(0)
    enc = XRayEncoder(channels=(8, 16), out_dim=16).eval()
    image = torch.rand(1, 1, 32, 32)
    same = image.expand(1, 2, 32, 32)
    out = enc(same).features[-1]
    # identical images in both views: outputs differ only through the view embedding
    assert not torch.allclose(out[:, 0], out[:, 1])
    with torch.no_grad():
        enc.view_embed.zero_()
        enc.view_embed_stem.zero_()
    out = enc(same).features[-1]
    torch.testing.assert_close(out[:, 0], out[:, 1])


def test_every_parameter_gets_a_gradient():
    enc = XRayEncoder(channels=(8, 16), out_dim=16)
    out = enc(torch.rand(2, 2, 32, 32))
    loss = sum(f.square().mean() for f in out.features) + sum(d.sum() for d in out.descriptors)
    loss.backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bad_input_shapes():
    enc = XRayEncoder(channels=(8, 16), out_dim=16)
    with pytest.raises(ValueError, match="expected X-rays"):
        enc(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="divisible"):
        enc(torch.rand(2, 2, 30, 32))
    with pytest.raises(ValueError, match="channels"):
        XRayEncoder(channels=())
