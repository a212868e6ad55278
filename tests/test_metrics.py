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


# --- X2CT-GAN protocol, against a reference written here from its evaluation code ------
# (kylekma/X2CT 3DGAN/test.py + lib/utils/metrics_np.py): volumes (N, D, H, W) in [0, 1],
# numpy loops over slices and scikit-image's SSIM, nothing shared with xray2ct.metrics.
def _ref_int(n):
    return (np.clip(n, 0, 1) * 2500.0).astype(np.int32).astype(np.float64)  # their unMinMax + astype(int32)


def _ref_slice_psnr(a, b):
    mse = np.mean((a - b) ** 2)
    return 100.0 if mse == 0 else 20 * math.log10(4095.0 / math.sqrt(mse))


def ref_psnr_avg(gt, pr):
    g, p = _ref_int(gt), _ref_int(pr)
    out = []
    for i in range(len(g)):
        d = np.mean([_ref_slice_psnr(g[i, k], p[i, k]) for k in range(g.shape[1])])
        h = np.mean([_ref_slice_psnr(g[i, :, k], p[i, :, k]) for k in range(g.shape[2])])
        w = np.mean([_ref_slice_psnr(g[i, :, :, k], p[i, :, :, k]) for k in range(g.shape[3])])
        out.append((d + h + w) / 3)
    return np.array(out)


def ref_psnr_3d(gt, pr):
    g, p = _ref_int(gt), _ref_int(pr)
    return np.array([_ref_slice_psnr(g[i], p[i]) for i in range(len(g))])


def ref_mae_mse(gt, pr):
    e = _ref_int(gt) - _ref_int(pr)
    return np.abs(e).mean(axis=(1, 2, 3)), (e**2).mean(axis=(1, 2, 3))


def ref_ssim_avg(gt, pr):
    from skimage.metrics import structural_similarity

    g, p = np.clip(gt, 0, 1).astype(np.float64), np.clip(pr, 0, 1).astype(np.float64)
    out = []
    for i in range(len(g)):
        # their transposes: the slices along the axis become the last (channel) axis
        per_axis = [structural_similarity(g[i].transpose(order), p[i].transpose(order), data_range=1.0,
                                          channel_axis=-1) for order in ((1, 2, 0), (0, 2, 1), (0, 1, 2))]
        out.append(np.mean(per_axis))
    return np.array(out)


def _protocol_cases():
    """(name, gt, pred) float arrays (N, D, H, W), random and structured, non-cubic where they can be."""
    from scipy import ndimage

    from xray2ct.data.phantoms import chest_phantom

    rng = np.random.default_rng(7)
    gt = rng.random((2, 9, 12, 16)).astype(np.float32)
    noisy = np.clip(gt + rng.normal(0, 0.05, gt.shape) + 0.01, 0, 1).astype(np.float32)
    noisy[:, :3] = gt[:, :3]  # zero-error slices along d: 100 dB each
    noisy[1, :, 5] = gt[1, :, 5]  # and one along h
    hu = np.stack([chest_phantom(24, seed) for seed in (3, 4)])
    chest = np.clip((hu + 1024) / 2500, 0, 1).astype(np.float32)
    blurred = ndimage.gaussian_filter(chest, sigma=(0, 1.2, 1.2, 1.2)).astype(np.float32)
    shifted = np.roll(chest, 1, axis=3) + 0.15  # leaves [0, 1]: the protocol clips
    on_grid = (rng.integers(0, 2501, size=(2, 10, 11, 12)).astype(np.float32) / np.float32(2500))
    off_by_one = on_grid + rng.integers(-2, 3, size=on_grid.shape).astype(np.float32) / np.float32(2500)
    return [
        ("random noise, identical slices", gt, noisy),
        ("chest phantom vs blurred", chest, blurred),
        ("chest phantom vs shifted, out of range", chest, shifted.astype(np.float32)),
        ("integer grid, truncation edges", on_grid, off_by_one.astype(np.float32)),
        ("float64 input", gt.astype(np.float64), noisy.astype(np.float64) - 0.003),
        ("identical", chest, chest.copy()),
    ]


@pytest.mark.parametrize("case", range(6), ids=lambda i: _protocol_cases()[i][0])
def test_x2ct_protocol_equals_reference(case):
    from xray2ct.metrics import x2ct_mae, x2ct_mse, x2ct_psnr_3d, x2ct_ssim

    _, gt, pr = _protocol_cases()[case]
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))[:, None]  # (N, 1, D, H, W), dtype kept
    mae, mse = ref_mae_mse(gt, pr)
    for ours, ref in [(x2ct_psnr, ref_psnr_avg(gt, pr)), (x2ct_psnr_3d, ref_psnr_3d(gt, pr)),
                      (x2ct_ssim, ref_ssim_avg(gt, pr)), (x2ct_mae, mae), (x2ct_mse, mse)]:
        got = ours(t(pr), t(gt))
        assert got.shape == (len(gt),) and got.dtype == torch.float64
        np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-6, err_msg=ours.__name__)


def test_x2ct_psnr_avg_is_not_the_volume_psnr():
    from xray2ct.metrics import x2ct_psnr_3d

    t = torch.zeros(1, 1, 8, 8, 8)
    p = t.clone()
    p[0, 0, 0] = 0.1  # all error in one axial slice
    # PSNR-avg: along d one slice at 20 log10(4095/250) and seven at 100 dB; along h and w every
    # slice holds one row of error (MSE 250²/8)
    one = 20 * math.log10(4095 / 250)
    row = 20 * math.log10(4095 / math.sqrt(250**2 / 8))
    assert x2ct_psnr(p, t).item() == pytest.approx(((one + 7 * 100) / 8 + 2 * row) / 3, abs=1e-9)
    assert x2ct_psnr_3d(p, t).item() == pytest.approx(20 * math.log10(4095 / math.sqrt(250**2 / 8)), abs=1e-9)


def test_x2ct_metrics_refuse_bad_shapes():
    from xray2ct.metrics import x2ct_ssim

    with pytest.raises(ValueError, match=r"\(B, 1, D, H, W\)"):
        x2ct_psnr(torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 1, 8, 8, 9))
    with pytest.raises(ValueError, match="7 voxels"):
        x2ct_ssim(torch.zeros(1, 1, 6, 8, 8), torch.zeros(1, 1, 6, 8, 8))
