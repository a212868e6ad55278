"""Write the bundled examples (maintainer tool): files that look like a user's, each with its truth.

    python tools/make_examples.py            # into src/xray2ct/assets/examples/

From held-out chest phantoms v2 (seeds no training pool uses), 32³ at 10 mm:
  phantom_{id}_pa.png / _lat.png     DRRs at the training geometry as `xray2ct phantoms` writes
                                      them (16-bit PNG), three cases (ids 0018, 0019, 0027: the
                                      first bundle's names, which scripts refer to)
  styled_phantom_0018_pa.jpg / ...   the first restyled like a film (blur, scatter, noise,
                                      gamma; 8-bit JPEG)
  dicom_{seed}_pa.dcm / _lat.dcm     a chest-radiography acquisition as a hospital stores it: DX
                                      DICOM, source–detector 1800 mm, patient centre 150 mm from a
                                      430 mm cassette, 12-bit, the PA in MONOCHROME1; rendered from
                                      the wide field (the body and arms beyond the 320 mm cube)
  paonly_{seed}_pa.dcm               the same acquisition, a PA film alone
and {id}_ct.nii.gz, the ground truth (the 320 mm cube, HU) of each.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from xray2ct import Geometry, project
from xray2ct.data.ctio import save_nifti
from xray2ct.data.filmdicom import save_film_dicom
from xray2ct.data.layout import render_drrs, save_png16
from xray2ct.data.phantoms import chest_phantom
from xray2ct.physics.hu import hu_to_mu
from xray2ct.physics.radiograph import RadiographStyle, drr_to_radiograph

ASSETS = Path(__file__).resolve().parents[1] / "src" / "xray2ct" / "assets" / "examples"
SIZE, FOV = 32, 320.0
SEEDS = (9_500_011, 9_500_017, 9_500_023)  # held out: the training pools use seeds < 10^6
# the phantom examples keep the ids of the first bundle: scripts and checks refer to them
NAMES = dict(zip(SEEDS, ("phantom_0018", "phantom_0019", "phantom_0027")))
DICOM_SEED, PA_ONLY_SEED = 9_500_031, 9_500_037
SID, PATIENT_TO_DETECTOR, CASSETTE, FILM_PX = 1800.0, 150.0, 430.0, 256
MARGIN = 8  # voxels of wide field per side (80 mm): what a 430 mm film sees around the cube


def clinical_films(seed: int, views=("pa", "lat")) -> tuple[np.ndarray, np.ndarray]:
    """(films (V, 256, 256) in [0, 1], the cube's HU) of phantom `seed` at the chest acquisition."""
    wide = chest_phantom(SIZE, seed, fov_mm=FOV, margin=MARGIN)
    cube = wide[MARGIN:-MARGIN, MARGIN:-MARGIN, MARGIN:-MARGIN]
    g = Geometry(volume_shape=wide.shape, voxel_mm=FOV / SIZE, source_iso_mm=SID - PATIENT_TO_DETECTOR,
                 source_det_mm=SID, det_shape=(FILM_PX, FILM_PX), det_pixel_mm=CASSETTE / FILM_PX, views=views)
    with torch.no_grad():
        films = drr_to_radiograph(project(hu_to_mu(torch.from_numpy(wide))[None, None], g))[0]
    style = RadiographStyle(blur_px=0.8, scatter=0.1, noise=0.01, gamma=(0.95, 1.05), contrast=(0.95, 1.05),
                            rotate_deg=0.0)
    films = style(films[:, None], torch.Generator().manual_seed(seed))[:, 0]
    return films.numpy(), cube


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ASSETS)
    out = ap.parse_args().out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    spacing = (FOV / SIZE,) * 3
    for seed in SEEDS:
        hu = chest_phantom(SIZE, seed, fov_mm=FOV)
        for view, img in zip(("pa", "lat"), render_drrs(hu, spacing, xray_size=128)):
            save_png16(out / f"{NAMES[seed]}_{view}.png", img)
        save_nifti(out / f"{NAMES[seed]}_ct.nii.gz", hu, spacing, dtype="int16")

    seed = SEEDS[0]  # the same anatomy, looking like a film: a fixed, moderate style draw
    style = RadiographStyle(blur_px=1.0, scatter=0.15, noise=0.02, gamma=(0.9, 1.1), contrast=(0.9, 1.1), rotate_deg=2)
    hu = chest_phantom(SIZE, seed, fov_mm=FOV)
    films = style(torch.from_numpy(render_drrs(hu, spacing, xray_size=256))[:, None], torch.Generator().manual_seed(7))
    for view, film in zip(("pa", "lat"), films[:, 0].numpy()):
        Image.fromarray((film * 255).round().astype(np.uint8)).save(out / f"styled_{NAMES[seed]}_{view}.jpg", quality=90)
    save_nifti(out / f"styled_{NAMES[seed]}_ct.nii.gz", hu, spacing, dtype="int16")

    sod = SID - PATIENT_TO_DETECTOR
    films, cube = clinical_films(DICOM_SEED)
    for view, film, position, mono1 in zip(("pa", "lat"), films, ("PA", "LL"), (True, False)):
        save_film_dicom(out / f"dicom_{DICOM_SEED}_{view}.dcm", film, CASSETTE / FILM_PX, SID, sod, position,
                        monochrome1=mono1)
    save_nifti(out / f"dicom_{DICOM_SEED}_ct.nii.gz", cube, spacing, dtype="int16")

    films, cube = clinical_films(PA_ONLY_SEED, views=("pa",))
    save_film_dicom(out / f"paonly_{PA_ONLY_SEED}_pa.dcm", films[0], CASSETTE / FILM_PX, SID, sod, "PA")
    save_nifti(out / f"paonly_{PA_ONLY_SEED}_ct.nii.gz", cube, spacing, dtype="int16")
    total = sum(p.stat().st_size for p in out.iterdir()) / 1024
    print(f"wrote {len(list(out.iterdir()))} files ({total:.0f} KiB) into {out}")


if __name__ == "__main__":
    main()
