"""Losses: zero at a perfect prediction, MONAI's SSIM numbers, calibrated NLL, DRR agreement."""
import math
from pathlib import Path

import pytest
import torch

import xray2ct.losses as losses
from xray2ct.config import LossConfig, load_config
from xray2ct.geometry import Geometry
from xray2ct.losses import (
    ReconstructionLoss,
    UncertaintyRegularizationLoss,
    l1_loss,
    projection_consistency_loss,
    ssim3d,
    ssim3d_loss,
)
from xray2ct.physics.hu import hu_to_unit

ROOT = Path(__file__).resolve().parents[1]


def phantom(n: int, batch: int = 1, bone_left: bool = True) -> torch.Tensor:
    """Normalized CT (B, 1, n, n, n): water ellipsoid in air, a bone ball on the patient's left."""
    c = torch.linspace(-1, 1, n)
    d, h, w = torch.meshgrid(c, c, c, indexing="ij")
    hu = torch.full((n, n, n), -1000.0)
    hu[(d / 0.9) ** 2 + (h / 0.6) ** 2 + (w / 0.8) ** 2 <= 1] = 0.0
    if bone_left:  # w runs patient right -> left: bone at +w only
        hu[(d**2 + h**2 + (w - 0.4) ** 2) <= 0.25**2] = 1000.0
    return hu_to_unit(hu)[None, None].expand(batch, 1, n, n, n).clone()


def geometry(n: int) -> Geometry:
    return Geometry(volume_shape=(n, n, n), voxel_mm=320.0 / n, det_shape=(n, n))


@pytest.mark.parametrize("n", [16, 32])
def test_zero_at_perfect_prediction(n):
    t = phantom(n, batch=2)
    assert l1_loss(t, t).item() == 0.0
    assert abs(ssim3d_loss(t, t).item()) < 1e-6
    assert projection_consistency_loss(t, t, geometry(n)).item() == 0.0


@pytest.mark.parametrize("n", [16, 32])
def test_ssim_matches_monai(n):
    from monai.losses import SSIMLoss

    g = torch.Generator().manual_seed(n)
    t = phantom(n, batch=2)
    p = (t + 0.1 * torch.randn(t.shape, generator=g)).clamp(0, 1)
    ref = SSIMLoss(spatial_dims=3, data_range=1.0, win_size=7, kernel_type="gaussian")(p, t)
    ours = ssim3d_loss(p, t)
    assert ours.item() > 0.05  # a real difference, not a degenerate zero
    assert ours.item() == pytest.approx(ref.item(), abs=1e-5)


def test_ssim_orders_noise_levels_and_is_per_volume():
    g = torch.Generator().manual_seed(0)
    t = phantom(16, batch=2)
    noise = torch.randn(t.shape, generator=g)
    noise[0] *= 0.02
    noise[1] *= 0.2
    s = ssim3d(t + noise, t)
    assert s.shape == (2,) and s[0] > s[1] and s[0] > 0.9


def test_ssim_rejects_small_or_mismatched_volumes():
    with pytest.raises(ValueError, match="sides >= 7"):
        ssim3d_loss(torch.rand(1, 1, 6, 6, 6), torch.rand(1, 1, 6, 6, 6))
    with pytest.raises(ValueError, match="one shape"):
        ssim3d_loss(torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 9, 9, 9))


def test_gradients_flow_through_every_term():
    cfg = load_config(ROOT / "configs" / "cpu-small.json", {"model.volume_size": 16, "model.decoder_channels": "[32]",
                                                            "model.token_grid": 8})
    loss = ReconstructionLoss.from_config(cfg)
    t = phantom(16, batch=2)
    g = torch.Generator().manual_seed(1)
    pred = (t + 0.05 * torch.randn(t.shape, generator=g)).requires_grad_(True)
    log_var = torch.zeros_like(t, requires_grad=True)
    total, parts = loss({"volume": pred, "log_var": log_var}, t)
    total.backward()
    assert set(parts) == {"l1", "ssim", "uncertainty", "projection"}
    assert all(v.ndim == 0 and not v.requires_grad and v > 0 for v in parts.values())
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    assert torch.isfinite(log_var.grad).all() and log_var.grad.abs().sum() > 0


