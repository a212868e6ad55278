import pytest
import torch

from xray2ct import Geometry, project
from xray2ct.physics.hu import hu_to_mu, hu_to_unit, mu_to_hu, unit_to_hu
from xray2ct.physics.radiograph import RadiographStyle, drr_to_radiograph, robust_normalize


def test_hu_mu_round_trip_and_anchors():
    hu = torch.tensor([-1000.0, 0.0, 1000.0, 40.0])
    mu = hu_to_mu(hu, mu_water=0.02)
    torch.testing.assert_close(mu, torch.tensor([0.0, 0.02, 0.04, 0.0208]))
    torch.testing.assert_close(mu_to_hu(mu), hu)
    assert hu_to_mu(torch.tensor(-1024.0)).item() == 0.0  # clipped, never negative


def test_unit_window_is_x2ctgan():
    n = hu_to_unit(torch.tensor([-2000.0, -1024.0, 226.0, 1476.0, 3000.0]))
    torch.testing.assert_close(n, torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
    torch.testing.assert_close(unit_to_hu(n[1:4]), torch.tensor([-1024.0, 226.0, 1476.0]))


def test_robust_normalize_uses_percentiles_per_image():
    img = torch.linspace(0, 1, 10001).reshape(1, 1, 1, 10001).repeat(2, 1, 1, 1)
    img[1] = img[1] * 100 + 5
    img[0, 0, 0, -1] = 1e6  # a burnt-out pixel must not set the window
    out = robust_normalize(img)
    assert out.min() == 0 and out.max() == 1
    assert out[0, 0, 0, 5000].item() == pytest.approx(0.5, abs=0.01)
    assert out[1, 0, 0, 5000].item() == pytest.approx(0.5, abs=0.01)


def test_radiograph_bones_bright():
    g = Geometry(volume_shape=(24, 24, 24), voxel_mm=10.0, det_shape=(32, 32))
    hu = torch.full((1, 1, 24, 24, 24), 40.0)
    hu[..., 10:14, 14:20, 10:14] = 1200.0  # a bone column, posterior midline
    img = drr_to_radiograph(project(hu_to_mu(hu), g))
    pa = img[0, 0]
    assert pa[12, 15:17].mean() > pa[12, 2:4].mean() + 0.2


def test_style_identity_and_determinism():
    img = torch.rand(3, 1, 40, 40)
    identity = RadiographStyle(blur_px=0, scatter=0, noise=0, gamma=(1, 1), contrast=(1, 1), rotate_deg=0)
    torch.testing.assert_close(identity(img), img)
    style = RadiographStyle()
    a = style(img, torch.Generator().manual_seed(3))
    b = style(img, torch.Generator().manual_seed(3))
    c = style(img, torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b)
    assert (a - c).abs().mean() > 1e-3
    assert a.min() >= 0 and a.max() <= 1


def test_scatter_lowers_contrast():
    img = torch.zeros(1, 1, 64, 64)
    img[..., 24:40, 24:40] = 1.0
    fog = RadiographStyle(blur_px=0, scatter=0.5, noise=0, gamma=(1, 1), contrast=(1, 1), rotate_deg=0)
    out = torch.stack([fog(img, torch.Generator().manual_seed(s)) for s in range(5)])
    assert (out[..., 32, 32] - out[..., 2, 2]).max() < 1.0


@pytest.mark.parametrize("n", [1, 2, 7, 4096])
def test_percentile_equals_torch_quantile(n):
    from xray2ct.physics.radiograph import percentile

    x = torch.rand(3, 2, n, generator=torch.Generator().manual_seed(n)) ** 3
    for pct in (0.0, 0.5, 12.5, 50.0, 99.5, 100.0):
        torch.testing.assert_close(percentile(x, pct), torch.quantile(x, pct / 100, dim=-1), rtol=0, atol=1e-6)
