"""`xray2ct demo`: the main job on what ships with the package, no download.

Default: the bundled weights reconstruct the bundled examples (PNG/JPEG pairs, a DICOM pair
with real-world acquisition tags, a PA-only film), each with the acquisition its files carry
(`xray2ct.acquisition`); each volume is written as NIfTI (HU) with a three-plane preview,
refined against its X-rays, and compared with its ground truth, the network's own volume
beside the refined one.
`--train`: the whole pipeline for a newcomer: phantoms -> short training -> evaluation
-> reconstruction, within a time budget.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Iterator

EXAMPLES = "assets/examples"
DEFAULT = "assets/default"


class Result(str):
    """A line of the demo's results: the CLI prints these on stdout, every other line (progress) on stderr."""


@dataclass(frozen=True)
class Example:
    id: str
    pa: Path
    lat: Path | None  # None: a frontal film alone
    ct: Path | None  # ground truth, when known

    @property
    def mode(self) -> str:
        return "biplanar" if self.lat is not None else "frontal only"


def bundled_examples(folder: Path | None = None, pairs_only: bool = False) -> list[Example]:
    """Examples `{id}_pa.*` with `{id}_lat.*` (or without: a PA-only case) and optional
    `{id}_ct.nii.gz`, sorted by id. Sidecars (`*.json`) are acquisition records, not films."""
    folder = folder or Path(str(files("xray2ct"))) / EXAMPLES
    out = []
    for pa in sorted(p for p in folder.glob("*_pa.*") if p.suffix != ".json"):
        case = pa.name.rsplit("_pa.", 1)[0]
        lat = next(iter(sorted(p for p in folder.glob(f"{case}_lat.*") if p.suffix != ".json")), None)
        ct = folder / f"{case}_ct.nii.gz"
        if lat is not None or not pairs_only:
            out.append(Example(case, pa, lat, ct if ct.is_file() else None))
    return out


def ground_truth_metrics(volume, ct_path: Path) -> dict[str, float]:
    """PSNR (dB), 3D SSIM and MAE (HU) of a normalized volume (1, 1, N, N, N) against a ground-truth
    CT file in HU; {} when the shapes differ (a model of another size)."""
    import numpy as np
    import torch

    from xray2ct.data.ctio import load_volume
    from xray2ct.metrics import mae_hu, psnr, ssim3d
    from xray2ct.physics.hu import hu_to_unit

    gt = hu_to_unit(torch.from_numpy(np.ascontiguousarray(load_volume(ct_path)[0])))[None, None]
    if gt.shape != volume.shape:
        return {}
    pred = volume.float()
    return {"psnr": psnr(pred, gt).item(), "ssim": ssim3d(pred, gt).item(), "mae": mae_hu(pred, gt).item()}


