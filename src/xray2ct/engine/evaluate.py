"""`xray2ct evaluate`: a checkpoint on a dataset split -> per-case metrics, summary, montages.

Metrics per case (METRICS below lists unit and protocol of each):
  ours            psnr, ssim3d, mae_hu                 (xray2ct.metrics, DESIGN.md)
  X2CT-GAN        x2ct_psnr (PSNR-avg, the published tables' PSNR), x2ct_psnr_3d,
                  x2ct_ssim (SSIM-avg), x2ct_mae, x2ct_mse: their evaluation code's
                  definitions (xray2ct.metrics), for comparison with published numbers
  projection      proj_xray_mad: the prediction re-projected with the model's own geometry
                  and normalized like a DRR, vs the X-ray images the model was given: mean
                  |difference| in [0, 1] image units. Says whether the volume explains its
                  inputs; a real radiograph input bounds it from below (scatter, film style).
                  proj_rel_l1: L1 between the line integrals of prediction and ground truth,
                  relative to the ground truth's mean (the training loss's projection term,
                  on an N² detector). Independent of how the input images were normalized.

Outputs in `out`: per_case.csv (id + every metric), summary.json (mean, std, 95% CI from
the t-distribution, n, protocol, unit per metric), montages/{id}.png. All atomic.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from xray2ct.fileio import atomic_path

log = logging.getLogger(__name__)

# name -> (protocol, unit, higher is better, description)
METRICS = {
    "psnr": ("ours", "dB", True, "PSNR on normalized CT, data range 1"),
    "ssim3d": ("ours", "", True, "3D SSIM, 7^3 Gaussian window (MONAI semantics)"),
    "mae_hu": ("ours", "HU", False, "mean absolute error in Hounsfield units"),
    "x2ct_psnr": ("X2CT-GAN", "dB", True, "X2CT-GAN protocol PSNR-avg (published tables): per-slice PSNR, peak "
                  "4095, on HU+1024 clipped to [0,2500] and truncated, averaged over slices and the three axes"),
    "x2ct_psnr_3d": ("X2CT-GAN", "dB", True, "X2CT-GAN protocol psnr-3d: whole-volume PSNR, peak 4095, same values"),
    "x2ct_ssim": ("X2CT-GAN", "", True, "X2CT-GAN protocol SSIM-avg: scikit-image SSIM on [0,1] (7x7 uniform, "
                  "data range 1), slices of each axis as channels, averaged over the three axes"),
    "x2ct_mae": ("X2CT-GAN", "HU", False, "X2CT-GAN protocol MAE on the truncated HU+1024 integers"),
    "x2ct_mse": ("X2CT-GAN", "HU^2", False, "X2CT-GAN protocol MSE on the truncated HU+1024 integers"),
    "proj_xray_mad": ("projection", "image [0,1]", False,
                      "mean |normalized DRR of prediction - input X-ray| over the views given"),
    "proj_rel_l1": ("projection", "", False,
                    "L1 of prediction vs ground-truth line integrals / ground-truth mean (N^2 detector)"),
}


@dataclass
class EvalResult:
    out: Path
    per_case: list[dict] = field(default_factory=list)  # {"id": str, metric: float, ...}
    summary: dict = field(default_factory=dict)  # summary.json's content
    montages: list[Path] = field(default_factory=list)

REPORT_MONTAGES = 6  # montages embedded in the HTML report (each ~100 KB)
VIEW_MODES = {"both": (0, 1), "pa": (0,), "lat": (1,)}  # --views: indices of the X-rays given to the model


def summarize(values, confidence: float = 0.95) -> dict:
    """mean, sample std, t-distribution CI of the mean and n (std/CI are None for n < 2)."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    n = int(x.size)
    mean = float(x.mean()) if n else math.nan
    if n < 2:
        return {"mean": mean, "std": None, "ci95": None, "n": n}
    std = float(x.std(ddof=1))
    sem = std / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1)) * sem
    return {"mean": mean, "std": std, "ci95": [mean - half, mean + half], "n": n}


