"""The quality benchmark: what each optimization buys in reconstruction quality at equal
training wall time.

Variants: the optimized config as given, the baseline (every optimization off, the same
differences as configs/baseline.json vs configs/optimized.json) and the ablations (the
optimized config with one optimization off). "Equal wall time" on a shared, noisy machine:
the train-step time of every variant is measured once, round-robin on the same real batch
(so load from other processes biases none of them), and each variant then trains for
max_steps = budget / step time steps, with the warmup + cosine LR schedule sized to exactly
those steps. Every variant is evaluated on the same held-out test split.
"""
from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from xray2ct.timing import Timing, interleaved, table
from xray2ct.config import Config, load_config, override_config
from xray2ct.errors import UserError

log = logging.getLogger(__name__)

# configs/baseline.json minus configs/optimized.json (a test keeps the two in step)
BASELINE: dict[str, object] = {
    "model.use_cnn_branch": False, "model.use_learnable_priors": False, "model.attention": "mhsa",
    "model.layout": "standard", "model.use_multiscale": False, "model.use_conditioning": False,
    "model.ffn_ratio": 4.0,
}

# name -> (what is off, dotted-key overrides of the optimized config)
VARIANTS: dict[str, tuple[str, dict]] = {
    "optimized": ("nothing", {}),
    "baseline": ("every optimization", BASELINE),
    "no_cnn_branch": ("3D CNN branch", {"model.use_cnn_branch": False}),
    "no_learnable_priors": ("learnable depth priors (fixed)", {"model.use_learnable_priors": False}),
    # multi-scale K/V pooling is part of CGA (MHSA ignores it), so it goes with it
    "mhsa": ("CGA → MHSA (with its multi-scale K/V)", {"model.attention": "mhsa", "model.use_multiscale": False}),
    "standard_layout": ("sandwich → standard layout", {"model.layout": "standard"}),
    "no_multiscale": ("multi-scale K/V in CGA", {"model.use_multiscale": False}),
    "no_conditioning": ("adaptive conditioning", {"model.use_conditioning": False}),
    "no_projection_loss": ("projection-consistency loss", {"loss.projection_weight": 0.0}),
    "no_subvoxel_detail": ("sub-voxel detail in the decoder", {"model.subvoxel_detail": False}),
}

# A tiny model for smoke runs (`xray2ct benchmark --quick`, tests): seconds per variant.
QUICK_OVERRIDES: dict[str, object] = {
    "model.volume_size": 16, "model.xray_img_size": 32, "model.voxel_dim": 32, "model.num_heads": 2,
    "model.xray_feature_dim": 32, "model.encoder_channels": [8, 8, 16, 32], "model.decoder_channels": [16, 8],
    "model.num_attn_blocks": 1, "model.num_ffn_blocks": 1, "model.cnn_expand": 2, "training.batch_size": 2,
}


class QualityBenchmarkError(UserError, ValueError):
    """Bad input to the quality benchmark (unknown variant, unusable budget); the message says which."""


@dataclass
class VariantResult:
    name: str
    off: str  # what this variant turns off
    params: int
    step: Timing  # one optimizer step on the real batch size, interleaved with the other variants
    max_steps: int  # budget / step time
    steps: int  # optimizer steps actually taken
    train_s: float  # wall time of the whole train() call (data loading, checkpoints included)
    metrics: dict = field(default_factory=dict)  # evaluate()'s summary["metrics"]: name -> mean, ci95, n, ...
    run: Path | None = None
    peak_gib: float = float("nan")  # CUDA max allocated in training; nan on CPU (a process's peak RSS only grows)


