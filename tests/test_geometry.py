import itertools

import pytest
import torch

from xray2ct import Geometry


def test_default_detector_covers_volume_tightly():
    g = Geometry(volume_shape=(40, 48, 56), voxel_mm=(2.0, 2.5, 3.0), det_shape=(100, 100))
    half = [n * s / 2 for n, s in zip(g.volume_shape, g.voxel_mm)]
    corners = torch.tensor(list(itertools.product(*[(-h, h) for h in half])), dtype=torch.float64)
    extreme = 0.0
    for view in g.views:
        row, col, _ = g.project_points(corners, view)
        for px, n in ((row, g.det_shape[0]), (col, g.det_shape[1])):
            assert px.min() >= -0.5 - 1e-6 and px.max() <= n - 0.5 + 1e-6
            extreme = max(extreme, px.max().item() - (n - 1) / 2)
    assert extreme == pytest.approx(50.0, abs=1e-6)  # the widest corner touches the detector edge


def test_ray_in_slice_inverts_project_points():
    g = Geometry(volume_shape=(16, 20, 24), voxel_mm=3.0, det_shape=(12, 14))
    for view in g.views:
        d_mm, c_mm, _ = g.ray_in_slice(view, dtype=torch.float64)
        k, rows, cols = d_mm.shape[0], g.det_shape[0], g.det_shape[1]
        from xray2ct.geometry import get_view

        v = get_view(view)
        pts = torch.zeros(k, rows, cols, 3, dtype=torch.float64)
        pts[..., 0] = d_mm.expand(k, rows, cols)
        pts[..., v.col_axis] = c_mm.expand(k, rows, cols)
        pts[..., v.depth_axis] = g.axis_mm(v.depth_axis, dtype=torch.float64)[:, None, None]
        row, col, depth = g.project_points(pts, view)
        torch.testing.assert_close(row, torch.arange(rows, dtype=torch.float64)[None, :, None].expand_as(row))
        torch.testing.assert_close(col, torch.arange(cols, dtype=torch.float64)[None, None, :].expand_as(col))
        torch.testing.assert_close(depth[:, 0, 0], torch.linspace(0, 1, k, dtype=torch.float64))


def test_detector_grid_is_resolution_independent():
    g = Geometry(volume_shape=(8, 8, 8), voxel_mm=4.0, det_shape=(64, 64))
    # pixel 0 of a 64-px detector lies inside the first pixel of an 8x-strided feature map
    xy = g.detector_to_grid(torch.tensor(0.0), torch.tensor(63.0))
    assert xy[0].item() == pytest.approx(1 - 1 / 64) and xy[1].item() == pytest.approx(-1 + 1 / 64)


@pytest.mark.parametrize(
    "kwargs",
    [dict(volume_shape=(0, 4, 4)), dict(voxel_mm=-1.0), dict(source_iso_mm=1000.0), dict(det_shape=(3,)),
     dict(views=("pa", "xx"))],
)
def test_invalid_geometry_is_named(kwargs):
    with pytest.raises(ValueError):
        Geometry(**kwargs)


def test_scaled_keeps_field_of_view():
    g = Geometry(volume_shape=(64, 64, 64), voxel_mm=5.0, det_shape=(128, 128))
    s = g.scaled((16, 16, 16), det_shape=(128, 128))
    assert s.voxel_mm == (20.0, 20.0, 20.0) and s.det_pixel_mm == pytest.approx(g.det_pixel_mm)
