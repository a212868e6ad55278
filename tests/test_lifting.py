"""Geometry lifting (a lit detector pixel lights exactly its ray's cells), depth priors, view fusion."""

import math

import pytest
import torch

from xray2ct.geometry import Geometry
from xray2ct.models.lifting import GeometryLifting, LearnableDepthPriors, ViewFusion

GRID = 8


@pytest.fixture(scope="module")
def geometry():
    return Geometry(volume_shape=(32, 32, 32), voxel_mm=10.0, det_shape=(64, 64))


def _expected_cells(geometry, view, fmap, pixel):
    """Independently: cells whose centre projects into feature pixel `pixel` of an (h, w) map,
    plus the distance (in feature pixels) of each centre to the nearest pixel edge."""
    h, w = fmap
    centers = geometry.scaled((GRID,) * 3).voxel_centers_mm(dtype=torch.float64)
    row, col, _ = geometry.project_points(centers, view)
    R, C = geometry.det_shape
    # detector_px -> feature-map continuous coords (pixel j covers [j, j+1))
    u, v = (row + 0.5) * h / R, (col + 0.5) * w / C
    inside = (u.floor() == pixel[0]) & (v.floor() == pixel[1])
    margin = torch.minimum((u - u.round()).abs(), (v - v.round()).abs())
    return inside, margin, (u - 0.5, v - 0.5)


@pytest.mark.parametrize("view", ["pa", "lat"])
@pytest.mark.parametrize("fmap", [(64, 64), (16, 16)])  # detector resolution and a stride-4 map
def test_nearest_lights_exactly_the_ray(geometry, view, fmap):
    lifting = GeometryLifting(geometry, GRID, mode="nearest")
    v = geometry.views.index(view)
    # the feature pixel that cell (3, 4, 5) falls in, so the lit set is not empty
    _, _, (u, w) = _expected_cells(geometry, view, fmap, (0, 0))
    pixel = (int((u[3, 4, 5] + 0.5).floor()), int((w[3, 4, 5] + 0.5).floor()))
    features = torch.zeros(1, 2, 1, *fmap)
    features[0, v, 0, pixel[0], pixel[1]] = 1.0
    lit = lifting(features)[0, v, 0] > 0.5  # (G, G, G)
    expected, margin, _ = _expected_cells(geometry, view, fmap, pixel)
    # cells within 1e-4 px of a pixel edge could round either way: make sure there are none
    assert margin.min() > 1e-4
    assert torch.equal(lit, expected)
    if fmap[0] <= 2 * GRID:
        # a coarse pixel is wider than the cone-beam drift of a ray: lit at most depths
        depth_axis = {"pa": 1, "lat": 2}[view]
        other = tuple(a for a in range(3) if a != depth_axis)
        assert lit.any(dim=other[1]).any(dim=other[0]).sum() >= GRID // 2
    # nothing leaks into the other view
    assert lifting(features)[0, 1 - v].abs().max() == 0


@pytest.mark.parametrize("view", ["pa", "lat"])
def test_bilinear_lights_cells_within_one_pixel(geometry, view):
    fmap = (16, 16)
    lifting = GeometryLifting(geometry, GRID, mode="bilinear")
    v = geometry.views.index(view)
    pixel = (7, 5)
    features = torch.zeros(1, 2, 1, *fmap)
    features[0, v, 0, pixel[0], pixel[1]] = 1.0
    out = lifting(features)[0, v, 0]
    _, _, (u, w) = _expected_cells(geometry, view, fmap, pixel)
    du, dw = (u - pixel[0]).abs(), (w - pixel[1]).abs()
    weight = ((1 - du).clamp(min=0) * (1 - dw).clamp(min=0)).float()
    assert (weight > 0).any()
    torch.testing.assert_close(out, weight, atol=1e-5, rtol=0)


def test_depth_runs_along_each_view_axis(geometry):
    lifting = GeometryLifting(geometry, GRID)
    pa, lat = lifting.depth
    # PA depth grows along h (anterior -> posterior), lateral along w (right -> left)
    assert (pa[:, 1:] > pa[:, :-1]).all() and (pa[:, :, 1:] == pa[:, :, :-1]).all()
    assert (lat[:, :, 1:] > lat[:, :, :-1]).all() and (lat[:, 1:] == lat[:, :-1]).all()
    assert 0 < pa.min() < 0.1 and 0.9 < pa.max() < 1
    # buffers are derived, not saved
    assert "sample_grid" not in lifting.state_dict()