def parse_variants(names: str | list[str] | None) -> list[str]:
    """'optimized,baseline' or a list -> validated names in the given order; None -> every variant."""
    if names is None:
        return list(VARIANTS)
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        raise QualityBenchmarkError(f"unknown variant(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                                    f"valid: {', '.join(VARIANTS)}")
    return list(dict.fromkeys(names))


def variant_configs(base: Config, names: list[str]) -> dict[str, Config]:
    """The optimized base config with each variant's overrides applied."""
    return {n: override_config(base, VARIANTS[n][1], source=f"quality variant {n!r}") for n in names}


def _real_batch(cfg: Config, data_dir: Path, device: torch.device):
    """The first training batch (augmented as in training) -> xrays, ct on device."""
    from torch.utils.data import DataLoader

    from xray2ct.engine.train import batch_to, make_dataset

    ds = make_dataset(cfg, data_dir, "train", train=True)
    if len(ds) < cfg.training.batch_size:
        raise QualityBenchmarkError(f"{data_dir}: {len(ds)} training case(s), fewer than batch_size "
                                    f"{cfg.training.batch_size}")
    return batch_to(next(iter(DataLoader(ds, batch_size=cfg.training.batch_size))), device), len(ds)


def measure_step_times(configs: dict[str, Config], data_dir: str | Path, device: str = "cpu",
                       repeats: int = 5) -> tuple[dict[str, Timing], dict[str, int], int]:
    """Train-step time of every variant, round-robin on one real batch.

    A step is what train() does per batch: forward, loss (every term the config weights),
    backward, gradient clipping, AdamW step. -> (timings, parameter counts, training cases).
    """
    from xray2ct.engine.train import autocast_for, make_optimizer
    from xray2ct.losses import ReconstructionLoss
    from xray2ct.models import build_model

    dev = torch.device(device)
    first = next(iter(configs.values()))
    (xrays, ct), n_train = _real_batch(first, Path(data_dir), dev)
    steps, params = {}, {}
    for name, cfg in configs.items():
        torch.manual_seed(cfg.training.seed)
        model = build_model(cfg).to(dev).train()
        params[name] = sum(p.numel() for p in model.parameters())
        steps[name] = _train_step(model, ReconstructionLoss.from_config(cfg).to(dev), make_optimizer(model, cfg),
                                  autocast_for(dev, cfg.optimization.use_mixed_precision)[0],
                                  cfg.training.grad_clip_max_norm, xrays, ct)
    return interleaved(steps, device, repeats, rewarm=True), params, n_train


def _train_step(model, loss_fn, optimizer, amp, clip: float, xrays, ct):
    def run():
        with amp:
            loss, _ = loss_fn(model(xrays), ct)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return run


def without_validation(cfg: Config) -> Config:
    """No validation passes while training: every variant is scored on the test split afterwards."""
    return override_config(cfg, {"logging.val_interval": 10**6})


def run_quality(data_dir: str | Path, *, config: str | Path = "configs/cpu-small.json", overrides: dict | None = None,
                budget_s: float = 150.0, variants: str | list[str] | None = None,
                runs_dir: str | Path = "runs/quality", device: str = "cpu", repeats: int = 5) -> list[VariantResult]:
    """Train every variant for the same wall time (by steps, see module docstring) and evaluate it.

    Args:
        data_dir: dataset root (seed layout with splits.json); train / test splits are used.
        config: the optimized config the variants derive from; overrides: dotted keys on top.
        budget_s: training wall time per variant, seconds of measured train steps.
        variants: names from VARIANTS (list or comma-separated); None: all.
        runs_dir: each variant's run goes to runs_dir/<name> (replaced if there).
        repeats: timed train steps per variant (after one warm-up step).
    """
    from xray2ct.engine.evaluate import evaluate
    from xray2ct.engine.train import train

    if not budget_s > 0:
        raise QualityBenchmarkError(f"budget must be > 0 seconds, got {budget_s}")
    data_dir, runs_dir = Path(data_dir), Path(runs_dir)
    if not (data_dir / "splits.json").is_file():
        raise QualityBenchmarkError(f"{data_dir}: no splits.json; the quality benchmark needs a dataset with "
                                    "train/val/test splits (`xray2ct phantoms` or `xray2ct prepare` writes one)")
    names = parse_variants(variants)
    base = load_config(config, overrides=overrides)
    configs = variant_configs(base, names)
    steps, params, _ = measure_step_times(configs, data_dir, device, repeats)
    results = []
    for name, cfg in configs.items():
        max_steps = max(1, round(budget_s / (steps[name].median_ms / 1e3)))
        cfg = without_validation(cfg)
        run = runs_dir / name
        if run.exists():
            shutil.rmtree(run)
        log.info("quality: %s, %d steps (%.0f ms/step)", name, max_steps, steps[name].median_ms)
        t0 = time.perf_counter()
        trained = train(cfg, run, data_dir=data_dir, device=device, progress=False, schedule_steps=max_steps,
                        argv=["xray2ct benchmark --suite quality", name])
        train_s = time.perf_counter() - t0
        if trained.step < max_steps:  # a stop signal or the machine; a shorter run would not compare
            raise QualityBenchmarkError(f"quality variant {name!r} stopped at step {trained.step} of {max_steps}: "
                                        f"{trained.stopped_early or 'unknown reason'}")
        ev = evaluate(run / "last.safetensors", data_dir, split="test", out=run / "eval_test", device=device,
                      montages=0, progress=False, refine=False)  # the networks are compared
        results.append(VariantResult(name, VARIANTS[name][0], params[name], steps[name], max_steps, trained.step,
                                     train_s, ev.summary["metrics"], run,
                                     trained.peak_gib if device.startswith("cuda") else float("nan")))
    return results


def _mean_ci(m: dict, digits: int) -> str:
    if m.get("ci95") is None:
        return f"{m['mean']:.{digits}f}"
    return f"{m['mean']:.{digits}f} ± {(m['ci95'][1] - m['ci95'][0]) / 2:.{digits}f}"


def quality_table(results: list[VariantResult]) -> str:
    """Markdown table, one row per variant; ΔPSNR against the optimized variant when it ran."""
    ref = next((r for r in results if r.name == "optimized"), None)
    memory = any(math.isfinite(r.peak_gib) for r in results)  # measured on CUDA only
    rows = []
    for r in results:
        delta = f"{r.metrics['psnr']['mean'] - ref.metrics['psnr']['mean']:+.2f}" if ref else "–"
        rows.append([f"`{r.name}`", r.off, f"{r.params / 1e6:.2f} M", str(r.step), r.steps, f"{r.train_s:.1f}",
                     *([f"{r.peak_gib:.2f}"] if memory else []), _mean_ci(r.metrics["psnr"], 2),
                     _mean_ci(r.metrics["ssim3d"], 3), _mean_ci(r.metrics["mae_hu"], 1), delta])
    return table(["variant", "turned off", "params", "train step ms", "steps", "train s",
                  *(["peak GiB (CUDA)"] if memory else []), "PSNR dB", "3D SSIM", "MAE HU", "ΔPSNR vs optimized"],
                 rows)