def prediction_drr(pred: torch.Tensor, cfg, det_size: int) -> torch.Tensor:
    """(B, 1, N, N, N) normalized CT -> (B, 2, S, S) PA and lateral images normalized as DRRs are."""
    from xray2ct import project
    from xray2ct.physics.hu import hu_to_mu, unit_to_hu
    from xray2ct.physics.radiograph import drr_to_radiograph

    mu = hu_to_mu(unit_to_hu(pred.float()), cfg.geometry.mu_water)
    return drr_to_radiograph(project(mu, cfg.geometry.build(pred.shape[-1], det_size)))


def projection_errors(pred: torch.Tensor, target: torch.Tensor, xrays: torch.Tensor, cfg,
                      drr: torch.Tensor | None = None, given=(0, 1)) -> dict[str, torch.Tensor]:
    """pred, target (B, 1, N, N, N) normalized; xrays (B, 2, S, S) the model's inputs -> per-case (B,) errors.

    drr: `prediction_drr(pred, cfg, S)` when the caller has it already.
    given: indices of the views the model was given (a missing view's zeros are not compared).
    """
    from xray2ct.losses import projection_consistency_loss

    n, mu_water = pred.shape[-1], cfg.geometry.mu_water
    drr = prediction_drr(pred, cfg, xrays.shape[-1]) if drr is None else drr
    geom_nn = cfg.geometry.build(n, n)
    rel = [projection_consistency_loss(pred[i : i + 1], target[i : i + 1], geom_nn, mu_water) for i in range(len(pred))]
    mad = (drr - xrays.float())[:, list(given)].abs().flatten(1).mean(1)
    return {"proj_xray_mad": mad, "proj_rel_l1": torch.stack(rel)}


def save_eval_montage(path, case_id: str, xrays: np.ndarray, drr: np.ndarray, gt_hu: np.ndarray,
                      pred_hu: np.ndarray, std_hu: np.ndarray | None) -> Path:
    """4 x 4 panels: input PA/lateral and the prediction's DRRs; then per plane (axial,
    coronal, sagittal) ground truth, prediction, |error| and uncertainty, all HU."""
    from xray2ct.viz import PLANES, XRAY_PLANE, orientation_labels, plane_slice, save_montage

    err = np.abs(pred_hu - gt_hu)
    err_top = max(float(np.percentile(err, 99.5)), 1.0)
    pa_sides, lat_sides = (orientation_labels(XRAY_PLANE[v]) for v in ("PA", "lateral"))
    panels = [{"image": xrays[0], "title": "input PA", "sides": pa_sides},
              {"image": xrays[1], "title": "input lateral", "sides": lat_sides},
              {"image": drr[0], "title": "prediction, PA DRR", "sides": pa_sides},
              {"image": drr[1], "title": "prediction, lateral DRR", "sides": lat_sides}]
    if std_hu is None:
        std_hu = np.zeros_like(pred_hu)
    std_top = max(float(np.percentile(std_hu, 99.5)), 1.0)
    for p in PLANES:
        panels += [
            {"image": plane_slice(gt_hu, p), "title": f"ground truth {p}", "vmin": -1000, "vmax": 1000,
             "sides": orientation_labels(p)},
            {"image": plane_slice(pred_hu, p), "title": f"prediction {p}", "vmin": -1000, "vmax": 1000,
             "colorbar": p == PLANES[-1]},
            {"image": plane_slice(err, p), "title": f"|error| {p}", "cmap": "magma", "vmin": 0, "vmax": err_top,
             "colorbar": p == PLANES[-1]},
            {"image": plane_slice(std_hu, p), "title": f"uncertainty (std) {p}", "cmap": "viridis", "vmin": 0,
             "vmax": std_top, "colorbar": p == PLANES[-1]},
        ]
    save_montage(path, panels, ncols=4, title=case_id, colorbar_label="HU")
    return Path(path)


def _write_outputs(out: Path, rows: list[dict], summary: dict) -> None:
    with atomic_path(out / "per_case.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", *METRICS, *(k for k in rows[0] if k != "id" and k not in METRICS)]
                                if rows else ["id", *METRICS])
        writer.writeheader()
        writer.writerows(rows)
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")


