"""Chest phantoms v4: v2's anatomy, seed for seed, through a smooth random warp (`phantoms.warp`)."""
import numpy as np
import pytest

from xray2ct.data.phantoms import PhantomParamsV2, Tissue, chest_phantom
from xray2ct.data.phantoms.warp import AMPLITUDE_MM, Warp, apply, downsample


def test_the_warp_is_smooth_centred_and_as_large_as_drawn():
    axis = np.linspace(-240.0, 240.0, 49)  # 10 mm steps over a wide field
    d, h, w = np.meshgrid(axis, axis, axis, indexing="ij", sparse=True)
    amplitudes = []
    for seed in range(8):
        warp = Warp.draw(seed)
        amplitudes.append(warp.amplitude_mm)
        disp = warp.displacement(d, h, w)  # (3, 49, 49, 49) mm
        np.testing.assert_allclose(disp[:, 24, 24, 24], 0.0, atol=1e-4)  # D(0) = 0: the body stays centred
        assert np.abs(disp).max() <= 4 * 2 * np.sqrt(0.5) * warp.amplitude_mm + 1e-3  # four waves of 2 sqrt(1/2) A at most
        if warp.amplitude_mm > 5:
            assert 0.4 < disp.std(axis=(1, 2, 3)).mean() / warp.amplitude_mm < 2.0
        # No folding: p -> p + D(p) keeps its orientation (Jacobian determinant > 0) everywhere.
        jac = np.stack([np.stack(np.gradient(disp[a], 10.0), 0) for a in range(3)]) + np.eye(3)[:, :, None, None, None]
        assert np.linalg.det(np.moveaxis(jac, (0, 1), (-2, -1))).min() > 0.2
    assert min(amplitudes) >= AMPLITUDE_MM[0] and max(amplitudes) <= AMPLITUDE_MM[1]
    assert max(amplitudes) - min(amplitudes) > 5  # drawn per phantom, from small to large


def test_a_zero_warp_changes_nothing():
    hu, lab = chest_phantom(16, 3, return_labels=True)
    axes = [(np.arange(16) - 7.5) * 20.0] * 3
    still = Warp(0.0, Warp.draw(3).wavevectors, Warp.draw(3).phases)
    out, out_lab = apply(hu, lab, axes, still)
    np.testing.assert_allclose(out, hu, atol=1e-3)
    np.testing.assert_array_equal(out_lab, lab)
    mean, first = downsample(np.arange(64, dtype=np.float32).reshape(4, 4, 4), np.arange(64).reshape(4, 4, 4))
    assert mean.shape == (2, 2, 2) and mean[0, 0, 0] == np.mean([0, 1, 4, 5, 16, 17, 20, 21]) and first[1, 1, 1] == 42


def test_v4_keeps_the_generator_contract():
    a = chest_phantom(24, 5, version=4)
    np.testing.assert_array_equal(a, chest_phantom(24, 5, version=4))
    wide = chest_phantom(24, 5, version=4, margin=(2, 3, 4))
    # float32 voxel positions differ in the last bit between grids: at a sharp edge, a tenth of a HU
    np.testing.assert_allclose(wide[2:26, 3:27, 4:28], a, atol=0.5)
    assert np.isfinite(a).all() and a.min() >= -1024 and a.max() <= 3071
    # The same anatomy at any resolution: as close as v2's own two resolutions are.
    def gap(version):
        coarse = chest_phantom(16, 5, version=version)
        fine = chest_phantom(32, 5, version=version).reshape(16, 2, 16, 2, 16, 2).mean(axis=(1, 3, 5))
        return np.abs(coarse - fine).mean()
    assert gap(4) < 1.5 * gap(2) + 5.0, (gap(4), gap(2))


@pytest.mark.parametrize("seed", [0, 2])
def test_v2_anatomy_deformed_then_cut_by_the_scanner(seed):
    """The warp moves the patient, not the scanner: organs keep their size, and the scan
    range still ends in a straight cut with air beyond it."""
    hu2, lab2 = chest_phantom(32, seed, return_labels=True, version=2)
    hu4, lab4 = chest_phantom(32, seed, return_labels=True, version=4)
    assert Warp.draw(seed).amplitude_mm > 10  # these seeds are strongly warped
    assert np.abs(hu4 - hu2).mean() > 50  # ... and it shows
    for tissue in (Tissue.LUNG, Tissue.FAT, Tissue.MUSCLE):
        ratio = (lab4 == tissue).sum() / (lab2 == tissue).sum()
        assert 0.8 < ratio < 1.25, (tissue, ratio)
    p = PhantomParamsV2.draw(np.random.default_rng(seed))
    z = (np.arange(32) - 15.5) * 10.0
    outside = np.abs(z) > p.scan_len / 2 + 10.0
    if outside.any():
        assert (hu4[outside] == -1000.0).all()


def test_v5_is_v4s_warp_larger_and_never_folds():
    """v5 draws the same waves as v4 with the amplitude from AMPLITUDE_V5_MM: every phantom is
    deformed, and the largest warp still keeps its orientation over a wide field."""
    from xray2ct.data.phantoms.warp import AMPLITUDE_V5_MM

    axis = np.linspace(-240.0, 240.0, 41)
    d, h, w = np.meshgrid(axis, axis, axis, indexing="ij", sparse=True)
    for seed in range(6):
        v4, v5 = Warp.draw(seed), Warp.draw(seed, AMPLITUDE_V5_MM)
        np.testing.assert_array_equal(v4.wavevectors, v5.wavevectors)
        np.testing.assert_array_equal(v4.phases, v5.phases)
        assert AMPLITUDE_V5_MM[0] <= v5.amplitude_mm <= AMPLITUDE_V5_MM[1] and v5.amplitude_mm > v4.amplitude_mm
        largest = Warp(AMPLITUDE_V5_MM[1], v5.wavevectors, v5.phases)
        disp = largest.displacement(d, h, w)
        jac = np.stack([np.stack(np.gradient(disp[a], axis[1] - axis[0]), 0) for a in range(3)])
        jac += np.eye(3)[:, :, None, None, None]
        assert np.linalg.det(np.moveaxis(jac, (0, 1), (-2, -1))).min() > 0.05
    a = chest_phantom(24, 2, version=5)
    np.testing.assert_array_equal(a, chest_phantom(24, 2, version=5))
    np.testing.assert_allclose(chest_phantom(24, 2, version=5, margin=2)[2:26, 2:26, 2:26], a, atol=0.5)
    # the same seed as v4, deformed further: farther from v2 than v4 is
    v2 = chest_phantom(24, 2, version=2)
    assert np.abs(a - v2).mean() > np.abs(chest_phantom(24, 2, version=4) - v2).mean()
