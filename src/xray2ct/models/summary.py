"""Model summary for `xray2ct info`: parameters per component, tokens, FLOPs, activation memory.

FLOPs come from `torch.utils.flop_counter.FlopCounterMode` on one forward at batch 1
(matmuls, convolutions and attention; element-wise ops are not counted). Activation memory
is exact for PyTorch's autograd: the bytes of every distinct tensor storage saved for
backward during one training-mode forward at batch 1, via
`torch.autograd.graph.saved_tensors_hooks` (parameters excluded).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from xray2ct.models.net import build_model

if TYPE_CHECKING:
    from xray2ct.config import Config


def saved_activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of distinct tensors autograd saves for backward in one forward of model(x)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params:  # weights are kept anyway, not activations
            storages[ptr] = max(storages.get(ptr, 0), storage.nbytes())  # views share a storage
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(storages.values())


def model_summary(config: Config, batch_size: int = 1) -> dict:
    """Summary of the model a config builds (random init, CPU).

    Returns a dict: params {component: count}, params_total, token_grid, tokens,
    volume_size, xray_img_size, flops (forward, batch_size), activation_bytes (saved for
    backward, batch_size).
    """
    m = config.model
    torch.manual_seed(0)
    model = build_model(config)
    x = torch.rand(batch_size, 2, m.xray_img_size, m.xray_img_size)
    model.eval()
    counter = FlopCounterMode(display=False)
    # grad enabled: under no_grad the module tracker trips on outputs that are views of
    # parameters (requires_grad without grad_fn); only the forward runs either way
    with counter:
        model(x)
    model.train()
    activation = saved_activation_bytes(model, x)
    params = {name: sum(p.numel() for p in part.parameters()) for name, part in model.components().items()}
    return {
        "params": params,
        "params_total": sum(p.numel() for p in model.parameters()),
        "token_grid": m.grid,
        "tokens": m.grid**3,
        "volume_size": m.volume_size,
        "xray_img_size": m.xray_img_size,
        "flops": int(counter.get_total_flops()),
        "activation_bytes": int(activation),
    }


def summary_rows(summary: dict) -> list[tuple[str, str]]:
    """(label, value) rows, for a rich table or plain text."""
    rows = [(f"params: {name}", f"{n / 1e6:.3f} M") for name, n in summary["params"].items()]
    rows += [
        ("params: total", f"{summary['params_total'] / 1e6:.3f} M"),
        ("volume / X-ray size", f"{summary['volume_size']}³ / {summary['xray_img_size']}²"),
        ("tokens", f"{summary['tokens']} ({summary['token_grid']}³)"),
        ("forward FLOPs (batch 1)", f"{summary['flops'] / 1e9:.2f} GFLOP"),
        ("activations saved for backward (batch 1)", f"{summary['activation_bytes'] / 2**20:.1f} MiB"),
    ]
    return rows


def format_summary(summary: dict) -> str:
    """Plain two-column text table of `summary_rows`."""
    rows = summary_rows(summary)
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value:>14}" for label, value in rows)
