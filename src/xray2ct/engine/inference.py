"""The trained model as a function: find and load the weights, predict a volume from films.

    xrays (B, 2, S, S) --predict--> volume (B, 1, N, N, N) in [0, 1], log_var (same) or None

`predict` refuses a non-finite output instead of letting the clamp hide NaN as 0 HU.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from xray2ct.checkpoint import CheckpointError
from xray2ct.errors import UserError
from xray2ct.physics.hu import HU_RANGE

DEFAULT_WEIGHTS = "assets/default"  # inside the installed package
VIEW_NAMES = ("PA", "lateral")  # the model's two inputs, in order (the frontal may be an AP film)


class ReconstructionError(UserError, ValueError):
    """Reconstruction cannot proceed with these arguments; the message names the file or value."""


def default_checkpoint() -> Path:
    """The bundled default weights (`xray2ct/assets/default/*.safetensors`), if installed."""
    from importlib.resources import files

    folder = Path(str(files("xray2ct"))) / DEFAULT_WEIGHTS
    found = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not found:
        raise CheckpointError(f"no bundled default weights are installed (looked in {folder}); "
                              "pass --checkpoint PATH (a .safetensors file or a training run folder)")
    return found[0]


def select_device(device: str = "auto") -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> torch.device; an unusable choice is a user error."""
    from xray2ct.engine.distributed import resolve_device

    try:
        return resolve_device(device)
    except (RuntimeError, ValueError) as e:
        raise ReconstructionError(str(e)) from e


def load_for_inference(checkpoint: str | os.PathLike | None, device: str = "auto", cuda_graphs: bool = False):
    """(model in eval mode on the device, its Config, torch.device). cuda_graphs: its forward
    replays CUDA graphs (`engine.graphs`), or, off CUDA, runs as it is after one warning."""
    from xray2ct.checkpoint import load_model
    from xray2ct.engine.graphs import with_cuda_graphs

    dev = select_device(device)
    model, cfg, _ = load_model(default_checkpoint() if checkpoint is None else checkpoint, device=dev)
    if cuda_graphs:
        model, _ = with_cuda_graphs(model, dev, setting="--cuda-graphs")
    return model, cfg, dev


@torch.inference_mode()
def predict(model: torch.nn.Module, xrays: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """xrays (B, 2, S, S) -> volume (B, 1, N, N, N) in [0, 1], log_var (same) or None; float32 on CPU."""
    out = model(xrays.to(device))
    for key in ("volume", "log_var"):
        if out.get(key) is not None and not bool(torch.isfinite(out[key]).all()):  # clamp hides NaN as 0 HU
            bad = int((~torch.isfinite(out[key])).sum())
            raise ReconstructionError(f"the model's {key} output holds {bad} NaN or infinite value(s); no volume "
                                      "was written (damaged weights, or inputs far from what it was trained on)")
    volume = out["volume"].float().clamp(0, 1).cpu()  # the target window; outside it HU mean nothing
    log_var = out.get("log_var")
    return volume, None if log_var is None else log_var.float().cpu()


def uncertainty_hu(log_var: torch.Tensor) -> torch.Tensor:
    """Predicted log-variance of the normalized CT -> standard deviation in HU."""
    return torch.exp(0.5 * log_var) * HU_RANGE

