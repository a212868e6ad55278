"""Chest phantoms v2 (the default generator): contract, determinism at any resolution, the
wide field (margin), the distribution's features (contrast, arms, table, coverage, new
tissues), HU per tissue and the CLI's --version."""
from functools import lru_cache

import numpy as np
import pytest
from typer.testing import CliRunner

from xray2ct.cli import app
from xray2ct.data.phantoms import VERSIONS, PhantomParamsV2, Tissue, chest_phantom, phantoms_per_second

FOV = 320.0
SEEDS = range(40)  # searched by their (cheap) parameters for the features a test needs


@lru_cache(maxsize=None)
def phantom(size: int, seed: int, margin=0):
    hu, lab = chest_phantom(size=size, seed=seed, return_labels=True, margin=margin)
    hu.flags.writeable = lab.flags.writeable = False  # shared between tests
    return hu, lab


@lru_cache(maxsize=None)
def params(seed: int) -> PhantomParamsV2:
    """The parameters chest_phantom(seed=seed) draws first from its generator."""
    return PhantomParamsV2.draw(np.random.default_rng(seed))


def seeds_where(cond, n: int = 3) -> list[int]:
    found = [s for s in SEEDS if cond(params(s))][:n]
    assert len(found) == n, "too few seeds with the feature in SEEDS"
    return found


def centroid(mask: np.ndarray) -> np.ndarray:
    assert mask.any()
    return np.argwhere(mask).mean(0)


def test_default_is_v2_and_contract():
    hu, lab = phantom(32, 0)
    assert hu.shape == lab.shape == (32,) * 3 and hu.dtype == np.float32 and lab.dtype == np.uint8
    assert np.isfinite(hu).all() and hu.min() >= -1024 and hu.max() <= 3071
    np.testing.assert_array_equal(chest_phantom(size=32, seed=0, version=2), hu)
    assert not np.array_equal(chest_phantom(size=32, seed=0, version=1), hu)
    assert set(np.unique(lab)) <= {int(t) for t in Tissue}


def test_deterministic_and_varied():
    a, la = chest_phantom(size=24, seed=7, return_labels=True)
    b, lb = chest_phantom(size=24, seed=7, return_labels=True)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    diffs = [np.abs(phantom(32, s)[0] - phantom(32, 0)[0]).mean() for s in (1, 2, 3)]
    assert min(diffs) > 20.0, diffs


@pytest.mark.parametrize("seed", [0, 5])
def test_same_anatomy_across_sizes(seed):
    hu64, lab64 = phantom(64, seed)
    hu32, lab32 = phantom(32, seed)
    down = hu64.reshape(32, 2, 32, 2, 32, 2).mean((1, 3, 5))
    assert np.corrcoef(down.ravel(), hu32.ravel())[0, 1] > 0.9
    assert np.abs(down - hu32).mean() < 60.0
    for tissue in (Tissue.LUNG, Tissue.HEART, Tissue.FAT):  # the thin cord's label is too coarse at 32³
        c64 = (centroid(lab64 == tissue) - 31.5) * FOV / 64
        c32 = (centroid(lab32 == tissue) - 15.5) * FOV / 32
        assert np.abs(c64 - c32).max() < FOV / 32, (tissue.name, c64, c32)


@pytest.mark.parametrize("size,seed,margin", [(32, 3, (3, 5, 7)), (24, 11, 4)])
def test_margin_centre_equals_the_cube_exactly(size, seed, margin):
    hu, lab = phantom(size, seed)
    wide, wide_lab = chest_phantom(size=size, seed=seed, return_labels=True, margin=margin)
    md, mh, mw = (margin,) * 3 if isinstance(margin, int) else margin
    assert wide.shape == (size + 2 * md, size + 2 * mh, size + 2 * mw)
    crop = np.s_[md:md + size, mh:mh + size, mw:mw + size]
    np.testing.assert_array_equal(wide[crop], hu)
    np.testing.assert_array_equal(wide_lab[crop], lab)


