"""The GPU path, checked on CPU: the bundled weights give the same output after the
batching of the model's per-head work, and the optimized model stays few-op and compilable."""
from importlib.resources import files
from pathlib import Path

import pytest
import torch

from xray2ct.benchmark import ops_per_train_step
from xray2ct.checkpoint import load_model
from xray2ct.config import load_config
from xray2ct.engine.reconstruct import load_pair
from xray2ct.models import build_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# Output of the bundled weights (cpu-default) on the phantom_0018 example, pinned when they
# were bundled: a change to the model's code that changes its numbers fails here. float64
# reductions of the float32 output.
VOXELS = [(16, 16, 16), (5, 10, 20), (25, 7, 3), (0, 0, 0), (31, 31, 31), (12, 20, 9)]
PINNED = {
    "volume_mean": 0.24555605451838503,
    "volume_std": 0.17221446244730249,
    "log_var_mean": -5.565509865555214,
    "log_var_std": 1.8770467807547258,
    "volume": [0.36660761, 0.09231630, 0.39480603, 0.00830728, 0.02489810, 0.08473197],
    "log_var": [-4.59292889, -5.29210377, -4.17045498, -11.34155273, -4.02000713, -7.32792521],
}


@pytest.fixture(scope="module")
def bundled_output():
    assets = files("xray2ct") / "assets"
    model, cfg, _ = load_model(assets / "default" / "cpu-default.safetensors")
    x = load_pair(assets / "examples" / "phantom_0018_pa.png", assets / "examples" / "phantom_0018_lat.png",
                  cfg.model.xray_img_size)
    with torch.no_grad():
        out = model(x)
    return out["volume"].double(), out["log_var"].double()


def test_bundled_weights_give_the_pinned_output(bundled_output):
    volume, log_var = bundled_output
    got = {
        "volume_mean": volume.mean().item(),
        "volume_std": volume.std().item(),
        "log_var_mean": log_var.mean().item(),
        "log_var_std": log_var.std().item(),
        "volume": [volume[0, 0, i, j, k].item() for i, j, k in VOXELS],
        "log_var": [log_var[0, 0, i, j, k].item() for i, j, k in VOXELS],
    }
    for key, want in PINNED.items():
        # volume in [0, 1]: 1e-5 absolute; log_var ~ -10: 1e-5 relative
        assert got[key] == pytest.approx(want, rel=1e-5, abs=1e-5), key


# --- operators per training step (the GPU's launch count, measured on the CPU) -----------
def _ops_per_step(name: str) -> int:
    """As /work/shared/acceptance/gpu_path counts them: 32³ / 128², batch 2, fwd+bwd."""
    cfg = load_config(CONFIGS / f"{name}.json", overrides={"model.volume_size": 32, "model.xray_img_size": 128})
    torch.manual_seed(0)
    return ops_per_train_step(build_model(cfg), batch=2)


@pytest.fixture(scope="module")
def ops():
    return {name: _ops_per_step(name) for name in ("baseline", "optimized")}


def test_ops_per_step_stay_below_the_batched_attention_level(ops):
    # 13,042 vs 4,077 (3.2x) before the cascaded heads and the depthwise backward were
    # trimmed; 8,598 vs 3,405 (2.53x) after, with 2 threads as acceptance/gpu_path counts
    # (1 thread: 8,771 vs 3,504). Since the CPU's own depthwise weight gradient (a grouped conv,
    # a few calls more; a GPU runs cuDNN's): 8,721 vs 3,439 (1 thread: 8,904 vs 3,548).
    # A regression past 2.6x fails here.
    assert ops["optimized"] <= 2.6 * ops["baseline"], ops
    assert ops["optimized"] < 9000, ops


@pytest.mark.xfail(strict=True, reason="issue #19 goal not reachable by batching: with its two attention blocks "
                   "replaced by identity the optimized model already dispatches 4,592 aten ops, 1.35x the "
                   "baseline's 3,405, leaving 515 for 16 sequential cascaded heads, whose two training-mode "
                   "BatchNorms alone take 26 each in the forward (benchmarks/gpu_ops.py; docs/BENCHMARKS.md "
                   "'Operators per training step')")
def test_ops_per_step_optimized_at_most_1_5x_baseline(ops):
    assert ops["optimized"] <= 1.5 * ops["baseline"], ops