def run_demo(out: str | Path, device: str = "cpu") -> Iterator[str]:
    """Reconstruct every bundled example with the bundled weights; yields report lines."""
    from tqdm import tqdm

    from xray2ct.engine.inference import default_checkpoint, load_for_inference
    from xray2ct.engine.outputs import save_preview, save_volume
    from xray2ct.engine.reconstruct import load_study_for, reconstruct_pair
    from xray2ct.engine.refining import RefineOptions

    started = time.monotonic()
    out = Path(out)
    ckpt = default_checkpoint()
    model, cfg, dev = load_for_inference(ckpt, device)
    examples = bundled_examples()
    yield f"model: {ckpt.name} ({cfg.model.volume_size}³ from {cfg.model.xray_img_size}² X-rays), {len(examples)} examples"
    rows = []
    for ex in tqdm(examples, desc="reconstruct", unit="case"):
        study = load_study_for(model, cfg, ex.pa, ex.lat)  # the acquisition each file carries
        rec = reconstruct_pair(model, cfg, dev, study.xrays, refine=RefineOptions(), geometry=study.geometry,
                               present=study.present)
        save_volume(out / f"{ex.id}.nii.gz", rec.hu, rec.spacing, "nifti", description=study.descrip())
        save_preview(out / f"{ex.id}_preview.png", rec.hu, rec.std_hu, title=f"{ex.id} (reconstruction)",
                     spacing=rec.spacing)
        row = {"id": ex.id, "views": "PA + lateral" if study.mode == "biplanar" else study.mode,
               "acquisition": study.acquisitions[0].short(),
               **(ground_truth_metrics(rec.volume, ex.ct) if ex.ct is not None else {})}
        if ex.ct is not None and rec.network is not None:
            row["network_psnr"] = ground_truth_metrics(rec.network, ex.ct).get("psnr")
        row["note"] = "   not refined: film wider than the field" if rec.refine_skipped else ""
        rows.append(row)
    yield Result("against the ground truth, refined against the X-rays (physics); in brackets the network alone")
    for r in rows:
        head = f"{r['id']:<26} {r['views']:<13} {r['acquisition']:<26}"
        if "psnr" in r:
            before = f" ({r['network_psnr']:.2f})" if r.get("network_psnr") is not None else ""
            yield Result(f"{head} PSNR {r['psnr']:.2f} dB{before}   SSIM {r['ssim']:.3f}   MAE {r['mae']:.0f} HU{r['note']}")
        else:
            yield Result(f"{head} (no ground truth)")
    yield Result(f"volumes (NIfTI, HU) and previews: {out.resolve()}  [{time.monotonic() - started:.1f} s]")


def run_training_demo(out: str | Path, budget_minutes: float = 5.0, n: int = 60, device: str = "auto",
                      config: str | Path | None = None) -> Iterator[str]:
    """phantoms -> train (time budget) -> evaluate -> reconstruct, in `out`."""
    from xray2ct.config import load_config
    from xray2ct.data.prepare import make_phantom_dataset
    from xray2ct.engine.evaluate import evaluate
    from xray2ct.engine.reconstruct import reconstruct
    from xray2ct.engine.train import train

    out = Path(out)
    config = config or Path(str(files("xray2ct"))) / DEFAULT / "config.json"
    cfg = load_config(config, overrides={"data.num_workers": 0})
    data = out / "phantoms"
    yield f"1/4 generating {n} phantoms ({cfg.model.volume_size}³) in {data}"
    make_phantom_dataset(data, n=n, size=cfg.model.volume_size, seed=0, xray_size=cfg.model.xray_img_size)
    yield f"2/4 training {config} for up to {budget_minutes:g} min"
    run = out / "run"
    if run.exists():
        shutil.rmtree(run)
    result = train(cfg, run, data_dir=data, device=device, time_budget_s=budget_minutes * 60, argv=["demo", "--train"])
    yield f"    trained {result.step} steps; {result.stopped_early or 'all epochs done'}"
    yield "3/4 evaluating on the test split"
    ev = evaluate(run, data, split="test", out=out / "eval", device=device, montages=2)
    for key in ("psnr", "ssim3d", "mae_hu"):
        s = ev.summary["metrics"][key]
        ci = f"95% CI {s['ci95'][0]:.3f}…{s['ci95'][1]:.3f}, " if s["ci95"] else ""
        yield Result(f"    {key}: {s['mean']:.3f} ({ci}n={s['n']})")
    r = ev.summary["refinement"]
    if r["refined"]:  # scored as `reconstruct` makes it: refined against the X-rays
        yield Result(f"    refined against the X-rays: PSNR {r['psnr_gain_db']['mean']:+.2f} dB over the network alone")
    case = ev.per_case[0]["id"]
    yield f"4/4 reconstructing test case {case}"
    vol = reconstruct(data / case / f"{case}_pa_drr.png", data / case / f"{case}_lat_drr.png", out / f"{case}.nii.gz",
                      checkpoint=run, preview=out / f"{case}_preview.png", device=device, overwrite=True)
    yield Result(f"done: volume {vol}, evaluation in {out / 'eval'}")