def test_new_tissues_appear_over_seeds():
    seen = set()
    for seed in range(10):
        seen |= set(np.unique(phantom(32, seed)[1]).tolist())
    for tissue in (Tissue.SPLEEN, Tissue.KIDNEY, Tissue.BOWEL, Tissue.TABLE, Tissue.BREAST, Tissue.LESION,
                   Tissue.HEART, Tissue.BLOOD, Tissue.LIVER, Tissue.CORTICAL):
        assert tissue in seen, tissue.name
    features = ((lambda p: p.pacemaker, Tissue.METAL), (lambda p: "effusion" in p.diseases, Tissue.EFFUSION))
    for feature, tissue in features:
        seed = seeds_where(feature, n=1)[0]
        assert (phantom(32, seed)[1] == tissue).any(), (tissue.name, seed)


def test_hu_per_tissue_is_plausible():
    ranges = {Tissue.FAT: (-140, -40), Tissue.MUSCLE: (0, 90), Tissue.LUNG: (-930, -650), Tissue.LIVER: (30, 230),
              Tissue.CORTICAL: (300, 1400), Tissue.CANCELLOUS: (120, 800), Tissue.GAS: (-1000, -600),
              Tissue.TABLE: (-400, 300)}
    for seed in range(4):
        hu, lab = phantom(64, seed)
        air = hu[lab == Tissue.AIR]  # with the partial-volume rims of the body and of the scan's cuts
        assert np.median(air) == -1000.0 and (air < -900).mean() > 0.85
        for tissue, (lo, hi) in ranges.items():
            if (lab == tissue).sum() > 20:
                mean = float(hu[lab == tissue].mean())
                assert lo <= mean <= hi, (seed, tissue.name, mean)


def test_contrast_in_some_seeds_and_not_in_others():
    for contrast in (True, False):
        for seed in seeds_where(lambda p: bool(p.contrast) == contrast, n=2):
            hu, lab = phantom(64, seed)
            blood = float(np.median(hu[lab == Tissue.BLOOD]))
            assert (130 < blood < 1300) if contrast else (20 < blood < 70), (seed, contrast, blood)


def test_arms_down_reach_the_lateral_margins_and_raised_arms_do_not():
    m = 12  # 120 mm each side at 32³: a wide film

    def lateral_bone(seed):  # below the shoulders (lower half of the cube): humeri of arms down
        _, lab = phantom(32, seed, (0, 0, m))
        sides = np.concatenate([lab[16:, :, :m], lab[16:, :, -m:]], axis=2)
        return np.isin(sides, [Tissue.CORTICAL, Tissue.CANCELLOUS]).sum()
    # A scan field wide enough to keep the arms (narrower circles cut them, as in real CTs).
    for seed in seeds_where(lambda p: not p.arms_up and p.recon_diam > 470, n=2):
        assert lateral_bone(seed) > 5, seed
    for seed in seeds_where(lambda p: p.arms_up, n=2):
        assert lateral_bone(seed) == 0, seed


def test_table_lies_behind_the_patient():
    for seed in seeds_where(lambda p: p.table, n=2):
        _, lab = phantom(32, seed)
        table, body = lab == Tissue.TABLE, ~np.isin(lab, [Tissue.AIR, Tissue.TABLE])
        assert table.any()
        assert centroid(table)[1] > np.argwhere(body)[:, 1].mean() + 8  # posterior (large h)
    for seed in seeds_where(lambda p: not p.table, n=2):
        assert not (phantom(32, seed)[1] == Tissue.TABLE).any()


def test_air_outside_the_scan_range():
    for seed in seeds_where(lambda p: p.scan_len < 290, n=2):
        hu, lab = phantom(32, seed)
        cut = int((FOV - params(seed).scan_len) / 2 / (FOV / 32))  # whole slices beyond the range
        assert cut >= 1
        for slab in (lab[:cut], lab[-cut:]):
            assert (slab == Tissue.AIR).all()
        assert (hu[:cut] == -1000.0).all()