def _write_report(path: Path, result: EvalResult, hu: np.ndarray, spacing) -> Path:
    from xray2ct.report import evaluation_report
    from xray2ct.surface import try_bone_surface

    mesh, _ = try_bone_surface(hu, spacing)
    first = result.per_case[0]["id"]
    return evaluation_report(path, result.summary, result.per_case, montages=result.montages[:REPORT_MONTAGES],
                             hu=hu, spacing=spacing, mesh=mesh,
                             title=f"xray2ct evaluation ({result.summary['split'] or 'all'} split; viewer: {first})")


def _refine_batch(model, pred, log_var, xrays, target, cfg, dev, given=(0, 1), forced: bool = True):
    """Refine each case of a batch on its own (early stopping per case) against the given views,
    as `reconstruct` does (`refine_placed`); -> (volumes, per-case extras).

    forced False: as `reconstruct` by default, a case whose films show anatomy beyond the field
    (`refine_skip_reason`) keeps the network's volume (`refined` 0 in its extras)."""
    from xray2ct.engine.inference import ReconstructionError
    from xray2ct.engine.refining import given_views, refine_placed, refine_skip_reason
    from xray2ct.metrics import psnr

    if log_var is None:
        raise ReconstructionError("this model predicts no uncertainty (no log_var output); refinement needs it")
    lift_geometry = cfg.geometry.build(pred.shape[-1], xrays.shape[-1])
    present = tuple(v in given for v in range(xrays.shape[1]))
    geometry = given_views(lift_geometry, xrays, present)[0]
    volumes, extras = [], []
    for i in range(pred.shape[0]):
        network = {"network_psnr": float(psnr(pred[i:i + 1], target[i:i + 1]))}
        if not forced and refine_skip_reason(lift_geometry, present, xrays[i:i + 1]):
            volumes.append(pred[i:i + 1].cpu())
            extras.append({**network, "refined": 0, "refine_seconds": 0.0, "refine_unexplained": 0.0,
                           "refine_prior_raised": 1.0})
            continue
        r = refine_placed(model, dev, xrays[i:i + 1], pred[i:i + 1], log_var[i:i + 1], lift_geometry, geometry,
                          present, cfg.refine, cfg.geometry.mu_water)[0]
        volumes.append(r.volume.cpu())
        extras.append({**network, "refined": 1, "refine_seconds": r.seconds, "refine_unexplained": r.unexplained,
                       "refine_prior_raised": r.prior_raised})
    return torch.cat(volumes), extras


