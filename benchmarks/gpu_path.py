"""The GPU-path measurements of issue #19, run by benchmarks/gpu_session.sh.

    python benchmarks/gpu_path.py steps OUT.json [--size 64 --xray 512 --batch 2 --device cuda --mem128]
        baseline and optimized: training step (forward, backward, AdamW) and inference
        forward, eager and as one captured CUDA graph (torch.cuda.CUDAGraph, whole step,
        after 3 warm-up steps on a side stream), bf16 autocast on CUDA; peak memory; aten
        ops per step (CPU profiler). --mem128: configs/gpu-128.json, batch 2, peak memory.
    python benchmarks/gpu_path.py compare RUN DATA OUT.json [--device cuda]
        the trained 64³ run (its best checkpoint, else its last) against the bundled 32³ model upsampled
        (trilinear) to 64³, on the test split of DATA: PSNR, 3D SSIM, MAE (HU).

Where a graph cannot be captured (CPU, or a capture error) the row says why: nothing else
in the session depends on it.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F


def _autocast(device: torch.device):
    # cache_enabled=False: autocast's weight-cast cache must not outlive a graph capture
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
    return nullcontext()


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device, repeats=10) -> float:
    """Median ms of fn() over repeats, after 2 warm-up calls (1 for a smoke run of <= 2 repeats)."""
    for _ in range(2 if repeats > 2 else 1):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def _peak(device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def _build(name: str, size: int, xray: int, device):
    from xray2ct.config import load_config
    from xray2ct.models import build_model

    over = {"model.volume_size": size, "model.xray_img_size": xray} if name != "gpu-128" else {}
    torch.manual_seed(0)
    cfg = load_config(f"configs/{name}.json", overrides=over)
    return build_model(cfg).to(device).train(), cfg


def _train_step(model, opt, x, device):
    def step():
        opt.zero_grad(set_to_none=False)  # the captured graph keeps writing into the same .grad
        with _autocast(device):
            out = model(x)
            loss = out["volume"].float().mean() + out["log_var"].float().mean()
        loss.backward()
        opt.step()
    return step


def _graphed(fn, device):
    """fn captured as one CUDA graph after warm-up on a side stream -> replay, or the reason it failed."""
    if device.type != "cuda":
        return None, f"no CUDA graphs on {device.type}"
    try:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return graph.replay, None
    except Exception as e:  # a capture error is a result to report, not a crash of the session
        return None, f"capture failed: {type(e).__name__}: {str(e)[:200]}"


def steps(args) -> dict:
    from xray2ct.benchmark import ops_per_train_step

    device = torch.device(args.device)
    results = {"size": args.size, "xray": args.xray, "batch": args.batch,
               "dtype": "bf16" if device.type == "cuda" else "fp32", "rows": []}
    for name in ("baseline", "optimized"):
        ops = ops_per_train_step(_build(name, 32, 128, "cpu")[0], batch=2)  # the count: 32³ / 128²
        for graphs in (False, True):
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            model, cfg = _build(name, args.size, args.xray, device)
            x = torch.rand(args.batch, 2, cfg.model.xray_img_size, cfg.model.xray_img_size, device=device)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, capturable=device.type == "cuda")
            train, infer = _train_step(model, opt, x, device), None
            note = ""
            if graphs:
                train, note = _graphed(train, device)
            row = {"model": name, "graphs": graphs, "ops_per_step_32": ops, "note": note or ""}
            if train is not None:
                row["train_ms"] = _time(train, device, args.repeats)
                row["train_peak_gib"] = _peak(device)

                def forward():
                    with torch.no_grad(), _autocast(device):
                        model(x)
                model.eval()
                infer, why = (forward, None) if not graphs else _graphed(forward, device)
                row["inference_ms"] = _time(infer, device, args.repeats) if infer else None
                row["note"] = row["note"] or (why or "")
            results["rows"].append(row)
            print(json.dumps(row), flush=True)
            del model, opt
    if args.mem128:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        model, cfg = _build("gpu-128", 0, 0, device)
        s = cfg.model.xray_img_size
        x = torch.rand(2, 2, s, s, device=device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        ms = _time(_train_step(model, opt, x, device), device, repeats=2)
        results["gpu128"] = {"batch": 2, "train_ms": ms, "peak_gib": _peak(device)}
        print(json.dumps(results["gpu128"]), flush=True)
    return results


def compare(args) -> dict:
    """The 64³ run vs the bundled 32³ model upsampled, on DATA's test split."""
    from xray2ct.data.dataset import BiplanarDataset
    from xray2ct.engine.inference import default_checkpoint, load_for_inference, predict
    from xray2ct.metrics import mae_hu, psnr, ssim3d

    device = torch.device(args.device)
    models = {"gpu-64": load_for_inference(args.run, str(device)), "bundled-32-upsampled": load_for_inference(
        default_checkpoint(), str(device))}
    scores = {}
    for name, (model, cfg, dev) in models.items():
        ds = BiplanarDataset(args.data, split="test", xray_size=cfg.model.xray_img_size)
        per = {"psnr": [], "ssim3d": [], "mae_hu": []}
        for item in ds:
            xrays = torch.cat([item["pa"], item["lat"]])[None]  # (1, 2, S, S)
            with torch.no_grad(), _autocast(dev):
                pred, _ = predict(model, xrays, dev)
            ct = item["ct"][None]  # (1, 1, N, N, N), the data's own size
            if pred.shape != ct.shape:
                pred = F.interpolate(pred, size=ct.shape[-3:], mode="trilinear", align_corners=False).clamp(0, 1)
            for k, fn in (("psnr", psnr), ("ssim3d", ssim3d), ("mae_hu", mae_hu)):
                per[k].append(float(fn(pred, ct).mean()))
        scores[name] = {k: statistics.mean(v) for k, v in per.items()} | {"n": len(ds)}
        print(name, json.dumps(scores[name]), flush=True)
    scores["gpu-64 beats upsampled 32³ (PSNR)"] = scores["gpu-64"]["psnr"] > scores["bundled-32-upsampled"]["psnr"]
    return scores


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("steps")
    s.add_argument("out")
    s.add_argument("--size", type=int, default=64)
    s.add_argument("--xray", type=int, default=512)
    s.add_argument("--batch", type=int, default=2)
    s.add_argument("--repeats", type=int, default=10)
    s.add_argument("--device", default="cuda")
    s.add_argument("--mem128", action="store_true")
    c = sub.add_parser("compare")
    c.add_argument("run")
    c.add_argument("data")
    c.add_argument("out")
    c.add_argument("--device", default="cuda")
    args = p.parse_args()
    result = steps(args) if args.cmd == "steps" else compare(args)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
