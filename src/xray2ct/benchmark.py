"""Benchmark suites behind `xray2ct benchmark`: timing with warm-up and repeats, results as
markdown tables (and figures in images/ beside it) written into their own section of
docs/BENCHMARKS.md. Each suite returns a SuiteResult: the markdown plus the numbers behind it.

Only torch/numpy at import time so the suites run on a GPU machine without MONAI/nibabel.
"""
from __future__ import annotations

import os
import platform
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from xray2ct.fileio import atomic_path
# the timing helpers live in timing.py (quality.py uses them too, without importing the suites)
from xray2ct.timing import Timing, interleaved as _interleaved, table, time_fn  # noqa: F401


@dataclass
class SuiteResult:
    markdown: str  # the section body: tables, figure links
    data: dict = field(default_factory=dict)  # the numbers behind the tables
    images: list[Path] = field(default_factory=list)  # figures written

    def __str__(self) -> str:
        return self.markdown

    def figure(self, images_dir: str | os.PathLike, name: str, device: str, alt: str) -> Path:
        """Register the figure `images_dir/{name}-{device}.png` (the caller draws it there) and
        link it from the markdown, relative to the markdown file beside images_dir."""
        png = Path(images_dir) / f"{name}-{device.replace(':', '')}.png"
        self.images.append(png)
        self.markdown += f"\n\n![{alt}]({png.parent.name}/{png.name})"
        return png


def machine_line(device: str = "cpu") -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        what = torch.cuda.get_device_name()
    else:
        what = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    return f"{what}; torch {torch.__version__}; {time.strftime('%Y-%m-%d')}"


# --- suites ---------------------------------------------------------------------
def projector_suite(device: str = "cpu", sizes=(64, 128, 256), det: int = 256, quick: bool = False) -> SuiteResult:
    """Both views of an N³ volume onto det² detectors, forward and forward+backward."""
    from xray2ct import Geometry, project

    rows, data = [], {}
    for n in sizes:
        g = Geometry(volume_shape=(n, n, n), voxel_mm=320.0 / n, det_shape=(det, det))
        mu = (torch.rand(1, 1, n, n, n, device=device) * 0.02).requires_grad_(True)
        reps = 2 if quick else 5
        with torch.no_grad():
            fwd = time_fn(lambda: project(mu, g), device, warmup=1, repeats=reps)
        both = time_fn(lambda: project(mu, g).sum().backward(), device, warmup=1, repeats=reps)
        rows.append([f"{n}³ → 2×{det}²", str(fwd), str(both)])
        data[n] = {"forward": fwd, "forward_backward": both}
    return SuiteResult("Cone-beam DRRs of both views (PA + lateral) with `xray2ct.project`, float32, batch 1:\n\n"
                       + table(["volume → detectors", "forward ms", "forward+backward ms"], rows), data)


def data_suite(size: int = 64, n: int = 5) -> SuiteResult:
    """Phantom generation speed per generator version (one process)."""
    from xray2ct.data.phantoms import VERSIONS, chest_phantom

    rows, data = [], {}
    for version in VERSIONS:
        t = time_fn(lambda: chest_phantom(size=size, seed=1, version=version), warmup=1, repeats=n)
        rows.append([f"v{version}", f"{size}³", str(t), f"{1e3 / t.median_ms:.1f}"])
        data[f"v{version}"] = {size: t}
    return SuiteResult(table(["generator", "phantom size", "ms per phantom", "phantoms / s"], rows), data)


def _fwd_bwd(module, x):
    def run():
        module.zero_grad(set_to_none=True)
        out = module(x)
        out = out["volume"].mean() + out["log_var"].mean() if isinstance(out, dict) else out.float().mean()
        out.backward()
    return run