def test_uncertainty_nll_is_minimised_at_the_squared_error():
    nll = UncertaintyRegularizationLoss()
    g = torch.Generator().manual_seed(2)
    target = torch.rand(1, 1, 8, 8, 8, generator=g)
    for e in (0.03, 0.2):
        pred = target + e * torch.sign(torch.randn(target.shape, generator=g))  # |error| = e everywhere
        grid = torch.linspace(-10, 2, 241)  # steps of 0.05
        values = torch.stack([nll(pred, target, torch.full_like(target, float(s))) for s in grid])
        assert grid[values.argmin()].item() == pytest.approx(math.log(e**2), abs=0.05)
        # And gradient descent on a free log-variance lands there.
        s = torch.zeros(1, requires_grad=True)
        opt = torch.optim.Adam([s], lr=0.1)
        for _ in range(300):
            opt.zero_grad()
            nll(pred, target, s.expand_as(target)).backward()
            opt.step()
        assert s.item() == pytest.approx(math.log(e**2), abs=0.02)


def test_uncertainty_error_is_detached_by_default():
    t = torch.rand(1, 1, 4, 4, 4)
    for detach, has_grad in ((True, False), (False, True)):
        pred = (t + 0.1).requires_grad_(True)
        log_var = torch.zeros_like(t, requires_grad=True)
        UncertaintyRegularizationLoss(detach_error=detach)(pred, t, log_var).backward()
        assert log_var.grad.abs().sum() > 0
        assert (pred.grad is not None and pred.grad.abs().sum() > 0) == has_grad


def test_depth_prior_term_penalises_collapse_and_spread():
    nll = UncertaintyRegularizationLoss(prior_weight=1.0)  # reference: log_std = 0, the init
    t = torch.rand(1, 1, 4, 4, 4)
    base = nll(t, t, torch.zeros_like(t))
    at = lambda std: (nll(t, t, torch.zeros_like(t), torch.full((2, 2, 3), math.log(std))) - base).item()
    assert at(1.0) == pytest.approx(0.0, abs=1e-6)
    assert at(0.25) == pytest.approx(0.5 / 16 + math.log(4) - 0.5, rel=1e-5)  # KL of a 4x narrower prior
    assert at(4.0) == pytest.approx(0.5 * 16 - math.log(4) - 0.5, rel=1e-5)


def test_reconstruction_loss_reads_the_models_prior_log_std():
    loss = ReconstructionLoss(LossConfig(l1_weight=0.0, ssim_weight=0.0, uncertainty_reg_weight=1.0,
                                         projection_weight=0.0))
    t = phantom(16)
    out = {"volume": t, "log_var": torch.zeros_like(t)}
    log_std = torch.full((1, 2, 3), -2.0, requires_grad=True)
    plain = loss(out, t)[1]["uncertainty"]
    total, parts = loss({**out, "priors": {"log_std": log_std, "boundaries": torch.zeros(1, 2, 4)}}, t)
    assert parts["uncertainty"] > plain
    total.backward()
    assert (log_std.grad < 0).all()  # pushed back up towards log_std = 0


def test_projection_sees_a_left_right_flip_that_symmetry_hides():
    n = 32
    g = geometry(n)
    sym = phantom(n, bone_left=False)  # symmetric in w: a flip changes nothing
    assert l1_loss(sym.flip(-1), sym).item() < 1e-6
    assert projection_consistency_loss(sym.flip(-1), sym, g).item() < 1e-5
    asym = phantom(n)  # bone on the left only: the flipped volume puts it on the right
    flipped = projection_consistency_loss(asym.flip(-1), asym, g).item()
    assert 0.02 < flipped < 0.5  # seen, and O(0.1)
    # The flipped volume's PA image is the mirror image; the lateral differs only by magnification.
    pa = losses.project(losses.hu_to_mu(losses.unit_to_hu(asym)), g, views=("pa",))
    pa_flip = losses.project(losses.hu_to_mu(losses.unit_to_hu(asym.flip(-1))), g, views=("pa",))
    assert torch.allclose(pa_flip, pa.flip(-1), atol=1e-4)


