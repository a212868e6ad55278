"""A few fresh phantoms through the refine suite's scoring with the bundled weights' settings:
PSNR and 3D SSIM of network vs refined, and refinement on the 32³ vs a 64³ grid against 64³
truth (the full study is `xray2ct benchmark --suite refine`).

    .venv/bin/python benchmarks/refine_quick_check.py [N]
"""
import sys

from xray2ct.engine.inference import load_for_inference
from xray2ct.refine_suite import TEST_SEED, _predict_all, _refine_scores, fresh_cases


def main(n: int) -> None:
    model, cfg, dev = load_for_inference(None, "cpu")
    exact = fresh_cases(n, TEST_SEED, 32, 128)
    r = _refine_scores(cfg, dev, exact, _predict_all(model, dev, exact), cfg.refine)
    print(f"{n} phantoms, DRRs of 32³ truth: PSNR {r['psnr0'].mean():.2f} -> {r['psnr'].mean():.2f} dB, "
          f"3D SSIM {r['ssim0'].mean():.4f} -> {r['ssim'].mean():.4f}, {r['seconds'].mean():.1f} s, "
          f"{r['steps'].mean():.0f} steps")
    fine = fresh_cases(n, TEST_SEED + 10_000, 32, 128, truth_size=64)
    preds = _predict_all(model, dev, fine)
    a = _refine_scores(cfg, dev, fine, preds, cfg.refine)
    b = _refine_scores(cfg, dev, fine, preds, cfg.refine, size=64)
    print(f"{n} phantoms, DRRs of 64³ truth, scored at 64³: network {a['psnr0'].mean():.2f} dB / {a['ssim0'].mean():.4f}, "
          f"refined at 32³ {a['psnr'].mean():.2f} dB / {a['ssim'].mean():.4f} ({a['seconds'].mean():.1f} s), "
          f"refined at 64³ {b['psnr'].mean():.2f} dB / {b['ssim'].mean():.4f} ({b['seconds'].mean():.1f} s)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 4)