def components_suite(device: str = "cpu", grids=(8, 16), dim: int = 256, heads: int = 8, repeats: int = 5,
                     images_dir: str | os.PathLike | None = None) -> SuiteResult:
    """Attention variants (fwd+bwd) and sandwich vs standard layout (activation memory).

    images_dir: folder beside the markdown file for the speed-vs-tokens plot (None: no plot).
    data: {"attention": {variant: {tokens: Timing}}, "activation_bytes": {layout: bytes}}.
    """
    from xray2ct.models.attention import build_attention
    from xray2ct.models.blocks import TransformerStack
    from xray2ct.models.summary import saved_activation_bytes

    variants = {"MHSA": dict(kind="mhsa"), "CGA (faithful)": dict(kind="cga"),
                "CGA + multi-scale K/V": dict(kind="cga", multiscale=True)}
    rows, attn_times = [], {name: {} for name in variants}
    for g in grids:
        x = torch.randn(1, g**3, dim, device=device)
        mods = {}
        for name, kw in variants.items():
            torch.manual_seed(0)
            mods[name] = build_attention(dim=dim, num_heads=heads, grid=(g, g, g), key_dim=16, kv_pool=2, **kw).to(device)
        t = _interleaved({k: _fwd_bwd(m, x) for k, m in mods.items()}, device, repeats)
        for name, m in mods.items():
            attn_times[name][g**3] = t[name]
            params = sum(p.numel() for p in m.parameters())
            rows.append([f"{g**3} ({g}³)", name, f"{params:,}", str(t[name]),
                         f"{t['MHSA'].median_ms / t[name].median_ms:.2f}×"])
    attn = table(["tokens", "attention", "params", "fwd+bwd ms", "speed vs MHSA"], rows)

    g = grids[-1]
    x = torch.randn(1, g**3, dim, device=device)
    rows = []
    mem = {}
    for layout in ("standard", "sandwich"):
        torch.manual_seed(0)
        stack = TransformerStack(dim=dim, num_heads=heads, grid=(g, g, g), num_attn_blocks=2, num_ffn_blocks=4,
                                 layout=layout, attention="cga", multiscale=True).to(device)
        mem[layout] = saved_activation_bytes(stack, x)
        rows.append([layout, " → ".join(stack.layout_names), f"{mem[layout] / 2**20:.1f}"])
    rows[-1].append(f"{mem['sandwich'] / mem['standard']:.2f}×")
    rows[0].append("1.00×")
    layout = table(["layout (2 attn + 4 FFN, equal depth)", "blocks", "activations saved, MiB", "vs standard"], rows)
    result = SuiteResult(
        f"Attention, width {dim}, {heads} heads, batch 1, median ± IQR/2 of {repeats} interleaved runs:\n\n"
        f"{attn}\n\nTransformer stack at {g**3} tokens (CGA + multi-scale in both):\n\n{layout}",
        {"attention": attn_times, "activation_bytes": mem})
    if images_dir is not None:
        from xray2ct.benchmark_plots import plot_attention_speed

        png = result.figure(images_dir, "attention-speed", device, "attention fwd+bwd time vs tokens")
        plot_attention_speed({k: {n: t.median_ms for n, t in v.items()} for k, v in attn_times.items()}, png,
                             title=f"attention fwd+bwd, width {dim}, {heads} heads, {device}")
    return result


def ops_per_train_step(model: torch.nn.Module, batch: int = 2) -> int:
    """aten operators dispatched by one training step (forward + backward of the mean volume),
    counted by the torch profiler on the CPU, nested calls included.

    On a GPU each of these is a kernel launch or a host-side call, so their number is the
    launch overhead of a step, measurable without a GPU. The step is run once before (so
    caches are built) and its gradients are kept, as the acceptance check does: the counted
    step accumulates into .grad (one add_ per parameter)."""
    from torch.profiler import ProfilerActivity, profile

    s = model.xray_size
    x = torch.rand(batch, len(model.lifting.views), s, s)
    model = model.cpu().train()

    def step():
        model(x)["volume"].float().mean().backward()

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    model.zero_grad(set_to_none=True)
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))


