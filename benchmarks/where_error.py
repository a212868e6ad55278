"""Where a model's error is: by tissue, by distance from the body, against blurred truths and
against carving by the films' air (the visual hull). docs/RESULTS.md, "Where the error is".

    python benchmarks/where_error.py [--checkpoint W] [--n 12] [--seed 9100000]

Fresh v2 phantoms (seeds far from every training pool's), their nominal DRRs as `xray2ct
phantoms` writes them (`refine_suite.fresh_cases`), the network's volume (no refinement).
Prints:
  - PSNR of the network, and of the truth blurred by a Gaussian of σ = 0.5 / 1 / 1.5 voxels;
  - each tissue's share of the squared error (labels from `chest_phantom(return_labels=True)`);
  - the error of air voxels by their distance to the nearest non-air voxel;
  - PSNR after setting to air every voxel whose ray is air (0) in either film, for the network
    and for the truth (a carving that loses nothing of the truth scores very high).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F


def air_seen(xrays: torch.Tensor, geometry) -> torch.Tensor:
    """(V, S, S) films -> (D, H, W) bool: the voxel centre's ray is air (0) in some film."""
    points = geometry.voxel_centers_mm()
    seen = []
    for v, view in enumerate(geometry.views):
        row, col, _ = geometry.project_points(points, view)
        grid = geometry.detector_to_grid(row, col).reshape(1, -1, 1, 2)
        air = (xrays[v] <= 0).float()[None, None]
        seen.append(F.grid_sample(air, grid, mode="nearest", align_corners=False).reshape(points.shape[:3]) > 0.5)
    return torch.stack(seen).any(0)


def main(checkpoint, n: int, seed: int) -> None:
    from scipy import ndimage

    from xray2ct.data.phantoms import chest_phantom
    from xray2ct.data.phantoms.tissues import Tissue
    from xray2ct.engine.inference import load_for_inference, predict
    from xray2ct.metrics import psnr
    from xray2ct.refine_suite import fresh_cases

    model, cfg, dev = load_for_inference(checkpoint, "cpu")
    size = cfg.model.volume_size
    geometry = cfg.geometry.build(size, cfg.model.xray_img_size)
    cases = fresh_cases(n, seed, size, cfg.model.xray_img_size)
    scores = {"network": [], "carved network": [], "carved truth": [], **{f"blur {s}": [] for s in (0.5, 1.0, 1.5)}}
    sse: dict[int, float] = {}
    count: dict[int, int] = {}
    shells = {(0, 1.5): [0.0, 0, 0.0], (1.5, 2.5): [0.0, 0, 0.0], (2.5, 4): [0.0, 0, 0.0], (4, 1e9): [0.0, 0, 0.0]}
    for i, (xrays, truth) in enumerate(cases):
        mu = predict(model, xrays, dev)[0].clamp(0, 1)
        labels = chest_phantom(size, seed + i, return_labels=True)[1]
        t, m = truth[0, 0].numpy(), mu[0, 0].numpy()
        scores["network"].append(float(psnr(mu, truth)))
        for s in (0.5, 1.0, 1.5):
            scores[f"blur {s}"].append(float(psnr(torch.as_tensor(ndimage.gaussian_filter(t, s))[None, None], truth)))
        keep = (~air_seen(xrays[0], geometry)).float()
        scores["carved network"].append(float(psnr(mu * keep, truth)))
        scores["carved truth"].append(float(psnr(truth * keep, truth)))
        err2 = (m - t) ** 2
        for label in np.unique(labels):
            sse[int(label)] = sse.get(int(label), 0.0) + float(err2[labels == label].sum())
            count[int(label)] = count.get(int(label), 0) + int((labels == label).sum())
        air = labels == int(Tissue.AIR)
        distance = ndimage.distance_transform_edt(air)
        for (lo, hi), acc in shells.items():
            sel = air & (distance >= lo) & (distance < hi)
            acc[0] += float(err2[sel].sum())
            acc[1] += int(sel.sum())
            acc[2] += float((m - t)[sel].sum())
    for name, values in scores.items():
        print(f"PSNR {name:15s} {np.mean(values):6.2f} dB")
    total, voxels = sum(sse.values()), sum(count.values())
    print("\ntissue        share of squared error   share of voxels   RMSE")
    for label in sorted(sse, key=lambda k: -sse[k]):
        print(f"{Tissue(label).name:12s}  {100 * sse[label] / total:6.1f} %              {100 * count[label] / voxels:6.1f} %"
              f"         {np.sqrt(sse[label] / count[label]):.3f}")
    print("\nair voxels by distance to the body (voxels): RMSE, bias, share of the total squared error")
    for (lo, hi), (s, c, b) in shells.items():
        print(f"[{lo:g}, {hi:g})  RMSE {np.sqrt(s / c):.3f}  bias {b / c:+.3f}  {100 * s / total:5.1f} %")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=None, help="weights; default: the bundled ones")
    ap.add_argument("--n", type=int, default=12, help="fresh phantoms")
    ap.add_argument("--seed", type=int, default=9_100_000, help="the first phantom's seed")
    a = ap.parse_args()
    main(a.checkpoint, a.n, a.seed)
