"""The DRR projector against analytic line integrals and the DESIGN.md orientation."""

import pytest
import torch

from xray2ct import Geometry, project
from xray2ct.geometry import get_view

MU = 0.02  # 1/mm


def ellipsoid_occupancy(g: Geometry, centre_mm, semi_axes_mm, sub: int = 4) -> torch.Tensor:
    """Fraction of each voxel inside the ellipsoid, by sub³ supersampling: (D, H, W), float64."""
    axes = []
    for a in range(3):
        s = g.voxel_mm[a]
        offsets = (torch.arange(sub, dtype=torch.float64) + 0.5) / sub - 0.5
        axes.append((g.axis_mm(a, dtype=torch.float64)[:, None] + offsets[None] * s).reshape(-1))
    pts = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)
    inside = (((pts - torch.tensor(centre_mm, dtype=torch.float64)) / torch.tensor(semi_axes_mm, dtype=torch.float64)) ** 2).sum(-1) <= 1
    d, h, w = g.volume_shape
    return inside.double().reshape(d, sub, h, sub, w, sub).mean(dim=(1, 3, 5))


def analytic_chords(g: Geometry, view: str, centre_mm, semi_axes_mm):
    """Exact chord length of every pixel's ray through the ellipsoid, and the ray's closest
    normalized approach (0 = through the centre, 1 = tangent): each (rows, cols)."""
    v = get_view(view)
    source = torch.zeros(3, dtype=torch.float64)
    source[v.depth_axis] = v.source_sign * g.source_iso_mm
    r_mm, c_mm = g.detector_mm(dtype=torch.float64)
    pix = torch.zeros(*g.det_shape, 3, dtype=torch.float64)
    pix[..., 0] = r_mm[:, None]
    pix[..., v.col_axis] = c_mm[None, :]
    pix[..., v.depth_axis] = v.source_sign * (g.source_iso_mm - g.source_det_mm)
    scale = torch.tensor(semi_axes_mm, dtype=torch.float64)
    o = (source - torch.tensor(centre_mm, dtype=torch.float64)) / scale  # unit-sphere frame
    dvec = (pix - source) / scale
    a = (dvec**2).sum(-1)
    b = 2 * (dvec * o).sum(-1)
    c = (o**2).sum() - 1
    disc = b**2 - 4 * a * c
    chord = torch.sqrt(disc.clamp_min(0)) / a * (pix - source).norm(dim=-1)
    closest = torch.sqrt((1 - disc / (4 * a)).clamp_min(0))  # impact parameter in the unit-sphere frame
    return chord, closest


@pytest.mark.parametrize("centre_mm", [(0.0, 0.0, 0.0), (10.0, -14.0, 18.0)])
def test_ellipsoid_line_integrals_match_analytic(centre_mm):
    g = Geometry(volume_shape=(48, 48, 48), voxel_mm=2.0, det_shape=(64, 64))
    semi = (30.0, 22.0, 26.0)
    mu = MU * ellipsoid_occupancy(g, centre_mm, semi)[None, None]
    drr = project(mu, g)
    for i, view in enumerate(g.views):
        chord, closest = analytic_chords(g, view, centre_mm, semi)
        interior = closest < 0.7  # rays well inside; grazing rays cross partial-volume voxels
        assert interior.sum() > 50
        rel = (drr[0, i][interior] - MU * chord[interior]).abs() / (MU * chord[interior])
        assert rel.max() < 0.01, f"{view}: max rel error {rel.max():.3%}"
        outside = closest > 1.2  # misses by more than partial-volume + interpolation reach
        assert outside.sum() > 50 and drr[0, i][outside].abs().max() == 0


def test_sphere_peak_equals_diameter():
    g = Geometry(volume_shape=(64, 64, 64), voxel_mm=2.0)
    mu = MU * ellipsoid_occupancy(g, (0, 0, 0), (40.0, 40.0, 40.0))[None, None]
    peak = project(mu, g).amax(dim=(-1, -2))
    torch.testing.assert_close(peak, torch.full_like(peak, 2 * 40.0 * MU), rtol=0.01, atol=0)


def _marker(g, d, h, w):
    mu = torch.zeros(1, 1, *g.volume_shape)
    mu[0, 0, d, h, w] = 1.0
    return project(mu, g)[0]


def _centroid(img):
    rows, cols = img.shape
    total = img.sum()
    r = (img.sum(1) * torch.arange(rows)).sum() / total
    c = (img.sum(0) * torch.arange(cols)).sum() / total
    return r.item(), c.item()


