"""Where the patient stood (`xray2ct.pose`, `refine.fit_shift`): a shift moves the volume by
exactly its voxels and is differentiable; refinement finds a patient placed 2 voxels off the
beam's centre, refines in the patient's frame, and leaves a centred patient exactly as before;
`pose.placed` and `engine.refining.refine_placed` let the network itself see the patient where
the films show them."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from xray2ct.config import ConfigError, RefineConfig, config_from_dict
from xray2ct.data.phantoms import chest_phantom
from xray2ct.geometry import Geometry
from xray2ct.metrics import psnr
from xray2ct.physics.hu import hu_to_mu, hu_to_unit, unit_to_hu
from xray2ct.physics.projector import project
from xray2ct.physics.radiograph import robust_normalize
from xray2ct.pose import pad_voxels, padded, placed, shifted
from xray2ct.refine import data_term, fit_shift, refine, reproject

N, S = 24, 48
VOXEL = 240 / N  # 10 mm, as the bundled model's
GEOMETRY = Geometry(volume_shape=(N, N, N), voxel_mm=VOXEL, source_iso_mm=1650, source_det_mm=1800,
                    det_shape=(S, S), det_pixel_mm=430 / S)


def test_a_whole_voxel_shift_moves_the_volume_by_that_many_voxels():
    v = torch.rand(2, 1, 6, 8, 10, dtype=torch.float64)
    g = Geometry(volume_shape=(6, 8, 10), voxel_mm=5.0)
    pad = pad_voxels(12.0, g)
    assert pad == 4 and padded(g, pad).volume_shape == (6, 16, 18)
    still = shifted(v, torch.zeros(3, dtype=torch.float64), g, pad)
    assert torch.allclose(still[:, :, :, pad:-pad, pad:-pad], v, atol=1e-12)
    moved = shifted(v, torch.tensor([[0.0, -5.0, 10.0], [0.0, 0.0, 0.0]], dtype=torch.float64), g, pad)
    # sample 0: one voxel anterior (-h), two voxels to the left (+w); sample 1 stays
    assert torch.allclose(moved[0, :, :, pad - 1:-pad - 1, pad + 2:-pad + 2], v[0], atol=1e-12)
    assert torch.allclose(moved[1], still[1], atol=1e-12)


def test_a_shift_along_d_continues_the_end_slices():
    v = torch.arange(4, dtype=torch.float64).view(1, 1, 4, 1, 1).expand(1, 1, 4, 3, 3).contiguous()
    g = Geometry(volume_shape=(4, 3, 3), voxel_mm=10.0)
    out = shifted(v, torch.tensor([10.0, 0, 0], dtype=torch.float64), g, 2)  # one slice towards the feet
    assert out[0, 0, :, 3, 3].tolist() == [0.0, 0.0, 1.0, 2.0]


def test_the_shift_has_a_gradient():
    v = torch.rand(1, 1, 8, 8, 8)
    g = Geometry(volume_shape=(8, 8, 8), voxel_mm=10.0)
    shift = torch.tensor([3.0, -4.0, 5.0], requires_grad=True)
    (shifted(v, shift, g, 3) * torch.rand(1, 1, 8, 14, 14)).sum().backward()
    assert shift.grad is not None and bool(torch.isfinite(shift.grad).all()) and float(shift.grad.abs().min()) > 0


@pytest.fixture(scope="module")
def scene():
    """A phantom (patient frame), films of it placed at a shift (d, h, w) mm, and a prior: the
    truth slightly blurred and biased, with an honest σ."""
    truth = hu_to_unit(torch.as_tensor(chest_phantom(N, seed=5, fov_mm=240.0)).float())[None, None]
    pad = pad_voxels(40.0, GEOMETRY)

    def films(shift):
        room = shifted(truth, torch.tensor(shift), GEOMETRY, pad)
        return robust_normalize(project(hu_to_mu(unit_to_hu(room)), padded(GEOMETRY, pad)))

    mu = (torch.nn.functional.avg_pool3d(torch.nn.functional.pad(truth, (1,) * 6, mode="replicate"), 3, stride=1)
          * 0.97).clamp(0, 1)
    log_var = torch.log(((mu - truth) ** 2).mean().expand_as(mu).clone())
    return truth, films, mu, log_var


@pytest.fixture(scope="module")
def patient(scene):
    """The scene's films centred and placed 20 mm to the patient's left."""
    truth, films, mu, log_var = scene
    return truth, films([0.0, 0.0, 0.0]), films([0.0, 0.0, 20.0]), mu, log_var


def test_refinement_finds_a_patient_placed_off_centre(patient):
    truth, _, off, mu, log_var = patient
    settings = RefineConfig(steps=100)
    shift = fit_shift(mu, off, GEOMETRY, settings)[0]
    assert shift.shape == (1, 3)
    assert shift[0, :2].tolist() == [0.0, 0.0]  # below shift_min_mm: left to the volume
    assert 16.0 <= float(shift[0, 2]) <= 24.0
    found = refine(mu, log_var, off, GEOMETRY, settings)
    assumed = refine(mu, log_var, off, GEOMETRY, dataclasses.replace(settings, shift_steps=0))
    assert found.shift_mm is not None and assumed.shift_mm is None
    assert "to the patient's left" in found.placement() and assumed.placement() is None
    # refined in the patient's frame: close to the centred truth; without the shift the body blurs
    assert float(psnr(found.volume, truth)) > float(psnr(assumed.volume, truth)) + 2.0
    assert float(psnr(found.volume, truth)) > float(psnr(mu, truth))
    # the reprojection through the shift explains the films better than without it
    err = lambda shift: float((reproject(found.volume, off, GEOMETRY, shift_mm=shift) - off).pow(2).mean())  # noqa: E731
    assert err(found.shift_mm) < 0.5 * err(None)


def test_a_shift_no_film_shows_side_on_or_that_explains_little_is_not_fitted(patient):
    _, _, off, mu, _ = patient
    # 20 mm to the patient's left runs along the lateral film's rays: it only magnifies
    lateral = GEOMETRY.with_views(["lat"])
    assert not bool(fit_shift(mu, off[:, 1:], lateral, RefineConfig())[0].any())
    assert not bool(fit_shift(mu, off, GEOMETRY, RefineConfig(shift_min_gain=1000.0))[0].any())


def test_the_gain_gate_weighs_the_whole_fitted_placement(scene):
    """A patient 20 mm to the left and 8 mm lower: the 8 mm is left to the volume (under
    shift_min_mm), but the gate judges the placement with it, which explains the films better
    than its 20 mm part alone (a network that half-follows a shifted patient leaves such parts)."""
    _, films, mu, _ = scene
    off = films([8.0, 0.0, 20.0])
    settings = RefineConfig()
    best = fit_shift(mu, off, GEOMETRY, dataclasses.replace(settings, shift_min_mm=0.0, shift_min_gain=1.0))[0]
    assert 5.0 <= float(best[0, 0]) <= 11.0 and 16.0 <= float(best[0, 2]) <= 24.0
    part = best * torch.tensor([0.0, 0.0, 1.0])
    pad = pad_voxels(settings.shift_max_mm, GEOMETRY)
    error = lambda t: float(data_term(shifted(mu, t, GEOMETRY, pad), off, padded(GEOMETRY, pad),  # noqa: E731
                                      settings.fog_order, pool=4))
    whole_gain, part_gain = error(torch.zeros(1, 3)) / error(best), error(torch.zeros(1, 3)) / error(part)
    assert whole_gain > 1.1 * part_gain > 1.1  # the 8 mm matters to the fit
    gate = (whole_gain * part_gain) ** 0.5  # between the two: passed by the whole placement only
    shift = fit_shift(mu, off, GEOMETRY, dataclasses.replace(settings, shift_min_gain=gate))[0]
    assert float(shift[0, 0]) == 0.0 and 16.0 <= float(shift[0, 2]) <= 24.0
    too_strict = dataclasses.replace(settings, shift_min_gain=1.1 * whole_gain)
    assert not bool(fit_shift(mu, off, GEOMETRY, too_strict)[0].any())


def test_a_centred_patient_is_refined_exactly_as_without_the_fit(patient):
    truth, centred, _, mu, log_var = patient
    found = refine(mu, log_var, centred, GEOMETRY, RefineConfig(steps=30))
    plain = refine(mu, log_var, centred, GEOMETRY, RefineConfig(steps=30, shift_steps=0))
    assert not bool(found.shift_mm.any()) and found.placement() is None
    assert torch.equal(found.volume, plain.volume)


def test_shift_settings_are_checked():
    with pytest.raises(ConfigError, match="shift_min_mm"):
        config_from_dict({"refine": {"shift_min_mm": 50.0, "shift_max_mm": 40.0}})
    with pytest.raises(ConfigError, match="shift_min_gain"):
        config_from_dict({"refine": {"shift_min_gain": 0.5}})
    with pytest.raises(ConfigError, match="shift_max_mm"):
        config_from_dict({"refine": {"shift_max_mm": 1000.0}})


def test_the_web_page_says_where_the_patient_was_found():
    import numpy as np

    from xray2ct.refine import RefineResult
    from xray2ct.webapp import Result, summary_lines

    def lines(shift):
        refined = RefineResult(torch.zeros(1, 1, 2, 2, 2), 1e-3, 1e-5, 10, 1.0, [], shift)
        return " ".join(summary_lines(Result(np.zeros((2, 2, 2)), None, (10.0,) * 3, {}, 1.0, refinement=refined)))

    found = lines(torch.tensor([[-15.0, 0.0, 20.0]]))
    assert "20 mm to the patient's left" in found and "15 mm towards the head" in found
    assert "off the beam's centre" not in lines(torch.zeros(1, 3)) and "off the beam's centre" not in lines(None)


def test_placed_projects_a_patient_centred_point_where_the_films_show_the_patient():
    shift = torch.tensor([10.0, -15.0, 20.0], dtype=torch.float64)  # (d, h, w) mm
    moved = placed(GEOMETRY, shift)
    same = placed(GEOMETRY, torch.zeros(3))
    for view in GEOMETRY.views:
        depth_axis = 1 if view == "pa" else 2
        points = torch.rand(50, 3, dtype=torch.float64) * 200 - 100
        assert all(torch.equal(a, b) for a, b in zip(same.project_points(points, view),
                                                       GEOMETRY.project_points(points, view)))
        across = shift.clone()
        across[depth_axis] = 0  # along the view's rays a shift only magnifies: left to the other film
        points[:, depth_axis] = 0  # at the isocentre's depth the detector offset is exact ...
        want, got = GEOMETRY.project_points(points + across, view), moved.project_points(points, view)
        assert torch.allclose(got[0], want[0], atol=1e-9) and torch.allclose(got[1], want[1], atol=1e-9)
        points[:, depth_axis] = 100.0  # ... and 100 mm off it, within (m(z) / m_iso - 1) x the shift
        want, got = GEOMETRY.project_points(points + across, view), moved.project_points(points, view)
        m_iso, m_z = 1800 / 1650, GEOMETRY.magnification(view, torch.tensor(100.0))
        bound = float((m_z / m_iso - 1).abs() * m_iso * 20.0 / GEOMETRY.det_pixel_mm) + 1e-9
        assert float((got[1] - want[1]).abs().max()) <= bound
        assert float((got[1] - want[1]).abs().max()) < float((GEOMETRY.project_points(points, view)[1] - want[1]).abs().min())


class _Recorder(torch.nn.Module):
    """A stand-in network: returns `volume` (and a log-variance) and remembers the geometry it lifted through."""

    def __init__(self, geometry, volume, log_var):
        super().__init__()
        self.geometry, self.volume, self.log_var, self.seen = geometry, volume, log_var, []

    def set_geometry(self, geometry):
        self.geometry = geometry

    def forward(self, xrays):
        self.seen.append(self.geometry)
        return {"volume": self.volume, "log_var": self.log_var}


def test_a_patient_found_off_centre_is_relifted_and_the_better_refinement_kept(patient):
    from xray2ct.engine.refining import refine_placed

    truth, centred, off, mu, log_var = patient
    settings, cpu = RefineConfig(steps=40), torch.device("cpu")

    def run(model, films, s=settings):
        return refine_placed(model, cpu, films, mu, log_var, GEOMETRY, GEOMETRY, (True, True), s)

    # a second pass that sees the patient better (here: the truth) is kept ...
    better = _Recorder(GEOMETRY, truth, log_var)
    result, network, _ = run(better, off)
    assert len(better.seen) == 1 and better.geometry is GEOMETRY  # ran once; the model's own geometry is back
    col = better.seen[0].setup("pa").det_offset_mm[1]
    assert -24.0 * 1800 / 1650 <= col <= -16.0 * 1800 / 1650  # lifted where the films show it: ~20 mm left
    once = run(better, off, dataclasses.replace(settings, relift=False))[0]
    assert torch.equal(network, truth) and float(psnr(result.volume, truth)) > float(psnr(once.volume, truth))
    # ... one that explains the films worse (a flat volume) is not
    worse = _Recorder(GEOMETRY, torch.full_like(mu, 0.25), log_var)
    result, network, _ = run(worse, off)
    assert len(worse.seen) == 1 and torch.equal(network, mu)
    # a centred patient, or relift turned off: refined once, the network not run again
    for films, s in ((centred, settings), (off, dataclasses.replace(settings, relift=False))):
        assert torch.equal(run(worse, films, s)[1], mu) and len(worse.seen) == 1
    with pytest.raises(ConfigError, match="relift"):
        config_from_dict({"refine": {"relift": "yes"}})


class _HalfFollower(_Recorder):
    """A network that follows a shifted patient half-way when it lifts through the model's own
    geometry (`off_volume`), and reconstructs the patient's frame once lifted where the films
    show the patient (any detector offset)."""

    def __init__(self, geometry, off_volume, volume, log_var):
        super().__init__(geometry, volume, log_var)
        self.off_volume = off_volume

    def forward(self, xrays):
        self.seen.append(self.geometry)
        lifted_at_patient = self.geometry.setup("pa").det_offset_mm != (0.0, 0.0)
        return {"volume": self.volume if lifted_at_patient else self.off_volume, "log_var": self.log_var}


def test_a_patient_the_network_half_follows_is_relifted_below_the_shift_gate(patient):
    from xray2ct.engine.refining import refine_placed

    truth, centred, off, mu, log_var = patient  # `off`: the films show the patient 20 mm to the left
    pad = pad_voxels(40.0, GEOMETRY)
    followed = shifted(mu, torch.tensor([0.0, 0.0, 13.0]), GEOMETRY, pad)[..., pad:-pad, pad:-pad]  # 13 of the 20 mm
    settings, cpu = RefineConfig(steps=40), torch.device("cpu")
    assert float(fit_shift(followed, off, GEOMETRY, settings)[0].abs().max()) == 0  # under the gate: nothing kept

    def run(s):
        net = _HalfFollower(GEOMETRY, followed, mu, log_var)
        return net, refine_placed(net, cpu, off, followed, log_var, GEOMETRY, GEOMETRY, (True, True), s)

    net, (result, network, _) = run(settings)
    # the first pass is the volume given; relifted first at the raw ~7 mm, then where that pass found the patient
    assert len(net.seen) == 2 and torch.equal(network, mu)
    first, second = (g.setup("pa").det_offset_mm[1] * 1650 / 1800 for g in net.seen)
    assert -11.0 <= first <= -3.0 and -24.0 <= second <= -16.0
    assert result.shift_mm is not None and 16.0 <= float(result.shift_mm[0, 2]) <= 24.0
    net0, (once, _, _) = run(dataclasses.replace(settings, relift_rounds=0))
    assert not net0.seen  # relift_rounds 0: below the gate the network is not run again
    assert float(psnr(result.volume, truth)) > float(psnr(once.volume, truth)) + 1.0
    with pytest.raises(ConfigError, match="relift_rounds"):
        config_from_dict({"refine": {"relift_rounds": -1}})


def test_the_placement_search_moves_a_shift_the_fit_left_short(patient, monkeypatch):
    """A fit that fell 10 mm short (a network half-following the patient): refining again 5 and
    10 mm either side finds where the films show the patient, by the refined image error."""
    import xray2ct.refine as refine_module
    from xray2ct.refine import search_placement

    truth, centred, off, mu, log_var = patient  # `off`: 20 mm to the patient's left
    settings = RefineConfig(steps=60)
    short = torch.tensor([[0.0, 0.0, 10.0]])
    with monkeypatch.context() as m:
        m.setattr(refine_module, "fit_shift", lambda *a, **k: (short.clone(), short.clone()))
        first = refine(mu, log_var, off, GEOMETRY, settings)
    assert first.shift_mm.tolist() == short.tolist()
    found = search_placement(first, mu, log_var, off, GEOMETRY, settings)
    assert found.shift_mm.tolist() == [[0.0, 0.0, 20.0]]  # 10 + 2 x 5 mm
    assert found.unexplained < first.unexplained and found.seconds > first.seconds
    assert float(psnr(found.volume, truth)) > float(psnr(first.volume, truth)) + 1.0
    # off, or nothing kept to search around: the refinement given comes back
    assert search_placement(first, mu, log_var, off, GEOMETRY, dataclasses.replace(settings, shift_search_mm=0.0)) is first
    plain = refine(mu, log_var, centred, GEOMETRY, settings)
    assert search_placement(plain, mu, log_var, centred, GEOMETRY, settings) is plain
    with pytest.raises(ConfigError, match="shift_search_mm"):
        config_from_dict({"refine": {"shift_search_mm": 50.0}})