# --- torch.compile: one graph, no breaks ---------------------------------------------------
def _tiny_optimized():
    """configs/optimized.json at a size that traces in seconds (every optimization on)."""
    cfg = load_config(CONFIGS / "optimized.json", overrides={
        "model.volume_size": 16, "model.xray_img_size": 32, "model.voxel_dim": 32, "model.num_heads": 4,
        "model.xray_feature_dim": 32, "model.encoder_channels": [8, 16, 16, 32], "model.decoder_channels": [16, 8],
        "model.key_dim": 8})
    torch.manual_seed(0)
    return build_model(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("train", (True, False))
def test_optimized_model_compiles_to_one_graph(train):
    """fullgraph=True raises on any graph break; aot_eager traces forward and backward
    (the autograd.Function of the depthwise conv included) without inductor's C++ build."""
    torch._dynamo.reset()
    model = _tiny_optimized().train(train)
    x = torch.rand(2, 2, 32, 32)
    ref = _tiny_optimized().train(train)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.set_grad_enabled(train):
        out, want = compiled(x), ref(x)
    torch.testing.assert_close(out["volume"], want["volume"], atol=1e-5, rtol=1e-5)
    if train:
        out["volume"].mean().backward()
        want["volume"].mean().backward()
        for (name, p), q in zip(model.named_parameters(), ref.parameters()):
            # the compiled backward gives zeros where eager leaves None (log_var is not in the loss)
            got, want_grad = (torch.zeros_like(p) if t.grad is None else t.grad for t in (p, q))
            torch.testing.assert_close(got, want_grad, atol=1e-5, rtol=1e-4, msg=name)


# --- CUDA graphs: config and the fallback where capture is impossible ----------------------
def test_cuda_graphs_config_is_validated():
    from xray2ct.config import ConfigError

    cfg = load_config(CONFIGS / "cpu-small.json", overrides={"optimization.cuda_graphs": True})
    assert cfg.optimization.cuda_graphs and not load_config(CONFIGS / "cpu-small.json").optimization.cuda_graphs
    with pytest.raises(ConfigError, match="optimization.cuda_graphs"):
        load_config(CONFIGS / "cpu-small.json", overrides={"optimization.cuda_graphs": "yes"})
    with pytest.raises(ConfigError, match="cuda_graph"):  # a misspelt key is named, with the suggestion
        load_config(CONFIGS / "cpu-small.json", overrides={"optimization.cuda_graph": True})


def test_cuda_graphs_fall_back_on_cpu_with_one_message():
    from xray2ct.engine.graphs import cuda_graphs_unavailable, with_cuda_graphs

    model = torch.nn.Linear(2, 2)
    with pytest.warns(UserWarning, match="optimization.cuda_graphs: CUDA graphs need a CUDA device; this run is on cpu"):
        same, graphed = with_cuda_graphs(model, "cpu")
    assert same is model and not graphed
    assert "DistributedDataParallel" in cuda_graphs_unavailable("cuda", distributed=True) or not torch.cuda.is_available()


def test_training_with_cuda_graphs_on_cpu_warns_once_and_trains(tmp_path):
    import warnings

    from _tiny import TINY_MODEL

    from xray2ct.data.prepare import make_phantom_dataset
    from xray2ct.engine.train import train

    data = tmp_path / "data"
    make_phantom_dataset(data, n=6, size=16, seed=5, xray_size=32, progress=False)
    cfg = load_config(CONFIGS / "cpu-small.json", overrides={
        **TINY_MODEL, "model.num_attn_blocks": 1, "model.num_ffn_blocks": 1, "model.key_dim": 8,
        "training.batch_size": 2, "training.num_epochs": 1, "data.num_workers": 0,
        "optimization.use_mixed_precision": False, "optimization.cuda_graphs": True})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(cfg, tmp_path / "run", data_dir=data, device="cpu", progress=False, max_steps=2)
    messages = [str(w.message) for w in caught if "cuda_graphs" in str(w.message)]
    assert messages == ["optimization.cuda_graphs: CUDA graphs need a CUDA device; this run is on cpu; "
                        "running without CUDA graphs"]
    assert (tmp_path / "run" / "last.safetensors").is_file()


def test_reconstruct_cuda_graphs_falls_back_on_cpu_with_one_message(tmp_path):
    """`reconstruct --cuda-graphs` off CUDA: one warning naming the flag, then the plain forward."""
    import warnings

    import numpy as np
    from typer.testing import CliRunner

    from xray2ct.cli import app

    examples = files("xray2ct") / "assets" / "examples"
    pa, lat = (str(examples / f"phantom_0018_{v}.png") for v in ("pa", "lat"))
    outs = {}
    for graphs in (False, True):
        outs[graphs] = tmp_path / f"graphs_{graphs}.npy"
        args = ["reconstruct", "--no-refine", "--device", "cpu", "--format", "npy", "--pa", pa, "--lat", lat,
                "--out", str(outs[graphs])] + (["--cuda-graphs"] if graphs else [])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        messages = [str(w.message) for w in caught if "graphs" in str(w.message)]
        assert messages == (["--cuda-graphs: CUDA graphs need a CUDA device; this run is on cpu; "
                             "running without CUDA graphs"] if graphs else [])
    np.testing.assert_array_equal(np.load(outs[True]), np.load(outs[False]))
