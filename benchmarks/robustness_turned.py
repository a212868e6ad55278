"""The robustness suite's turned points scored two ways: against the patient's own frame (the
unturned phantom, the suite's truth) and against the patient as turned (the very volume the
films were rendered from). docs/BENCHMARKS.md, robustness, "Turned patients are reconstructed
as turned".

    python benchmarks/robustness_turned.py [--checkpoint W] [--n 8]

Prints a Markdown row per turned point of the grid: network and refined (as `reconstruct`
refines) PSNR, each against both truths, and their mean. About 20 minutes on 2 cores.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch


def main(checkpoint=None, n: int = 8) -> np.ndarray:
    from xray2ct.data.phantoms import chest_phantom
    from xray2ct.engine.inference import load_for_inference, predict
    from xray2ct.metrics import psnr
    from xray2ct.models.net import using_geometry
    from xray2ct.physics.hu import hu_to_unit
    from xray2ct.refine_suite import fresh_cases
    from xray2ct.robustness import TEST_SEED, grid, known_geometry, point_films, positioned, refine_each

    model, cfg, dev = load_for_inference(checkpoint, "cpu")
    size, s = cfg.model.volume_size, cfg.model.xray_img_size
    nominal, voxel = cfg.geometry.build(size, s), cfg.geometry.fov_mm / size
    unturned = [t for _, t in fresh_cases(n, TEST_SEED, size, s)]  # the suite's truths
    phantoms = [np.rint(chest_phantom(size, TEST_SEED + i)) for i in range(n)]  # ... in HU

    def mean_psnr(volumes, truths):
        return float(np.mean([float(psnr(v.reshape(t.shape), t)) for v, t in zip(volumes, truths)]))

    print("| acquisition | network, against the patient's frame | network, against the turned patient | "
          "refined, patient's frame | refined, turned patient |\n|---|---|---|---|---|")
    rows = []
    for p in [q for q in grid(False) if q.turn_deg]:
        x, pitch = point_films(phantoms, voxel, p, nominal, s)  # (n, 2, S, S)
        geometry = known_geometry(p, pitch, s, nominal)
        with using_geometry(model, geometry):
            mu, log_var = predict(model, x, dev)
        refined = refine_each(model, dev, cfg, mu, log_var, x, geometry)
        turned = [hu_to_unit(torch.as_tensor(positioned(hu, voxel, p), dtype=torch.float32))[None, None]
                  for hu in phantoms]
        rows.append([mean_psnr(v, t) for v in (mu, refined) for t in (unturned, turned)])
        print(f"| {p.label()} | " + " | ".join(f"{v:.2f}" for v in rows[-1]) + " |", flush=True)
    mean = np.mean(rows, 0)
    print(f"| mean of the {len(rows)} turned points | " + " | ".join(f"{v:.2f}" for v in mean) + " |")
    return mean


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=None, help="weights (default: the bundled ones)")
    ap.add_argument("--n", type=int, default=8, help="phantoms (the suite's first n)")
    args = ap.parse_args()
    main(args.checkpoint, args.n)
