import math

import numpy as np
import pytest
import torch

from xray2ct.metrics import all_metrics, mae_hu, psnr, ssim3d, x2ct_psnr


def _vols(seed=0, n=16):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(2, 1, n, n, n, generator=g)
    return t, (t + 0.05 * torch.randn(t.shape, generator=g)).clamp(0, 1)


def test_psnr_matches_definition():
    t = torch.zeros(1, 1, 4, 4, 4)
    p = t + 0.1
    assert psnr(p, t).item() == pytest.approx(20.0, abs=1e-4)  # 10 log10(1 / 0.01)
    # X2CT-GAN: same error is 250 HU-units on a 4095 peak
    assert x2ct_psnr(p, t).item() == pytest.approx(20 * math.log10(4095 / 250), abs=1e-3)


def test_mae_in_hu():
    t = torch.zeros(1, 1, 4, 4, 4)
    assert mae_hu(t + 0.02, t).item() == pytest.approx(50.0)


def test_ssim3d_matches_skimage_gaussian():
    from skimage.metrics import structural_similarity

    t, p = _vols()
    ours = ssim3d(p, t)
    ref = [structural_similarity(p[i, 0].numpy(), t[i, 0].numpy(), data_range=1.0, gaussian_weights=True,
                                 sigma=1.5, win_size=7, use_sample_covariance=False) for i in range(2)]
    # MONAI crops the border the window cannot cover, skimage pads it: close, not equal
    np.testing.assert_allclose(ours.numpy(), ref, atol=0.03)


def test_perfect_and_ordering():
    t, p = _vols()
    m_same, m_noisy = all_metrics(t, t), all_metrics(p, t)
    assert m_same["ssim3d"].min() > 0.999 and m_same["x2ct_ssim"].min() > 0.999 and m_same["mae_hu"].max() == 0
    worse = (p + 0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    m_worse = all_metrics(worse, t)
    for k in ("psnr", "ssim3d", "x2ct_psnr", "x2ct_ssim"):
        assert (m_worse[k] < m_noisy[k]).all(), k
    assert (m_worse["mae_hu"] > m_noisy["mae_hu"]).all()
    assert all(v.shape == (2,) for v in m_noisy.values())
