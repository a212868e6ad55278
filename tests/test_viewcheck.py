"""Swapped-view check: no warning for a correctly ordered pair, a warning for the swapped one,
on fresh phantoms (plain, radiograph-styled, mirrored) and on the bundled examples."""
from __future__ import annotations

import warnings
from importlib.resources import files
from pathlib import Path

import pytest
import torch

from xray2ct.data.viewcheck import SWAP_MARGIN, check_views, pa_likeness
from xray2ct.data.xrayio import load_xray
from xray2ct.physics.radiograph import RadiographStyle

EXAMPLES = Path(str(files("xray2ct"))) / "assets" / "examples"


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """(PA, lateral) images of 8 fresh phantoms, each plain, styled like a radiograph and mirrored."""
    from xray2ct.data.prepare import make_phantom_dataset

    root = tmp_path_factory.mktemp("views")
    make_phantom_dataset(root, n=8, size=32, seed=23, xray_size=64, progress=False)
    style, g = RadiographStyle(), torch.Generator().manual_seed(1)
    out = []
    for case in sorted(p for p in root.iterdir() if p.is_dir()):
        pa, lat = (load_xray(case / f"{case.name}_{v}_drr.png", size=64) for v in ("pa", "lat"))
        out += [(pa, lat), (style(pa[None, None], generator=g)[0, 0], style(lat[None, None], generator=g)[0, 0]),
                (pa.flip(-1), lat.flip(-1))]
    return out


def test_correct_order_never_warns_and_swapped_always_does(pairs):
    for pa, lat in pairs:
        assert check_views(pa, lat) is None
        msg = check_views(lat, pa, pa_name="a.png", lat_name="b.png")
        assert msg and "swapped" in msg and "a.png looks like a lateral" in msg


def test_scores_leave_a_wide_gap(pairs):
    gaps = [pa_likeness(pa) - pa_likeness(lat) for pa, lat in pairs]
    assert min(gaps) > SWAP_MARGIN + 0.1, gaps  # room for films less clean than these DRRs


@pytest.mark.parametrize("case", ["phantom_0018", "phantom_0019", "phantom_0027", "styled_phantom_0018", "dicom_9500031"])
def test_bundled_examples_both_ways(case):
    pa, lat = (load_xray(next(EXAMPLES.glob(f"{case}_{v}.*")), size=128) for v in ("pa", "lat"))
    assert check_views(pa, lat) is None
    assert check_views(lat, pa) is not None


def test_flat_or_tiny_images_do_not_warn():
    assert check_views(torch.zeros(32, 32), torch.zeros(32, 32)) is None
    with pytest.raises(ValueError, match="2D image"):
        pa_likeness(torch.zeros(3, 3))


def test_load_pair_warns_on_swapped_files():
    from xray2ct.engine.reconstruct import load_pair

    pa, lat = EXAMPLES / "phantom_0019_pa.png", EXAMPLES / "phantom_0019_lat.png"
    with pytest.warns(UserWarning, match="looks like a lateral.*swapped"):
        load_pair(lat, pa, 128)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_pair(pa, lat, 128)
