"""Cross-family generalization of the phantom generators (issue #15): the cpu-small recipe
trained on v1 and on v2 phantoms for the same number of optimizer steps (equal wall time:
one model, one step time, measured once), each scored on both families' test splits.

The goal of #15: v2-trained weights lose less on v1 than v1-trained weights lose on v2.
Costs about 2 × budget plus data generation (n phantoms per family); run it when the
machine is free:

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/cross_family.py --budget 1200 --n 400 --out runs/cross_family

Writes out/cross_family.md (the table) and out/cross_family.json (the numbers).
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

FAMILIES = (1, 2)  # phantom generator versions


def main(out: Path, budget_s: float, n: int, config: str, seed: int, workers: int, device: str) -> dict:
    from xray2ct.config import load_config
    from xray2ct.data.prepare import make_phantom_dataset
    from xray2ct.engine.evaluate import evaluate
    from xray2ct.engine.train import train
    from xray2ct.quality import measure_step_times, without_validation

    cfg = without_validation(load_config(config))
    data = {v: out / f"data-v{v}" for v in FAMILIES}
    for v, folder in data.items():
        make_phantom_dataset(folder, n=n, size=cfg.model.volume_size, seed=seed, xray_size=cfg.model.xray_img_size,
                             workers=workers, version=v, progress=True)
    step = measure_step_times({"recipe": cfg}, data[1], device)[0]["recipe"]
    steps = max(1, round(budget_s / (step.median_ms / 1e3)))
    scores = {}
    for v in FAMILIES:
        run = out / f"run-v{v}"
        if run.exists():
            shutil.rmtree(run)
        trained = train(cfg, run, data_dir=data[v], device=device, progress=True, schedule_steps=steps,
                        argv=["benchmarks/cross_family.py", f"v{v}"])
        for w in FAMILIES:
            ev = evaluate(run / "last.safetensors", data[w], split="test", out=run / f"eval-v{w}", device=device,
                          montages=0, progress=False, refine=False)  # the networks are compared
            scores[f"v{v}->v{w}"] = {k: ev.summary["metrics"][k]["mean"] for k in ("psnr", "ssim3d", "mae_hu")}
        scores[f"v{v}_steps"] = trained.step
    loss = {v: scores[f"v{v}->v{v}"]["psnr"] - scores[f"v{v}->v{3 - v}"]["psnr"] for v in FAMILIES}
    md = [f"cpu-small ({config}), {steps} steps per family ({step.median_ms:.0f} ms/step, budget {budget_s:g} s), "
          f"{n} phantoms per family at {cfg.model.volume_size}³ (dataset seed {seed}); test-split means.", "",
          "| trained on | PSNR on v1 | PSNR on v2 | SSIM on v1 | SSIM on v2 | loss off its family (dB) |",
          "|---|---|---|---|---|---|"]
    for v in FAMILIES:
        a, b = scores[f"v{v}->v1"], scores[f"v{v}->v2"]
        md.append(f"| v{v} | {a['psnr']:.2f} | {b['psnr']:.2f} | {a['ssim3d']:.4f} | {b['ssim3d']:.4f} "
                  f"| {loss[v]:.2f} |")
    md += ["", f"Goal (v2 loses less on v1 than v1 on v2): {'met' if loss[2] < loss[1] else 'not met'}."]
    (out / "cross_family.md").write_text("\n".join(md) + "\n")
    (out / "cross_family.json").write_text(json.dumps({"steps": steps, "step_ms": step.median_ms, **scores}, indent=1))
    print("\n".join(md))
    return scores


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/cross_family"), help="folder for data, runs and the table")
    ap.add_argument("--budget", type=float, default=1200.0, help="training wall time per family, seconds")
    ap.add_argument("--n", type=int, default=400, help="phantoms per family")
    ap.add_argument("--config", default="configs/cpu-small.json", help="the training recipe")
    ap.add_argument("--seed", type=int, default=0, help="dataset seed (the same for both families)")
    ap.add_argument("--workers", type=int, default=1, help="processes generating phantoms")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    main(a.out, a.budget, a.n, a.config, a.seed, a.workers, a.device)