def test_lifting_rejects_wrong_view_count(geometry):
    with pytest.raises(ValueError, match="views"):
        GeometryLifting(geometry, GRID)(torch.zeros(1, 3, 4, 16, 16))
    with pytest.raises(ValueError, match="mode"):
        GeometryLifting(geometry, GRID, mode="cubic")


def _depth(num_views=2, n=GRID):
    z = torch.linspace(0.01, 0.99, n)
    return z.view(1, 1, n, 1).expand(num_views, n, n, n).contiguous()  # depth along axis 1


def test_fixed_priors_have_exact_boundaries_and_no_boundary_params():
    priors = LearnableDepthPriors(num_views=2, desc_dim=8, channels=4, learnable=False)
    names = {n for n, _ in priors.named_parameters()}
    assert names == {"region_embed"}
    bounds = priors.boundaries(torch.randn(3, 2, 8))
    assert bounds.shape == (3, 2, 4)
    assert bounds.tolist() == [[[0.0, 0.25, 0.75, 1.0]] * 2] * 3


def test_memberships_sum_to_one_and_follow_boundaries():
    priors = LearnableDepthPriors(num_views=2, desc_dim=8, channels=4, learnable=False, temperature=0.01)
    depth = _depth()
    m = priors.memberships(depth, priors.boundaries(torch.zeros(1, 2, 8)))  # (1, V, R, G, G, G)
    torch.testing.assert_close(m.sum(2), torch.ones(1, 2, GRID, GRID, GRID))
    z = depth[0, :, 0, 0]
    region = m[0, 0, :, :, 0, 0].argmax(0)  # (G,) region of each depth along axis 1
    assert region.tolist() == [0 if d < 0.25 else 2 if d > 0.75 else 1 for d in z.tolist()]


def test_learnable_priors_start_at_prior_and_move_with_descriptors():
    torch.manual_seed(0)
    priors = LearnableDepthPriors(num_views=2, desc_dim=8, channels=4, learnable=True)
    features, depth = torch.randn(2, 2, 4, GRID, GRID, GRID), _depth()
    desc = torch.randn(2, 2, 8)
    out, info = priors(features, depth, desc)
    assert out.shape == features.shape
    torch.testing.assert_close(info["boundaries"], torch.tensor([0, 0.25, 0.75, 1.0]).expand(2, 2, 4), atol=1e-3, rtol=0)
    assert info["log_std"].shape == (2, 2, 3)
    # a step on a loss that wants the first PA boundary further back moves it per patient
    opt = torch.optim.SGD(priors.parameters(), lr=0.5)
    for _ in range(2):  # first step wakes the zero-initialised last layer, second uses it
        opt.zero_grad()
        loss = -priors(features, depth, desc)[1]["boundaries"][:, 0, 1].sum()
        loss.backward()
        opt.step()
    assert priors.predictor[-1].weight.abs().sum() > 0
    bounds = priors.boundaries(desc)
    assert (bounds[:, 0, 1] > 0.25).all()
    assert not torch.allclose(bounds[0], bounds[1]), "boundaries must depend on the patient's descriptors"
    assert (bounds[..., 1:] > bounds[..., :-1]).all() and torch.allclose(bounds[..., -1], torch.ones(2, 2))


def test_priors_confidence_scales_features():
    priors = LearnableDepthPriors(num_views=2, desc_dim=8, channels=4, learnable=True)
    with torch.no_grad():
        priors.region_embed.zero_()
        priors.log_std.fill_(math.log(2.0))
    features = torch.randn(1, 2, 4, GRID, GRID, GRID)
    out, _ = priors(features, _depth(), torch.randn(1, 2, 8))
    torch.testing.assert_close(out, features / 2)


def test_bad_boundaries():
    with pytest.raises(ValueError, match="boundaries"):
        LearnableDepthPriors(desc_dim=8, channels=4, boundaries=(0.0, 0.5, 0.4, 1.0))