def test_projection_weighs_a_bias_far_above_noise_of_the_same_l1():
    n = 32
    g = geometry(n)
    t = phantom(n)
    gen = torch.Generator().manual_seed(3)
    # Inside the body only: in air, mu = 0 is clipped, which would turn -delta noise into a bias.
    body = t > 0.2
    delta = 0.02 * body  # 50 HU
    noisy = t + delta * torch.sign(torch.randn(t.shape, generator=gen))
    biased = t + delta
    assert l1_loss(noisy, t).item() == pytest.approx(l1_loss(biased, t).item(), rel=1e-4)
    p_noise = projection_consistency_loss(noisy, t, g).item()
    p_bias = projection_consistency_loss(biased, t, g).item()
    assert p_bias > 3 * p_noise  # zero-mean noise averages out along each ray; a bias adds up


def test_projection_of_an_empty_prediction_is_one():
    t = phantom(16)
    assert projection_consistency_loss(torch.zeros_like(t), t, geometry(16)).item() == pytest.approx(1.0)


def test_reconstruction_loss_respects_weights(monkeypatch):
    t = phantom(16, batch=2)
    gen = torch.Generator().manual_seed(4)
    out = {"volume": t + 0.05 * torch.randn(t.shape, generator=gen), "log_var": torch.full_like(t, -3.0)}
    weights = dict(l1_weight=1.0, mse_weight=3.0, ssim_weight=0.5, uncertainty_reg_weight=0.01, projection_weight=0.1)
    total, parts = ReconstructionLoss(LossConfig(**weights), geometry(16))(out, t)
    expected = sum(w * parts[k] for k, w in zip(("l1", "mse", "ssim", "uncertainty", "projection"), weights.values()))
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert parts["mse"].item() == pytest.approx(((out["volume"] - t) ** 2).mean().item(), rel=1e-6)

    # A zero weight leaves the term out: not reported, not even computed.
    def boom(*args, **kwargs):
        raise AssertionError("a term with weight 0 was computed")

    monkeypatch.setattr(losses, "ssim3d_loss", boom)
    monkeypatch.setattr(losses, "projection_consistency_loss", boom)
    loss = ReconstructionLoss(LossConfig(l1_weight=2.0, ssim_weight=0.0, uncertainty_reg_weight=0.0,
                                         projection_weight=0.0))  # no geometry needed
    total, parts = loss({"volume": out["volume"]}, t)  # no log_var needed either
    assert set(parts) == {"l1"} and total.item() == pytest.approx(2 * parts["l1"].item())


def test_reconstruction_loss_bad_input_is_named():
    with pytest.raises(ValueError, match="needs a geometry"):
        ReconstructionLoss(LossConfig(projection_weight=0.1))
    loss = ReconstructionLoss(LossConfig(projection_weight=0.0))
    t = phantom(16)
    with pytest.raises(KeyError, match="log_var"):
        loss({"volume": t}, t)
    with pytest.raises(ValueError, match="differ in shape"):
        loss({"volume": t[..., :8], "log_var": t[..., :8]}, t)


def test_loss_is_float32_under_bf16_autocast():
    """Under mixed precision the model's outputs are bf16; the loss must still be computed in
    float32 (bf16 SSIM variances cancel: 1 - SSIM of a volume with itself came out 1.008)."""
    cfg = load_config(ROOT / "configs" / "cpu-small.json", {"model.volume_size": 16, "model.decoder_channels": "[32]",
                                                            "model.token_grid": 8})
    loss = ReconstructionLoss.from_config(cfg)
    t = phantom(16, batch=2)
    g = torch.Generator().manual_seed(2)
    pred = (t + 0.05 * torch.randn(t.shape, generator=g)).clamp(0, 1).bfloat16()  # what the model returns
    out = {"volume": pred, "log_var": torch.zeros_like(pred)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp_total, amp_parts = loss(out, t)
        assert abs(ssim3d_loss(t, t).item()) < 1e-6
    fp32_total, fp32_parts = loss({k: v.float() for k, v in out.items()}, t)
    assert amp_total.dtype == torch.float32
    assert amp_total.item() == pytest.approx(fp32_total.item(), rel=1e-5)
    for k in fp32_parts:
        assert amp_parts[k].item() == pytest.approx(fp32_parts[k].item(), rel=1e-5, abs=1e-7), k