def test_orientation_follows_design():
    g = Geometry(volume_shape=(32, 32, 32), voxel_mm=4.0, det_shape=(64, 64))
    # head end (small d), anterior (small h), patient's left (large w)
    pa, lat = _marker(g, 4, 6, 27)
    r, c = _centroid(pa)
    assert r < 32 and c > 32, "PA: head at the top, patient's left on the image's right"
    r, c = _centroid(lat)
    assert r < 32 and c < 32, "lateral: head at the top, anterior on the image's left"


def test_magnification_matches_cone_geometry():
    g = Geometry(volume_shape=(33, 33, 33), voxel_mm=4.0, det_shape=(128, 128))
    centre = (g.det_shape[1] - 1) / 2
    for h in (2, 16, 30):  # anterior (near detector) ... posterior (near source) for PA
        _, c = _centroid(_marker(g, 16, h, 28)[0])
        w_mm = (28 - 16) * 4.0
        h_mm = (h - 16) * 4.0
        expected = w_mm * g.source_det_mm / (g.source_iso_mm - h_mm) / g.det_pixel_mm
        assert c - centre == pytest.approx(expected, rel=0.01)


def test_gradcheck_float64():
    g = Geometry(volume_shape=(4, 5, 6), voxel_mm=10.0, det_shape=(5, 5))
    mu = torch.rand(1, 1, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: project(x, g), (mu,), eps=1e-6, atol=1e-5)


def test_batch_equals_single():
    g = Geometry(volume_shape=(12, 12, 12), voxel_mm=5.0, det_shape=(20, 20))
    mu = torch.rand(3, 1, 12, 12, 12) * MU
    batched = project(mu, g)
    single = torch.cat([project(mu[i : i + 1], g) for i in range(3)])
    torch.testing.assert_close(batched, single)


def test_bfloat16_input_is_supported():
    g = Geometry(volume_shape=(12, 12, 12), voxel_mm=5.0, det_shape=(20, 20))
    mu = torch.rand(1, 1, 12, 12, 12) * MU
    out = project(mu.bfloat16(), g)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), project(mu, g), rtol=0.02, atol=1e-3)


def test_wrong_shape_is_named():
    g = Geometry(volume_shape=(12, 12, 12), voxel_mm=5.0)
    with pytest.raises(ValueError, match="does not match geometry"):
        project(torch.zeros(1, 1, 10, 12, 12), g)
    with pytest.raises(ValueError, match=r"\(B, 1, D, H, W\)"):
        project(torch.zeros(12, 12, 12), g)


def _grid_sample_view(mu, geometry, view):
    """The projector before its separable matmul form: one batched grid_sample over all slices."""
    import torch.nn.functional as F

    from xray2ct.physics.projector import _slices

    v = get_view(view)
    slices = _slices(mu, v.depth_axis)
    d_mm, c_mm, step_mm = geometry.ray_in_slice(view, mu.device, slices.dtype)
    half_d = (geometry.volume_shape[0] - 1) / 2 * geometry.voxel_mm[0]
    half_c = (geometry.volume_shape[v.col_axis] - 1) / 2 * geometry.voxel_mm[v.col_axis]
    k, (rows, cols) = slices.shape[0], geometry.det_shape
    grid = torch.stack([(c_mm / half_c).expand(k, rows, cols), (d_mm / half_d).expand(k, rows, cols)], dim=-1)
    return F.grid_sample(slices, grid, mode="bilinear", padding_mode="zeros", align_corners=True).sum(0) * step_mm


@pytest.mark.parametrize("shape, det", [((16, 16, 16), (40, 40)), ((12, 16, 20), (50, 45))])
def test_separable_projection_equals_grid_sample(shape, det, monkeypatch):
    """Values and gradients equal the grid_sample formulation, also when split into chunks of slices."""
    from xray2ct.physics import projector

    g = Geometry(volume_shape=shape, voxel_mm=(10.0, 9.0, 8.0), det_shape=det)
    mu = torch.rand(2, 1, *shape, dtype=torch.float64, requires_grad=True)
    for chunk in (None, 1000):  # 1000 elements: a few slices per chunk
        if chunk:
            monkeypatch.setattr(projector, "CHUNK_ELEMENTS", chunk)
        for view in ("pa", "lat"):
            ours = projector.project_view(mu, g, view)
            ref = _grid_sample_view(mu, g, view)
            assert torch.allclose(ours, ref, atol=1e-10, rtol=0)
            w = torch.rand_like(ref)
            g1, = torch.autograd.grad((ours * w).sum(), mu)
            g2, = torch.autograd.grad((ref * w).sum(), mu)
            assert torch.allclose(g1, g2, atol=1e-10, rtol=0)
