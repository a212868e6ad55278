"""Where the aten operators of a training step come from (issue #19's ops/step count).

    python benchmarks/gpu_ops.py [--size 32 --xray 128] [--threads 2]

For configs/baseline.json and configs/optimized.json at --size³ / --xray² (default 32³ / 128²,
the issue's and acceptance/gpu_path's), batch 2, counted by `xray2ct.benchmark.ops_per_train_step`:
  - the whole step's count;
  - per component, forward and backward together: a forward op belongs to the innermost
    component whose forward was running, a backward op to the component whose forward op
    created its autograd node (matched by sequence number);
  - the optimized model with its attention blocks replaced by identity: what the rest of it
    costs, so the most the attention may cost for a given ratio to the baseline.
The count depends on the number of threads (oneDNN and PyTorch take other paths with one):
2, as acceptance/gpu_path sets, gave 3,405 / 8,598 at bec9297, 1 thread 3,504 / 8,771.
"""
from __future__ import annotations

import argparse

import torch
from torch.autograd.profiler import record_function
from torch.profiler import ProfilerActivity, profile

from xray2ct.benchmark import ops_per_train_step
from xray2ct.config import load_config
from xray2ct.models import build_model

TAG = "component: "


def build(name: str, size: int, xray: int):
    cfg = load_config(f"configs/{name}.json", overrides={"model.volume_size": size, "model.xray_img_size": xray})
    torch.manual_seed(0)
    return build_model(cfg).train()


def components(model) -> dict[str, torch.nn.Module]:
    parts = {"encoder": model.encoder, "lifting": model.lifting, "priors": model.priors,
             "view_fusion": model.view_fusion, "conditioning": model.conditioning, "cnn": model.cnn,
             "fusion": model.fusion, "decoder": model.decoder, "skips": model.skips,
             "final norm": model.transformer.norm}
    parts |= {f"block {i} ({b.kind})": b for i, b in enumerate(model.transformer.blocks)}
    return {k: v for k, v in parts.items() if v is not None}


def per_component(model) -> dict[str, int]:
    """aten calls of one fwd+bwd step by component; the rest (the loss, glue) as "other"."""
    for name, module in components(model).items():
        forward = module.forward

        def tagged(*args, _forward=forward, _name=name, **kwargs):
            with record_function(TAG + _name):
                return _forward(*args, **kwargs)
        module.forward = tagged
    x = torch.rand(2, len(model.lifting.views), model.xray_size, model.xray_size)

    def step():
        model(x)["volume"].float().mean().backward()
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.events()
    ranges = [(e.time_range.start, e.time_range.end, e.name[len(TAG):]) for e in events if e.name.startswith(TAG)]

    def owner(e) -> str | None:
        inside = [r for r in ranges if r[0] <= e.time_range.start <= r[1]]
        return min(inside, key=lambda r: r[1] - r[0])[2] if inside else None

    def aten_calls(e) -> int:
        return int(e.name.startswith("aten::")) + sum(aten_calls(c) for c in e.cpu_children)

    counts: dict[str, int] = {}
    by_sequence: dict[int, str] = {}
    for e in events:
        if e.name.startswith("autograd::engine::evaluate_function"):
            name = by_sequence.get(e.sequence_nr, "other")
            counts[name] = counts.get(name, 0) + aten_calls(e)
        elif e.name.startswith("aten::") and not _inside_backward(e):
            name = owner(e) or "other"
            counts[name] = counts.get(name, 0) + 1
            if e.sequence_nr >= 0:
                by_sequence.setdefault(e.sequence_nr, name)
    return counts


def _inside_backward(e) -> bool:
    while e is not None:
        if e.name.startswith("autograd::engine::evaluate_function"):
            return True
        e = e.cpu_parent
    return False


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--xray", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    totals = {}
    for name in ("baseline", "optimized"):
        totals[name] = ops_per_train_step(build(name, args.size, args.xray), batch=2)
        counts = per_component(build(name, args.size, args.xray))
        print(f"{name} at {args.size}³ / {args.xray}²: {totals[name]} aten ops per step")
        for part, n in sorted(counts.items(), key=lambda kv: -kv[1]):
            print(f"  {n:6d}  {part}")
    model = build("optimized", args.size, args.xray)
    for block in model.transformer.blocks:
        if block.kind == "attn":
            block.fn = torch.nn.Identity()
    rest = ops_per_train_step(model, batch=2)
    base = totals["baseline"]
    print(f"optimized / baseline: {totals['optimized'] / base:.2f}x")
    print(f"optimized with identity attention: {rest} ({rest / base:.2f}x the baseline); at 1.5x its "
          f"attention blocks may cost {int(1.5 * base) - rest} aten calls in all")


if __name__ == "__main__":
    main()
