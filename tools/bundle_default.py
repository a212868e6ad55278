"""Bundle trained weights and example X-ray pairs as package data (maintainer tool).

    python tools/bundle_default.py --run /work/runs/cpu-small --data /work/data/ph32 --n 3

Copies RUN/best.safetensors (its config is inside) to src/xray2ct/assets/default/, and
from the data's test split: n phantom cases as `{id}_pa.png`, `{id}_lat.png` (the DRRs)
with `{id}_ct.nii.gz`, plus one case restyled like a real radiograph (blur, scatter,
noise, gamma, a small rotation; 8-bit JPEG) as `styled_{id}_*`.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from xray2ct.checkpoint import load_checkpoint
from xray2ct.config import save_config
from xray2ct.data.xrayio import load_xray
from xray2ct.physics.radiograph import RadiographStyle

ASSETS = Path(__file__).resolve().parents[1] / "src" / "xray2ct" / "assets"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--n", type=int, default=3)
    args = ap.parse_args()

    default, examples = ASSETS / "default", ASSETS / "examples"
    for folder in (default, examples):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    ckpt = load_checkpoint(args.run / "best.safetensors")
    shutil.copy(ckpt.path, default / "cpu-small.safetensors")
    save_config(ckpt.config, default / "config.json")

    test_ids = json.loads((args.data / "splits.json").read_text())["test"][: args.n]
    for case in test_ids:
        src = args.data / case
        for view in ("pa", "lat"):
            shutil.copy(src / f"{case}_{view}_drr.png", examples / f"{case}_{view}.png")
        shutil.copy(src / f"{case}.nii.gz", examples / f"{case}_ct.nii.gz")

    case = test_ids[0]  # the same anatomy, looking like a film: a fixed, moderate style draw
    style = RadiographStyle(blur_px=1.0, scatter=0.15, noise=0.02, gamma=(0.9, 1.1), contrast=(0.9, 1.1), rotate_deg=2)
    g = torch.Generator().manual_seed(7)
    for view in ("pa", "lat"):
        img = load_xray(args.data / case / f"{case}_{view}_drr.png", size=256)[None, None]
        film = style(img, g)[0, 0].numpy()
        Image.fromarray((film * 255).round().astype(np.uint8)).save(examples / f"styled_{case}_{view}.jpg", quality=90)
    shutil.copy(args.data / case / f"{case}.nii.gz", examples / f"styled_{case}_ct.nii.gz")
    print(f"bundled {ckpt.path} (step {ckpt.step}) and {len(test_ids) + 1} examples into {ASSETS}")


if __name__ == "__main__":
    main()
