"""Per-view acquisitions (ViewSetup), the AP and RL views, and the model lifting with a study's geometry."""
import pytest
import torch

from xray2ct import Geometry, project
from xray2ct.geometry import ViewSetup


def _mu(shape=(12, 14, 16), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 1, *shape, generator=g, dtype=torch.float64) * 0.03


def test_explicit_shared_setup_is_exactly_the_shared_geometry():
    g = Geometry(volume_shape=(12, 14, 16), voxel_mm=4.0, det_shape=(20, 20))
    same = ViewSetup(g.source_iso_mm, g.source_det_mm, g.det_pixel_mm)
    h = Geometry(volume_shape=(12, 14, 16), voxel_mm=4.0, det_shape=(20, 20), per_view={"pa": same, "lat": same})
    assert h.per_view and g.per_view == ()
    mu = _mu()
    assert torch.equal(project(mu, g), project(mu, h))
    pts = torch.randn(50, 3, dtype=torch.float64) * 20
    for view in g.views:
        for a, b in zip(g.project_points(pts, view), h.project_points(pts, view)):
            assert torch.equal(a, b)


def test_per_view_distances_match_a_geometry_built_with_them():
    g = Geometry(volume_shape=(12, 14, 16), voxel_mm=4.0, det_shape=(20, 20))
    lat = Geometry(volume_shape=(12, 14, 16), voxel_mm=4.0, det_shape=(20, 20), source_iso_mm=1650.0,
                   source_det_mm=1800.0, det_pixel_mm=3.5)
    mixed = Geometry(volume_shape=(12, 14, 16), voxel_mm=4.0, det_shape=(20, 20),
                     per_view={"lat": ViewSetup(1650.0, 1800.0, 3.5)})
    mu = _mu()
    out = project(mu, mixed)
    torch.testing.assert_close(out[:, 0], project(mu, g, ["pa"])[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(out[:, 1], project(mu, lat, ["lat"])[:, 0])
    assert not torch.allclose(out[:, 1], project(mu, g, ["lat"])[:, 0])


@pytest.mark.parametrize("view", ["pa", "lat"])
def test_detector_offset_shifts_the_image_by_whole_pixels(view):
    base = Geometry(volume_shape=(12, 14, 16), voxel_mm=4.0, det_shape=(40, 40), det_pixel_mm=2.0)
    setup = ViewSetup(base.source_iso_mm, base.source_det_mm, 2.0, det_offset_mm=(6.0, -4.0))  # (+3, -2) px
    shifted = Geometry(volume_shape=(12, 14, 16), voxel_mm=4.0, det_shape=(40, 40), det_pixel_mm=2.0,
                       per_view={view: setup})
    mu = _mu()
    a = project(mu, base, [view])[0, 0]
    b = project(mu, shifted, [view])[0, 0]
    # detector centre 3 px lower: what was at row r is now at row r - 3 (cols: 2 px left -> +2)
    torch.testing.assert_close(b[:-3, 2:], a[3:, :-2])
    pts = torch.randn(30, 3, dtype=torch.float64) * 10
    ra, ca, _ = base.project_points(pts, view)
    rb, cb, _ = shifted.project_points(pts, view)
    torch.testing.assert_close(rb, ra - 3)
    torch.testing.assert_close(cb, ca + 2)


@pytest.mark.parametrize("view, mirror, axis", [("ap", "pa", -2), ("rl", "lat", -1)])
def test_ap_and_rl_are_the_mirrored_source_side(view, mirror, axis):
    """AP of a volume = PA of the volume flipped front to back (the source changes side, the
    image is read the same way); likewise RL and the LL lateral."""
    g = Geometry(volume_shape=(12, 14, 16), voxel_mm=4.0, det_shape=(20, 22), views=(view, mirror))
    mu = _mu()
    torch.testing.assert_close(project(mu, g, [view]), project(mu.flip(axis), g, [mirror]))
    assert not torch.allclose(project(mu, g, [view]), project(mu, g, [mirror]))


def test_scaled_keeps_per_view_setups_physical():
    g = Geometry(volume_shape=(16, 16, 16), voxel_mm=5.0, det_shape=(64, 64),
                 per_view={"lat": ViewSetup(1650.0, 1800.0, 2.0, (4.0, 0.0))})
    s = g.scaled((8, 8, 8), det_shape=(32, 32))
    assert s.setup("lat").det_pixel_mm == pytest.approx(4.0) and s.setup("lat").det_offset_mm == (4.0, 0.0)
    assert s.setup("pa").source_iso_mm == g.source_iso_mm


@pytest.mark.parametrize("per_view", [{"ap": ViewSetup(1000.0, 1200.0)}, (None,),
                                      {"lat": ViewSetup(30.0, 1200.0)}])
def test_bad_per_view_is_refused(per_view):
    with pytest.raises(ValueError):
        Geometry(volume_shape=(16, 16, 16), voxel_mm=5.0, per_view=per_view)


@pytest.mark.parametrize("kwargs", [dict(source_iso_mm=900.0, source_det_mm=800.0), dict(det_pixel_mm=0.0),
                                    dict(det_offset_mm=(1.0,))])
def test_bad_view_setup_is_refused(kwargs):
    base = dict(source_iso_mm=1000.0, source_det_mm=1200.0)
    with pytest.raises(ValueError):
        ViewSetup(**{**base, **kwargs})


def test_model_lifting_follows_the_study_geometry_and_restores():
    from xray2ct.config import Config
    from xray2ct.models.net import build_model, using_geometry

    cfg = Config()
    m = cfg.model
    import dataclasses

    m = dataclasses.replace(m, volume_size=16, xray_img_size=32, token_grid=4, decoder_channels=(16, 8),
                            encoder_channels=(8, 16, 16), xray_feature_dim=16, voxel_dim=16, num_heads=2,
                            key_dim=8, lifted_skips=True)
    cfg = dataclasses.replace(cfg, model=m)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    x = torch.rand(1, 2, 32, 32)
    nominal = cfg.geometry.build(16, 32)
    with torch.no_grad():
        ref = model(x)["volume"]
        with using_geometry(model, nominal):  # the default geometry rebuilt: exactly today's output
            assert torch.equal(model(x)["volume"], ref)
        study = nominal.with_views(("ap", "lat"), {"ap": ViewSetup(1650.0, 1800.0, 14.0),
                                                   "lat": ViewSetup(1650.0, 1800.0, 14.0, (7.0, 0.0))})
        with using_geometry(model, study):
            assert model.geometry is study and all(lf.views == ("ap", "lat") for lf in model.liftings())
            other = model(x)["volume"]
        assert not torch.allclose(other, ref)
        assert torch.equal(model(x)["volume"], ref)  # restored
    with pytest.raises(ValueError, match="detector"):
        model.set_geometry(cfg.geometry.build(16, 64))