def test_view_fusion_shape():
    fusion = ViewFusion(2, 4, 6)
    assert fusion(torch.randn(2, 2, 4, 3, 3, 3)).shape == (2, 6, 3, 3, 3)


@pytest.mark.parametrize("grid, size", [(8, 8), (16, 32), (32, 32)])
def test_separable_lifting_equals_grid_sample(geometry, grid, size):
    """The matmul lifting is grid_sample's bilinear sampling, values and gradients."""
    lifting = GeometryLifting(geometry, grid)
    feats = torch.randn(2, 2, 3, size, size, dtype=torch.float64, requires_grad=True)
    ours = lifting(feats)
    V, G = 2, grid
    coords = lifting._coords64.reshape(V, G, G * G, 2).repeat(2, 1, 1, 1)
    ref = torch.nn.functional.grid_sample(feats.flatten(0, 1), coords, mode="bilinear", padding_mode="zeros",
                                          align_corners=False).view(2, V, 3, G, G, G)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    weights = torch.randn_like(ref)
    g_ours, = torch.autograd.grad((ours * weights).sum(), feats)
    g_ref, = torch.autograd.grad((ref * weights).sum(), feats)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-10)


def test_lifted_skip_is_a_conv_over_the_lifted_views(geometry):
    """Projecting each view in 2D before lifting equals a 1x1x1 conv after it (lifting is linear)."""
    from xray2ct.models.lifting import LiftedSkip

    skip = LiftedSkip(geometry, 16, in_ch=4, out_ch=3).double().eval()
    feats = torch.randn(2, 2, 4, 16, 16, dtype=torch.float64)
    lifted = skip.lifting(feats)  # (B, V, 4, 16, 16, 16)
    w = skip.project.weight.view(2, 3, 4)  # per view (out, in)
    bn = skip.norm
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).view(2, 3)
    shift = (bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)).view(2, 3)
    coverage = skip.lifting(torch.ones(1, 2, 1, 16, 16, dtype=torch.float64))[0, :, 0]  # (V, r, r, r)
    expected = sum(torch.einsum("oc,bcxyz->boxyz", w[v] * scale[v, :, None], lifted[:, v])
                   + shift[v, None, :, None, None, None] * coverage[v] for v in range(2))
    torch.testing.assert_close(skip(feats), expected)


def _study(geometry, frontal="ap", sid=1800.0, sod=1650.0, pitch=0.9):
    from xray2ct.geometry import ViewSetup

    return geometry.with_views((frontal, "lat"), {frontal: ViewSetup(sod, sid, pitch, (3.0, -2.0)),
                                                  "lat": ViewSetup(sod, sid, pitch * 1.1)})


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_per_sample_geometry_equals_set_geometry(geometry, mode):
    """Each sample lifted with its own geometry equals the model lifting with that geometry;
    the per-sample path neither caches nor changes the module's own geometry."""
    torch.manual_seed(0)
    features = torch.randn(3, 2, 5, 16, 16, dtype=torch.float64)
    per_sample = [geometry, _study(geometry), _study(geometry, "pa", 1200.0, 1000.0, 1.2)]
    lifting = GeometryLifting(geometry, GRID, mode=mode)
    mixed = lifting(features, per_sample)
    for b, g in enumerate(per_sample):
        own = GeometryLifting(g, GRID, mode=mode)(features[b : b + 1])
        torch.testing.assert_close(mixed[b : b + 1], own, rtol=1e-12, atol=1e-12)
    assert lifting.geometry == geometry and lifting._matrices == {}


def test_per_sample_lifting_passes_gradients_and_checks_its_input(geometry):
    lifting = GeometryLifting(geometry, GRID)
    features = torch.randn(2, 2, 4, 16, 16, requires_grad=True)
    lifting(features, [_study(geometry)] * 2).square().sum().backward()
    assert features.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="2 geometries for a batch of 1"):
        lifting(features[:1], [geometry] * 2)
    with pytest.raises(ValueError, match="axes"):
        lifting(features, [geometry.with_views(("lat", "pa"))] * 2)
