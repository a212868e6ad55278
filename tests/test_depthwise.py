"""DepthwiseConv3d: same function, gradients and parameters as nn.Conv3d(groups=C)."""

import pytest
import torch
from torch import nn

from xray2ct.models.cnn3d import ConvBNAct3d
from xray2ct.models.depthwise import DepthwiseConv3d, _DepthwiseConv3dFn


@pytest.mark.parametrize("k,bias", [(3, True), (3, False), (5, True), (1, False)])
def test_matches_nn_conv3d_values_and_gradients(k, bias):
    torch.manual_seed(0)
    ours = DepthwiseConv3d(4, k, bias=bias).double()
    ref = nn.Conv3d(4, 4, k, padding=k // 2, groups=4, bias=bias).double()
    ref.load_state_dict(ours.state_dict())  # same parameter names and shapes
    x = torch.randn(2, 4, 5, 6, 7, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 4, 5, 6, 7, dtype=torch.float64)
    outs = [m(x) for m in (ours, ref)]
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-12)
    g_ours = torch.autograd.grad(outs[0], [x, *ours.parameters()], grad)
    g_ref = torch.autograd.grad(outs[1], [x, *ref.parameters()], grad)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("needs", [(True, True), (True, False), (False, True)])
def test_gradcheck_each_input(needs):
    torch.manual_seed(1)
    x = torch.randn(1, 3, 4, 4, 4, dtype=torch.float64, requires_grad=needs[0])
    w = torch.randn(3, 1, 3, 3, 3, dtype=torch.float64, requires_grad=needs[1])
    assert torch.autograd.gradcheck(_DepthwiseConv3dFn.apply, (x, w))


def test_bf16_autocast_gives_gradients_in_parameter_dtype():
    conv = DepthwiseConv3d(4, 3)
    x = torch.randn(2, 4, 4, 4, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x)
    out.float().square().sum().backward()
    assert x.grad.dtype == torch.float32 and conv.weight.grad.dtype == torch.float32
    ref = nn.Conv3d(4, 4, 3, padding=1, groups=4)
    ref.load_state_dict(conv.state_dict())
    ref(x.detach()).square().sum().backward()
    # bf16 keeps ~3 significant digits
    torch.testing.assert_close(conv.weight.grad, ref.weight.grad, rtol=0.05, atol=0.5)


def test_even_kernel_refused():
    with pytest.raises(ValueError, match="odd"):
        DepthwiseConv3d(4, 2)


def test_conv_bn_act_uses_it_only_when_depthwise():
    assert isinstance(ConvBNAct3d(8, 8, 3, groups=8)[0], DepthwiseConv3d)
    assert type(ConvBNAct3d(8, 8, 3)[0]) is nn.Conv3d
    assert type(ConvBNAct3d(8, 16, 1)[0]) is nn.Conv3d


@pytest.mark.parametrize("channels_last", [False, True])
def test_weight_gradient_at_the_models_shapes(channels_last):
    """The CPU weight gradient (one grouped convolution) against PyTorch's own, in float32, on
    the token grid's channels_last_3d layout too, batch > 1 (the sum over samples)."""
    torch.manual_seed(2)
    ours = DepthwiseConv3d(16, 3, bias=False)
    ref = nn.Conv3d(16, 16, 3, padding=1, groups=16, bias=False)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(4, 16, 8, 8, 8)
    if channels_last:
        x = x.to(memory_format=torch.channels_last_3d)
    grad = torch.randn(4, 16, 8, 8, 8)
    (g_ours,) = torch.autograd.grad(ours(x), [ours.weight], grad)
    (g_ref,) = torch.autograd.grad(ref(x), [ref.weight], grad)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-4)


def test_off_the_cpu_the_layer_is_torchs_own_convolution():
    """On a GPU cuDNN's backward is as fast and one kernel: only the CPU takes the hand-written one
    (checked on the meta device, which dispatches like any non-CPU device)."""
    conv = DepthwiseConv3d(4, 3).to("meta")
    x = torch.randn(2, 4, 5, 5, 5, device="meta", requires_grad=True)
    out = conv(x)
    assert out.shape == (2, 4, 5, 5, 5) and type(out.grad_fn).__name__ == "ConvolutionBackward0"
    cpu = DepthwiseConv3d(4, 3)
    assert "DepthwiseConv3dFn" in type(cpu(torch.randn(1, 4, 3, 3, 3, requires_grad=True)).grad_fn.next_functions[0][0]).__name__
