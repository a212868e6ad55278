"""Regenerate the README's and RESULTS.md's pictures from the bundled weights (maintainer tool).

    python tools/readme_figures.py [--run /work/runs/default-v2]

docs/images/demo_montage.png       a chest phantom v2: PA and lateral DRRs and three CT planes
docs/images/reconstruction.png     a held-out phantom reconstructed from its two films (biplanar)
                                   and from the PA alone: truth, results, uncertainty
docs/images/first_real_film.png    pydicom-data's RG1_UNCR.dcm, a real PA chest film, reconstructed
                                   PA-only (no ground truth exists)
docs/images/learning_curve.png     validation PSNR / SSIM of the run (with --run)
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from xray2ct import project
from xray2ct.data.layout import render_drrs
from xray2ct.data.phantoms import chest_phantom
from xray2ct.engine import reconstruct as R
from xray2ct.physics.hu import hu_to_mu, hu_to_unit
from xray2ct.physics.radiograph import drr_to_radiograph
from xray2ct.viz import (PLANES, XRAY_PLANE, ct_and_drr_montage, orientation_labels, plane_slice, plot_learning_curve,
                         save_montage)

IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"
SEED = 9_600_001  # a held-out phantom (training pools use seeds < 10^6)


def _ct(hu, plane, title, colorbar=False):
    return {"image": plane_slice(hu, plane), "title": title, "vmin": -1000, "vmax": 1000, "colorbar": colorbar,
            "sides": orientation_labels(plane)}


def _std(std, plane, title, top, colorbar=False):
    return {"image": plane_slice(std, plane), "title": title, "cmap": "viridis", "vmin": 0, "vmax": top,
            "colorbar": colorbar, "sides": orientation_labels(plane)}


def _film(img, view, title):
    return {"image": img, "title": title, "sides": orientation_labels(XRAY_PLANE[view])}


def reconstruction_figure(model, cfg, dev, out: Path) -> dict:
    """Truth, biplanar and PA-only reconstructions of one held-out phantom; returns their PSNRs."""
    from xray2ct.metrics import psnr

    hu = chest_phantom(cfg.model.volume_size, SEED)
    films = torch.from_numpy(render_drrs(hu, (cfg.geometry.fov_mm / hu.shape[0],) * 3, cfg.model.xray_img_size))
    truth = hu_to_unit(torch.from_numpy(hu))[None, None]
    rows, scores = [], {}
    for mode, present in (("PA + lateral", (True, True)), ("PA alone", (True, False))):
        x = films.clone()[None]
        x[0, 1] *= float(present[1])
        rec = R.reconstruct_pair(model, cfg, dev, x, refine=R.RefineOptions(), present=present)
        scores[mode] = float(psnr(rec.volume, truth))
        top = float(np.percentile(rec.std_hu, 99))
        rows.append((mode, rec, top))
    # row 1: the inputs and the truth; then one row per mode: three planes and the uncertainty
    panels = [_film(films[0].numpy(), "PA", "input PA"), _film(films[1].numpy(), "lateral", "input lateral"),
              _ct(hu, "coronal", "truth coronal"), _ct(hu, "sagittal", "truth sagittal")]
    for mode, rec, top in rows:
        panels += [_ct(rec.hu, p, f"{mode}: {p}") for p in ("coronal", "sagittal", "axial")]
        panels += [_std(rec.std_hu, "coronal", f"{mode}: std (HU)", top, colorbar=True)]
    save_montage(out, panels, ncols=4, title=f"held-out phantom v2 (seed {SEED}): PSNR "
                 + ", ".join(f"{k} {v:.2f} dB" for k, v in scores.items()), colorbar_label="HU")
    return scores


def first_real_film(model, cfg, dev, out: Path) -> None:
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG1_UNCR.dcm", download=False)
    study = R.load_study_for(model, cfg, path, None)
    rec = R.reconstruct_pair(model, cfg, dev, study.xrays, refine=R.RefineOptions(), geometry=study.geometry,
                             present=study.present)
    top = float(np.percentile(rec.std_hu, 99))
    panels = [_film(study.xrays[0, 0].numpy(), "PA", "RG1_UNCR.dcm as the model reads it"),
              _film(rec.reprojected[0, 0].numpy(), "PA", "DRR of the result (refined)")]
    panels += [_ct(rec.hu, p, f"reconstruction {p}", colorbar=p == "axial") for p in ("coronal", "sagittal", "axial")]
    panels += [_std(rec.std_hu, p, f"uncertainty {p}", top, colorbar=p == PLANES[-1]) for p in PLANES]
    save_montage(out, panels, ncols=4, title=f"A real PA chest film, PA-only, no ground truth "
                 f"({study.acquisitions[0].short()})", colorbar_label="HU")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=None)
    args = ap.parse_args()
    IMAGES.mkdir(parents=True, exist_ok=True)
    model, cfg, dev = R.load_for_inference(None, "cpu")

    hu = chest_phantom(64, SEED)
    g = cfg.geometry.build(64, 256)
    with torch.no_grad():
        pa, lat = drr_to_radiograph(project(hu_to_mu(torch.from_numpy(hu))[None, None], g))[0].numpy()
    ct_and_drr_montage(IMAGES / "demo_montage.png", hu, pa, lat, title=f"chest phantom v2, seed {SEED}, 64³")
    scores = reconstruction_figure(model, cfg, dev, IMAGES / "reconstruction.png")
    first_real_film(model, cfg, dev, IMAGES / "first_real_film.png")
    if args.run is not None:
        plot_learning_curve(args.run / "metrics.csv", IMAGES / "learning_curve.png",
                            title="validation (half nominal, half random acquisitions)")
    print("figures written to", IMAGES, scores)


if __name__ == "__main__":
    main()
