"""The assembled network over every shipped config: shapes, finite outputs, gradients to
every parameter, parameter budget of optimized vs baseline, autocast, model summary."""

from pathlib import Path

import pytest
import torch

from xray2ct.config import load_config, override_config
from xray2ct.models import XRay2CT, build_model
from xray2ct.models.summary import format_summary, model_summary

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _cfg(name, **overrides):
    cfg = load_config(CONFIGS / f"{name}.json")
    return override_config(cfg, {f"model.{k}": v for k, v in overrides.items()}) if overrides else cfg


def _n_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def small():
    return _cfg("cpu-small")


def _loss(out):
    # volume and log_var both enter, as in the Gaussian NLL the trainer uses
    return (out["volume"] - 0.3).abs().mean() + (out["log_var"] * out["volume"]).mean() + out["log_var"].exp().mean()


def test_cpu_small_forward_shapes_range_and_priors(small):
    torch.manual_seed(0)
    model = build_model(small)
    n, s = small.model.volume_size, small.model.xray_img_size
    out = model(torch.rand(2, 2, s, s))
    assert out["volume"].shape == out["log_var"].shape == (2, 1, n, n, n)
    assert torch.isfinite(out["volume"]).all() and torch.isfinite(out["log_var"]).all()
    assert out["volume"].min() >= 0 and out["volume"].max() <= 1
    assert out["log_var"].abs().max() == 0  # unit variance at init
    assert out["priors"]["boundaries"].shape == (2, 2, 4)
    assert model.lifting.sample_grid.shape == (2, n // 4, n // 4, n // 4, 2)


def test_every_parameter_learns(small):
    """One backward reaches every parameter; zero-initialised gates/modulations stop the
    gradient behind them at step one only, so after one optimizer step every parameter
    has a non-zero gradient."""
    torch.manual_seed(0)
    model = build_model(small)
    s = small.model.xray_img_size
    x = torch.rand(2, 2, s, s)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    _loss(model(x)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    opt.step()
    opt.zero_grad()
    _loss(model(x)).backward()
    dead = [n for n, p in model.named_parameters() if not p.grad.abs().sum() > 0]
    assert not dead, f"parameters without gradient: {dead}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_baseline_variant_small_learns_and_has_no_optional_parts(small):
    torch.manual_seed(0)
    base = _cfg(
        "cpu-small", use_cnn_branch=False, use_learnable_priors=False, attention="mhsa", layout="standard",
        use_multiscale=False, use_conditioning=False,
    )
    model = build_model(base)
    assert set(model.components()) == {"encoder", "lifting", "transformer", "decoder"}
    assert not any("predictor" in n or "width_logits" in n for n, _ in model.named_parameters())
    s = base.model.xray_img_size
    _loss(model(torch.rand(2, 2, s, s))).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead


def test_components_partition_the_parameters(small):
    model = build_model(small)
    assert sum(_n_params(m) for m in model.components().values()) == _n_params(model)


def test_optimized_has_at_most_055_of_baseline_parameters():
    opt, base = build_model(_cfg("optimized")), build_model(_cfg("baseline"))
    ratio = _n_params(opt) / _n_params(base)
    assert ratio <= 0.55, f"optimized/baseline parameters = {ratio:.3f}"
    # the saving comes from the token model, not from starving the shared parts
    assert _n_params(opt.encoder) == _n_params(base.encoder)
    assert _n_params(opt.transformer) < 0.4 * _n_params(base.transformer)


def test_bad_input_names_expected_shape(small):
    model = build_model(small)
    with pytest.raises(ValueError, match=r"\(B, 2, 128, 128\)"):
        model(torch.rand(1, 2, 64, 64))
    with pytest.raises(ValueError, match="volume_size"):
        XRay2CT(small.model, small.geometry.build(volume_size=16, det_size=128))


def test_bf16_autocast(small):
    torch.manual_seed(0)
    model = build_model(small)
    s = small.model.xray_img_size
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.rand(1, 2, s, s))
        loss = _loss(out)
    loss.backward()
    assert torch.isfinite(out["volume"].float()).all()
    assert out["volume"].min() >= 0 and out["volume"].max() <= 1
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_eval_is_deterministic(small):
    model = build_model(small).eval()
    x = torch.rand(1, 2, small.model.xray_img_size, small.model.xray_img_size)
    with torch.no_grad():
        torch.testing.assert_close(model(x)["volume"], model(x)["volume"])


@pytest.mark.parametrize("name", ["baseline", "optimized"])
def test_full_size_configs_build(name):
    cfg = _cfg(name)
    model = build_model(cfg)
    g = cfg.model.volume_size // 4
    assert model.lifting.sample_grid.shape == (2, g, g, g, 2)
    assert (model.cnn is not None) == cfg.model.use_cnn_branch


@pytest.mark.slow
@pytest.mark.parametrize("name", ["baseline", "optimized"])
def test_full_size_configs_forward(name):
    cfg = _cfg(name)
    model = build_model(cfg).eval()
    n, s = cfg.model.volume_size, cfg.model.xray_img_size
    with torch.no_grad():
        out = model(torch.rand(1, 2, s, s))
    assert out["volume"].shape == (1, 1, n, n, n)
    assert torch.isfinite(out["volume"]).all()


def test_model_summary(small):
    summary = model_summary(small)
    model = build_model(small)
    assert summary["params_total"] == _n_params(model)
    assert summary["params"] == {k: _n_params(m) for k, m in model.components().items()}
    assert summary["tokens"] == (small.model.volume_size // 4) ** 3
    assert summary["flops"] > 1e8
    # activations saved for backward at batch 1: at least the output volume, far below 1 GB
    assert 4 * small.model.volume_size**3 < summary["activation_bytes"] < 1e9
    text = format_summary(summary)
    assert "transformer" in text and "total" in text


@pytest.mark.slow
def test_torch_compile_matches_eager():
    """torch.compile (inductor, CPU) gives the eager outputs and gradients flow."""
    from xray2ct.config import load_config

    cfg = load_config("configs/cpu-small.json", overrides={
        "model.volume_size": 16, "model.xray_img_size": 32, "model.voxel_dim": 32, "model.num_heads": 2,
        "model.xray_feature_dim": 32, "model.encoder_channels": [8, 16, 16, 32], "model.decoder_channels": [16, 8],
        "model.key_dim": 8})
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    x = torch.rand(2, 2, 32, 32)
    with torch.no_grad():
        eager = model(x)["volume"]
        compiled = torch.compile(model)(x)["volume"]
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)
    model.train()
    out = torch.compile(model)(x)
    (out["volume"].mean() + out["log_var"].mean()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_lifted_skips_take_the_nearest_encoder_scale_and_learn():
    torch.manual_seed(0)
    cfg = _cfg("cpu-small", lifted_skips=True)
    model = build_model(cfg)
    # decoder stages at 16³ and 32³ take the encoder maps of side 16 (stride 8) and 32 (stride 4) of 128²
    assert model.skip_sources == (2, 1) and "skips" in model.components()
    s = cfg.model.xray_img_size
    _loss(model(torch.rand(2, 2, s, s))).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead


def test_per_sample_geometry_none_is_the_shared_path_and_all_equal_is_set_geometry(small):
    """forward(x, geometry=None) is today's path bit for bit; every sample at g equals
    set_geometry(g) to float rounding; mixed batches give each sample its own; gradients flow."""
    from xray2ct.acquisition import study_geometry
    from xray2ct.geometry import ViewSetup

    from xray2ct.models.net import using_geometry

    torch.manual_seed(0)
    model = build_model(override_config(small, {"model.lifted_skips": True})).eval()
    torch.manual_seed(1)
    x = torch.rand(2, 2, model.xray_size, model.xray_size)
    nominal = model.geometry
    g = study_geometry(nominal, {"ap": ViewSetup(1650.0, 1800.0, 1.5), "lat": ViewSetup(1650.0, 1800.0, 1.6)})
    with torch.no_grad():
        shared = model(x)["volume"]
        assert torch.equal(model(x, None)["volume"], shared)
        torch.testing.assert_close(model(x, [nominal, nominal])["volume"], shared, rtol=0, atol=1e-5)
        with using_geometry(model, g):
            at_g = model(x)["volume"]
        torch.testing.assert_close(model(x, [g, g])["volume"], at_g, rtol=0, atol=1e-5)
        mixed = model(x, [nominal, g])["volume"]
        torch.testing.assert_close(mixed[1], at_g[1], rtol=0, atol=1e-5)
        torch.testing.assert_close(mixed[0], shared[0], rtol=0, atol=1e-5)
    assert model.geometry == nominal
    model.train()
    out = model(x, [g, nominal])
    out["volume"].mean().backward()
    assert all(p.grad is not None for p in model.encoder.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="1 geometries for a batch of 2"):
        model(x, [g])