def test_orientation():
    for seed in range(3):
        _, lab = phantom(64, seed)
        c = 31.5
        heart = centroid(np.isin(lab, [Tissue.HEART, Tissue.BLOOD]))
        canal = centroid(lab == Tissue.CORD)
        assert heart[1] < canal[1] - 6  # heart anterior of the spine
        assert abs(canal[2] - c) < 4  # canal in the midline
        liver = lab == Tissue.LIVER
        if liver.sum() > 50:
            assert centroid(liver)[2] < c  # liver on the patient's right
        lung = lab == Tissue.LUNG
        assert min(lung[:, :, :32].sum(), lung[:, :, 32:].sum()) > 0.3 * lung.sum()


def test_parameter_distribution():
    draws = [params(s) for s in range(200)]
    lateral = np.array([2 * (p.half_w + p.fat_mm) for p in draws])
    ap = np.array([2 * (p.half_h + p.fat_mm) for p in draws])
    assert lateral.min() >= 260 and lateral.max() <= 400 and np.ptp(lateral) > 80
    assert ap.min() >= 180 and ap.max() <= 300
    share = lambda f: np.mean([f(p) for p in draws])  # noqa: E731
    assert 0.6 < share(lambda p: p.arms_up) < 0.8
    assert 0.6 < share(lambda p: p.table) < 0.8
    assert 0.4 < share(lambda p: p.contrast > 0) < 0.6
    assert 0.2 < share(lambda p: len(p.diseases) > 0) < 0.4
    assert share(lambda p: p.pacemaker or p.line) < 0.12
    assert 0.8 < share(lambda p: p.dome_drop > 0) < 0.98  # the right dome usually higher
    contrast = [p.contrast for p in draws if p.contrast]
    assert min(contrast) >= 150 and max(contrast) <= 350


def test_bad_arguments():
    with pytest.raises(ValueError, match="valid: 1, 2, 3, 4, 5"):
        chest_phantom(size=16, version=6)
    with pytest.raises(ValueError, match="margin"):
        chest_phantom(size=16, margin=-1)
    with pytest.raises(ValueError, match="margin"):
        chest_phantom(size=16, margin=(1, 2))


def test_phantoms_per_second_takes_the_version():
    for version in VERSIONS:
        assert phantoms_per_second(size=16, n=1, version=version) > 0


def test_cli_version(tmp_path):
    from xray2ct.data import layout
    from xray2ct.data.ctio import load_volume
    from xray2ct.data.prepare import SEED_STRIDE

    runner = CliRunner()
    args = ["phantoms", "--n", "1", "--size", "16", "--xray-size", "16", "--seed", "2"]
    for version in (1, 2, 3, 4):
        out = tmp_path / f"v{version}"
        result = runner.invoke(app, args + ["--out", str(out), "--version", str(version)])
        assert result.exit_code == 0, result.output
        hu, _ = load_volume(layout.volume_path(out, "phantom_0000"))
        expected = chest_phantom(size=16, seed=2 * SEED_STRIDE, version=version)
        assert np.abs(hu - expected).max() <= 0.5  # saved as integer HU
    bad = runner.invoke(app, args + ["--out", str(tmp_path / "bad"), "--version", "7"])
    assert bad.exit_code != 0 and "valid: 1, 2, 3, 4" in bad.output


def test_realism_measurements_and_report(tmp_path):
    from xray2ct.data.phantoms.realism import measure, report

    _, lab = phantom(32, 0, (4, 0, 4))
    m = measure(lab, FOV / 32)
    assert 1.0 < m["lung_l"] < 9.0 and 0.25 < m["ctr"] < 0.7
    assert 200 < m["lat_mm"] < 520 and 150 < m["ap_mm"] < 330
    result = report(n=2, size=16, images_dir=tmp_path)
    assert "total lung volume" in result.markdown and "cardiothoracic ratio" in result.markdown
    assert all(png.stat().st_size > 1000 for png in result.images) and len(result.images) == 2
