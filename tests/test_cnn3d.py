"""3D CNN branch: MBConv residual and stochastic depth, squeeze-excitation gates, shapes."""

import pytest
import torch

from xray2ct.models.cnn3d import EfficientNet3D, MBConv3d, SqueezeExcite3d


def test_se_gates_in_unit_interval_and_scale_channels():
    torch.manual_seed(0)
    se = SqueezeExcite3d(8, 2)
    x = torch.randn(2, 8, 4, 4, 4) * 10
    gate = se.gate(x)
    assert gate.shape == (2, 8, 1, 1, 1)
    assert (gate > 0).all() and (gate < 1).all()
    torch.testing.assert_close(se(x), x * gate)


def test_mbconv_is_residual_and_drop_path_is_identity_in_eval():
    torch.manual_seed(0)
    block = MBConv3d(8, expand=2, drop_path=0.9)
    x = torch.randn(2, 8, 4, 4, 4)
    block.eval()
    branch = block.project(block.se(block.dw(block.expand(x))))
    torch.testing.assert_close(block(x), x + branch)  # no drop in eval
    torch.testing.assert_close(block(x), block(x))  # deterministic
    block.train()
    torch.manual_seed(1)
    outs = torch.stack([block(x) for _ in range(20)])
    # in training, with p=0.9 most samples are the bare identity; kept ones are rescaled
    dropped = [(o[i] == x[i]).all().item() for o in outs for i in range(2)]
    assert 0 < sum(dropped) < len(dropped)


def test_zero_branch_gives_identity():
    block = MBConv3d(4, expand=2).eval()
    with torch.no_grad():
        block.project[1].weight.zero_()  # BN scale of the projection
        block.project[1].bias.zero_()
    x = torch.randn(1, 4, 3, 3, 3)
    torch.testing.assert_close(block(x), x)


def test_efficientnet3d_shapes_and_gradients():
    net = EfficientNet3D(12, 20, widths=(4, 8), depths=(1, 2), expand=2, drop_path=0.1)
    x = torch.randn(2, 12, 4, 4, 4)
    y = net(x)
    assert y.shape == (2, 20, 4, 4, 4)
    y.square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bad_stage_lists():
    with pytest.raises(ValueError, match="widths"):
        EfficientNet3D(4, 4, widths=(4, 8), depths=(1,))