def evaluate(checkpoint, data_dir, split: str | None = "test", out=None, device: str = "auto", batch_size: int = 2,
             montages: int | None = None, progress: bool = True, report: bool = False,
             refine: bool | None = None, views: str = "both") -> EvalResult:
    """Evaluate a checkpoint on a dataset split; write per_case.csv, summary.json and montages.

    Args:
        checkpoint: .safetensors file or run folder (best, else last checkpoint).
        data_dir: dataset root in the seed layout.
        split: "train" / "val" / "test" (splits.json or the automatic split); None: every case.
        out: output folder; None: `{checkpoint folder}/eval_{split}`.
        montages: write montages for the first this-many cases; None: for all, 0: none.
        report: also write `out/report.html`, self-contained: summary, every case, the first
            montages, and the first case's predicted volume with its bone surface.
        refine: score what `reconstruct` makes. None (the default), as `reconstruct` by default: the
            physics-refined volume (`xray2ct.refine`, the model's `refine` settings), except for a
            case whose films show anatomy beyond the field, and the network's own for a model that
            predicts no uncertainty; True: refine every case; False: the network's volume alone.
            When refining, per_case.csv also has the network's own PSNR (`network_psnr`), whether
            the case was refined and the seconds it took, and summary.json a `refinement` entry
            with the mean gain.
        views: "both", or "pa" / "lat" to score one-view reconstruction: the other view is
            replaced by zeros, as `reconstruct --pa` alone does.
    """
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from xray2ct.checkpoint import load_model
    from xray2ct.data.dataset import BiplanarDataset
    from xray2ct.engine.inference import predict, select_device, uncertainty_hu
    from xray2ct.metrics import all_metrics
    from xray2ct.physics.hu import unit_to_hu

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if views not in VIEW_MODES:
        from xray2ct.engine.inference import ReconstructionError

        raise ReconstructionError(f"--views must be one of {', '.join(VIEW_MODES)}, got {views!r}")
    given = VIEW_MODES[views]
    dev = select_device(device)
    model, cfg, ckpt = load_model(checkpoint, device=dev)
    ds = BiplanarDataset(data_dir, split=split, xray_size=cfg.model.xray_img_size, volume_size=cfg.model.volume_size)
    out = Path(out) if out is not None else ckpt.path.parent / f"eval_{split or 'all'}"
    n_montages = len(ds) if montages is None else max(0, int(montages))
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0)
    result = EvalResult(out=out)
    first_hu = None  # the first case's prediction, for the report's viewer
    refining, not_refined = refine is not False, None
    for batch in tqdm(loader, desc="evaluate", unit="batch", disable=not progress):
        xrays = torch.cat([batch["pa"], batch["lat"]], dim=1)  # (B, 2, S, S), as in training
        for v in {0, 1} - set(given):
            xrays[:, v] = 0  # a view not given, as the model saw a dropped one in training
        target = batch["ct"].float()
        pred, log_var = predict(model, xrays, dev)
        extra = [{} for _ in batch["id"]]
        if refining and refine is None and log_var is None:  # as reconstruct: the network's volume, said once
            refining, not_refined = False, "this model predicts no uncertainty (no log_var output)"
            log.warning("not refined: %s, which refinement weighs its prior by", not_refined)
        if refining:
            pred, extra = _refine_batch(model, pred, log_var, xrays, target, cfg, dev, given, forced=bool(refine))
        drr = prediction_drr(pred, cfg, xrays.shape[-1])
        values = {**all_metrics(pred, target), **projection_errors(pred, target, xrays, cfg, drr, given)}
        if first_hu is None:
            first_hu = unit_to_hu(pred[0, 0]).numpy()
        for i, case_id in enumerate(batch["id"]):
            result.per_case.append({"id": case_id, **{k: float(values[k][i]) for k in METRICS}, **extra[i]})
            if len(result.montages) < n_montages:
                std = None if log_var is None else uncertainty_hu(log_var[i, 0]).numpy()
                result.montages.append(save_eval_montage(
                    out / "montages" / f"{case_id}.png", case_id, xrays[i].numpy(), drr[i].numpy(),
                    unit_to_hu(target[i, 0]).numpy(), unit_to_hu(pred[i, 0]).numpy(), std))
    result.summary = {
        "checkpoint": str(ckpt.path), "step": ckpt.step, "data": str(Path(data_dir)), "split": split, "views": views,
        "n_cases": len(result.per_case), "volume_size": cfg.model.volume_size, "xray_size": cfg.model.xray_img_size,
        "metrics": {
            name: {**summarize([r[name] for r in result.per_case]), "protocol": protocol, "unit": unit,
                   "higher_is_better": higher, "description": text}
            for name, (protocol, unit, higher, text) in METRICS.items()
        },
    }
    if not refining:
        result.summary["refinement"] = {"refined": False, "mode": "off" if refine is False else "auto",
                                        "why": not_refined or "--no-refine"}
    else:
        gains = [r["psnr"] - r["network_psnr"] for r in result.per_case]
        result.summary["refinement"] = {
            "refined": True, "mode": "forced" if refine else "auto",
            "cases_refined": sum(r["refined"] for r in result.per_case),
            "settings": dataclasses.asdict(cfg.refine), "psnr_gain_db": summarize(gains),
            "worst_gain_db": min(gains, default=float("nan")),
            "seconds_per_case": summarize([r["refine_seconds"] for r in result.per_case]),
            # films refinement held more firmly to the network (more image error than the grid's DRRs leave)
            "cases_prior_raised": sum(r["refine_prior_raised"] > 1 for r in result.per_case)}
    _write_outputs(out, result.per_case, result.summary)
    if report and first_hu is not None:
        _write_report(out / "report.html", result, first_hu, (cfg.geometry.fov_mm / cfg.model.volume_size,) * 3)
    log.info("evaluated %d case(s); results in %s", len(result.per_case), out)
    return result