def _peak_train_memory(config_path: str, overrides: dict, batch: int, device: str) -> float:
    """Peak memory (GiB) of one training step in a fresh process: CUDA max allocated, or CPU peak RSS."""
    import json
    import subprocess
    import sys

    code = f"""
import json, torch
from xray2ct.config import load_config
from xray2ct.engine.train import peak_memory_gib
from xray2ct.models import build_model
cfg = load_config({config_path!r}, overrides=json.loads({json.dumps(json.dumps(overrides))}))
m = build_model(cfg).to({device!r}); s = cfg.model.xray_img_size
x = torch.rand({batch}, 2, s, s, device={device!r})
out = m(x); (out["volume"].mean() + out["log_var"].mean()).backward()
print(peak_memory_gib(torch.device({device!r})))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(r.stdout.strip().splitlines()[-1])


def model_suite(device: str = "cpu", sizes=(32, 64), repeats: int = 3, memory: bool = True) -> SuiteResult:
    """Optimized vs baseline config at each volume size: params, train step, inference, peak memory."""
    from xray2ct.config import load_config
    from xray2ct.models import build_model

    rows, data = [], {}
    for n in sizes:
        over = {"model.volume_size": n, "model.xray_img_size": 512 if n >= 64 else (256 if n >= 32 else 64)}
        models, x = {}, None
        for name in ("baseline", "optimized"):
            torch.manual_seed(0)
            cfg = load_config(f"configs/{name}.json", overrides=over)
            models[name] = build_model(cfg).to(device)
            x = torch.rand(1, 2, cfg.model.xray_img_size, cfg.model.xray_img_size, device=device)

        def infer(m):
            def run():
                with torch.no_grad():
                    m.eval()(x)
                m.train()
            return run

        train = _interleaved({k: _fwd_bwd(m, x) for k, m in models.items()}, device, repeats)
        inf = _interleaved({k: infer(m) for k, m in models.items()}, device, repeats)
        peak = {k: _peak_train_memory(f"configs/{k}.json", over, 2, device) if memory else float("nan")
                for k in models}
        params = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
        ops = {k: ops_per_train_step(m) for k, m in models.items()}  # on the CPU, after the timings
        for k in models:
            rows.append([f"{n}³ / {over['model.xray_img_size']}²", k, f"{params[k] / 1e6:.2f} M", str(train[k]),
                         str(inf[k]), f"{peak[k]:.2f}", f"{ops[k]:,}"])
        data[n] = {k: {"params": params[k], "train": train[k], "inference": inf[k], "peak_gib": peak[k],
                       "ops_per_step": ops[k]} for k in models}
        b, o = "baseline", "optimized"
        rows.append([f"{n}³", "**optimized / baseline**", f"{params[o] / params[b]:.2f}×",
                     f"{train[b].median_ms / train[o].median_ms:.2f}× faster",
                     f"{inf[b].median_ms / inf[o].median_ms:.2f}× faster", f"{peak[o] / peak[b]:.2f}×",
                     f"{ops[o] / ops[b]:.2f}×"])
        del models
    mem = "CUDA max allocated" if device.startswith("cuda") else "process peak RSS"
    return SuiteResult(table(["volume / X-rays", "model", "params", "train step ms (batch 1)", "inference ms (batch 1)",
                             f"peak GiB, train step batch 2 ({mem})",
                             "ops/step (aten, fwd+bwd, batch 2, CPU profiler)"], rows), data)


def quality_suite(data_dir: str | os.PathLike, device: str = "cpu", *,
                  config: str | os.PathLike = "configs/cpu-small.json", overrides: dict | None = None,
                  budget_s: float = 150.0, variants: str | list[str] | None = None,
                  runs_dir: str | os.PathLike = "runs/quality", repeats: int = 5,
                  images_dir: str | os.PathLike | None = None) -> SuiteResult:
    """Optimized vs baseline vs one-optimization-off ablations at equal training wall time
    (`xray2ct.quality.run_quality`), evaluated on the test split; optional trade-off plot.

    data: {"variants": [VariantResult, ...]}.
    """
    from xray2ct.config import load_config
    from xray2ct.quality import quality_table, run_quality

    batch = load_config(config, overrides=overrides).training.batch_size
    results = run_quality(data_dir, config=config, overrides=overrides, budget_s=budget_s, variants=variants,
                          runs_dir=runs_dir, device=device, repeats=repeats)
    n_test = results[0].metrics["psnr"]["n"]
    markdown = (
        f"Each variant trains `{config}`{' with overrides' if overrides else ''} with the named optimization off "
        f"(the baseline: every switch in which configs/baseline.json differs from configs/optimized.json, FFN "
        f"ratio 4 included) on `{data_dir}` for the same wall time, {budget_s:g} s of train steps: its step "
        f"time is measured first (batch {batch}, median ± IQR/2 of {repeats} steps, all variants "
        f"round-robin on one real batch), then it trains max_steps = budget / step time steps with the "
        f"warmup + cosine LR schedule ending at that step. Scores on the {n_test} test cases: mean ± 95% CI "
        f"(t-distribution); one training seed per variant. *train s* is the whole run (data loading, "
        f"checkpoints) and *steps* the optimizer steps taken.\n\n{quality_table(results)}")
    result = SuiteResult(markdown, {"variants": results})
    if images_dir is not None:
        from xray2ct.benchmark_plots import plot_quality_tradeoff

        png = result.figure(images_dir, "quality-tradeoff", device, "test PSNR vs train-step time per variant")
        plot_quality_tradeoff([{"name": r.name, "step_ms": r.step.median_ms, "psnr": r.metrics["psnr"]["mean"],
                                "ci95": r.metrics["psnr"]["ci95"]} for r in results], png,
                              title=f"test PSNR vs train-step time at {budget_s:g} s per variant ({device})")
    return result


def refine_suite(device: str = "cpu", checkpoint=None, quick: bool = False, images_dir=None) -> SuiteResult:
    """Refinement and calibration on fresh phantoms (`xray2ct.refine_suite`)."""
    from xray2ct.refine_suite import refine_suite as run

    sizes = dict(n_val=2, n_test=2, n_curve=1, n_fine=1) if quick else {}
    return run(checkpoint, device, images_dir=images_dir, quick=quick, **sizes)


def robustness_suite(device: str = "cpu", checkpoint=None, quick: bool = False, images_dir=None,
                     refine: bool = False) -> SuiteResult:
    """Real acquisitions, geometry known vs assumed, on fresh phantoms (`xray2ct.robustness`);
    refine: the refined volumes scored too."""
    from xray2ct.robustness import robustness_suite as run

    return run(checkpoint, device, n=2 if quick else 8, quick=quick, images_dir=images_dir, refine=refine)


def loader_suite(device: str = "cpu", quick: bool = False) -> SuiteResult:
    """Training samples/s, films rendered per step vs stored DRRs (`xray2ct.loader_suite`)."""
    from xray2ct.loader_suite import loader_suite as run

    if quick:
        from xray2ct.quality import QUICK_OVERRIDES

        return run(device, n=4, repeats=2, overrides=QUICK_OVERRIDES)
    return run(device)


def anatomy_suite(n: int = 200, size: int = 64, images_dir=None) -> SuiteResult:
    """Realism of the phantom generators beside published adult ranges (`data.phantoms.realism`)."""
    from xray2ct.data.phantoms.realism import report

    return report(n=n, size=size, images_dir=images_dir)


SUITES = {"projector": projector_suite, "data": data_suite, "loader": loader_suite, "components": components_suite,
          "model": model_suite, "quality": quality_suite, "refine": refine_suite, "robustness": robustness_suite,
          "anatomy": anatomy_suite}
# studies of the model on fresh phantoms (each tens of minutes on a CPU): run by name, not by "all"
STUDIES = ("refine", "robustness", "anatomy")


def run_suite(name: str, device: str = "cpu", quick: bool = False, images_dir: str | os.PathLike | None = None,
              **quality_options) -> SuiteResult:
    """One suite at its default sizes, or tiny ones with quick=True (a smoke run).

    quality_options: quality_suite's keyword arguments (data_dir is required for "quality");
        "refine" takes `checkpoint` from them, "robustness" `checkpoint` and `refine`, "anatomy" `n`
        (phantoms per generator).
    """
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; valid: {', '.join(SUITES)}")
    if name == "projector":
        return projector_suite(device, sizes=(16, 32) if quick else (64, 128, 256), det=32 if quick else 256,
                               quick=quick)
    if name == "data":
        return data_suite(size=16 if quick else 64, n=2 if quick else 5)
    if name == "loader":
        return loader_suite(device, quick=quick)
    if name == "components":
        # 512, 4096 and 32768 tokens: the 16³ and 32³ token grids are where attention's cost shows
        return components_suite(device, grids=(2, 4) if quick else (8, 16, 32), dim=32 if quick else 256,
                                heads=2 if quick else 8, repeats=2 if quick else 3, images_dir=images_dir)
    if name == "model":
        return model_suite(device, sizes=(16,) if quick else (32, 64), repeats=1 if quick else 3, memory=not quick)
    if name == "anatomy":
        return anatomy_suite(n=8 if quick else quality_options.get("n") or 200, size=32 if quick else 64,
                             images_dir=images_dir)
    if name == "robustness":
        return robustness_suite(device, checkpoint=quality_options.get("checkpoint"), quick=quick,
                                images_dir=images_dir, refine=quality_options.get("refine", False))
    if name == "refine":
        return refine_suite(device, checkpoint=quality_options.get("checkpoint"), quick=quick, images_dir=images_dir)
    if quick:
        from xray2ct.quality import QUICK_OVERRIDES

        quality_options = {"repeats": 2, **quality_options,
                           "overrides": {**QUICK_OVERRIDES, **(quality_options.get("overrides") or {})}}
    return quality_suite(device=device, images_dir=images_dir, **quality_options)


def write_section(path: str | os.PathLike, suite: str, body: str | SuiteResult, command: str, device: str) -> None:
    """Replace (or append) the suite's section in a markdown file, atomically."""
    path = Path(path)
    text = path.read_text() if path.exists() else "# Benchmarks\n\nEvery table names the command and machine that produced it.\n"
    start, end = f"<!-- suite:{suite}:{device} -->", f"<!-- /suite:{suite}:{device} -->"
    section = (f"{start}\n## {suite} ({device})\n\nCommand: `{command}`  \nMachine: {machine_line(device)}\n\n"
               f"{str(body)}\n{end}")
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)
