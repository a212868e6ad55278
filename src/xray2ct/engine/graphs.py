"""CUDA graphs for the training step (`optimization.cuda_graphs`) and, through
`with_cuda_graphs`, for any inference forward (`xray2ct reconstruct --cuda-graphs`).

On a GPU the optimized model is launch-bound: its kernels are small and many, and at
batch 1-2 the GPU waits for Python to issue them (docs/BENCHMARKS.md, "GPU profile").
A CUDA graph records the launches once and replays them with one call. We get it from
`torch.compile(mode="reduce-overhead")` (cudagraph trees): it records the forward and the
backward after a warm-up run, re-records when a shape changes (the last, smaller
validation batch), and needs static shapes and no host-device syncs inside the model,
which the model keeps (tested with fullgraph=True). The optimizer step, the loss and the
trainer's finiteness check stay outside the graph; validation runs the plain module.

Where capture is impossible (no CUDA device, several processes under DDP) the model runs
eagerly, after one warning that says why.

Unmeasured: no GPU was available when this was written (see docs/BENCHMARKS.md).
"""
from __future__ import annotations

import warnings

import torch
from torch import nn


def cuda_graphs_unavailable(device: torch.device | str, distributed: bool = False) -> str | None:
    """Why CUDA graphs cannot be used for a run on `device`, or None when they can."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device; this run is on {device.type}"
    if not torch.cuda.is_available():
        return "CUDA graphs need a CUDA device; torch.cuda.is_available() is False"
    if distributed:
        return "CUDA graphs are not used under DistributedDataParallel (its gradient hooks run outside the graph)"
    return None


def with_cuda_graphs(model: nn.Module, device: torch.device | str, distributed: bool = False,
                     setting: str = "optimization.cuda_graphs") -> tuple[nn.Module, bool]:
    """(model compiled to replay CUDA graphs, True), or (model unchanged, False) after one
    warning, prefixed with the `setting` that asked for graphs, naming the reason. In
    training call `step_begin()` before each step's forward; an inference forward
    (`reconstruct --cuda-graphs`) needs nothing more: the compiled module records on its
    first calls and replays from then on, re-recording for a new input shape."""
    reason = cuda_graphs_unavailable(device, distributed)
    if reason is not None:
        warnings.warn(f"{setting}: {reason}; running without CUDA graphs", stacklevel=2)
        return model, False
    # fullgraph: a graph break would split the capture and bring the launches back
    return torch.compile(model, mode="reduce-overhead", fullgraph=True), True


def step_begin() -> None:
    """Mark a new training iteration: the outputs of the previous replay may be overwritten
    from here on (without this, cudagraph trees cannot tell a new step from a second forward)."""
    torch.compiler.cudagraph_mark_step_begin()
