"""The GPU path, checked on CPU: the bundled weights give the same output after the
batching of the model's per-head work, and the optimized model stays few-op and compilable."""
from importlib.resources import files

import pytest
import torch

from xray2ct.checkpoint import load_model
from xray2ct.engine.reconstruct import load_pair

# Output of the bundled cpu-small weights on phantom_0018, computed with the per-head
# (unbatched) attention before the grouped rewrite; float64 reductions of the float32 output.
VOXELS = [(16, 16, 16), (5, 10, 20), (25, 7, 3), (0, 0, 0), (31, 31, 31), (12, 20, 9)]
PINNED = {
    "volume_mean": 0.1473007786033138,
    "volume_std": 0.19654383233683945,
    "log_var_mean": -10.269110041561362,
    "log_var_std": 3.6377222222767296,
    "volume": [0.42412162, 0.20178902, 0.00905954, 0.0064881, 0.00933298, 0.08012026],
    "log_var": [-8.96570873, -5.57317734, -13.64820671, -14.59488964, -14.04205704, -7.5810194],
}


@pytest.fixture(scope="module")
def bundled_output():
    assets = files("xray2ct") / "assets"
    model, cfg, _ = load_model(assets / "default" / "cpu-small.safetensors")
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
