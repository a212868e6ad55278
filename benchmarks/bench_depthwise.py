"""Forward+backward time of a depthwise 3x3x3 Conv3d: nn.Conv3d vs xray2ct's DepthwiseConv3d,
alone and inside a whole training step.

    python benchmarks/bench_depthwise.py [--repeats 10] [--device cpu] [--config configs/cpu-default.json]

The layer shapes are those of the 32³ models at batch 4 (token mixer and decoder stages).
The steps are forward, loss and backward of the config's model at batch 4, once with every
DepthwiseConv3d swapped back to nn.Conv3d. Compared modules hold the same
weights; times are median ± IQR/2 of interleaved runs.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from xray2ct.benchmark import _fwd_bwd, _interleaved, machine_line, table
from xray2ct.config import load_config
from xray2ct.losses import ReconstructionLoss
from xray2ct.models import build_model
from xray2ct.models.depthwise import DepthwiseConv3d

SHAPES = ((4, 128, 8), (4, 64, 16), (4, 32, 32))  # (batch, channels, side)


def with_plain_convs(model: nn.Module) -> nn.Module:
    """The model with every DepthwiseConv3d replaced by an nn.Conv3d holding its weights."""
    for name, child in model.named_children():
        if isinstance(child, DepthwiseConv3d):
            plain = nn.Conv3d(child.in_channels, child.out_channels, child.kernel_size, padding=child.padding,
                              groups=child.groups, bias=child.bias is not None)
            plain.load_state_dict(child.state_dict())
            setattr(model, name, plain)
        else:
            with_plain_convs(child)
    return model


def train_steps_fn(model: nn.Module, loss_fn: nn.Module, xrays: torch.Tensor, ct: torch.Tensor, steps: int):
    """`steps` forward+loss+backward passes in a row, as training runs them (one model's
    oneDNN primitives and allocator blocks stay warm; single interleaved steps evict them)."""
    def run():
        for _ in range(steps):
            model.zero_grad(set_to_none=True)
            loss_fn(model(xrays), ct)[0].backward()
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--config", default="configs/cpu-default.json", help="the model of the whole-step rows")
    args = ap.parse_args()
    rows = []
    for b, c, r in SHAPES:
        x = torch.randn(b, c, r, r, r, device=args.device, requires_grad=True)
        ours = DepthwiseConv3d(c, 3).to(args.device)
        ref = nn.Conv3d(c, c, 3, padding=1, groups=c).to(args.device)
        ref.load_state_dict(ours.state_dict())
        t = _interleaved({"nn.Conv3d": _fwd_bwd(ref, x), "DepthwiseConv3d": _fwd_bwd(ours, x)}, args.device,
                         args.repeats)
        rows.append([f"{b}×{c}×{r}³", str(t["nn.Conv3d"]), str(t["DepthwiseConv3d"]),
                     f"{t['nn.Conv3d'].median_ms / t['DepthwiseConv3d'].median_ms:.2f}×"])
    cfg = load_config(args.config)
    torch.manual_seed(0)
    ours = build_model(cfg).to(args.device)
    ref = with_plain_convs(build_model(cfg).to(args.device))
    ref.load_state_dict(ours.state_dict())
    loss_fn = ReconstructionLoss.from_config(cfg).to(args.device)
    s, n = cfg.model.xray_img_size, cfg.model.volume_size
    xrays, ct = torch.rand(4, 2, s, s, device=args.device), torch.rand(4, 1, n, n, n, device=args.device)
    steps = 4
    t = _interleaved({"nn.Conv3d": train_steps_fn(ref, loss_fn, xrays, ct, steps),
                      "DepthwiseConv3d": train_steps_fn(ours, loss_fn, xrays, ct, steps)}, args.device,
                     max(3, args.repeats // 2), rewarm=True)
    name = args.config.rsplit("/", 1)[-1].removesuffix(".json")
    rows.append([f"{name}, {steps} train steps of batch 4", str(t["nn.Conv3d"]), str(t["DepthwiseConv3d"]),
                 f"{t['nn.Conv3d'].median_ms / t['DepthwiseConv3d'].median_ms:.2f}×"])
    print(machine_line(args.device) + "\n")
    print(table(["input (B×C×r³)", "nn.Conv3d fwd+bwd ms", "DepthwiseConv3d fwd+bwd ms", "speed-up"], rows))


if __name__ == "__main__":
    main()
