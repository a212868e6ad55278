"""The robustness suite's pieces: the grid, the patient's placement, the known geometry."""
import numpy as np
import pytest
import torch

from xray2ct.config import GeometryConfig
from xray2ct.robustness import DETECTOR_PX, Point, grid, known_geometry, positioned, render


def test_grid_covers_the_issue():
    points = grid()
    assert {p.sdd for p in points} == {1000.0, 1500.0, 1800.0} and {p.detector_mm for p in points} == {430.0, None}
    assert {p.shift_mm for p in points} == {0.0, 20.0, -20.0} and {p.turn_deg for p in points} == {0.0, 3.0, -3.0}
    assert {p.frontal for p in points} == {"pa", "ap"} and len(points) == 36


def test_patient_shift_moves_the_body_without_losing_it():
    hu = np.full((4, 6, 6), -1000.0)
    hu[1:3, 2:4, 1:3] = 0.0
    moved = positioned(hu, 10.0, Point(1800.0, 430.0, shift_mm=20.0))
    assert moved.shape == (4, 6, 10)
    cols = np.nonzero((moved > -1000).any(axis=(0, 1)))[0]
    assert list(cols) == [5, 6]  # body at w 1..2 in a 6-wide field -> 3..4 in the padded 10-wide one -> +2 voxels
    with pytest.raises(ValueError, match="whole number"):
        positioned(hu, 10.0, Point(1800.0, 430.0, shift_mm=15.0))


def test_known_geometry_projects_like_the_film():
    """A point lands at the same place on the model's image as on the 256² film it was rendered on."""
    import xray2ct

    nominal = GeometryConfig().build(32, 128)
    p = Point(1500.0, 430.0, frontal="ap")
    g = known_geometry(p, 430.0 / DETECTOR_PX, 128, nominal)
    film = xray2ct.Geometry(volume_shape=(32,) * 3, voxel_mm=10.0, source_iso_mm=p.sod, source_det_mm=p.sdd,
                            det_shape=(DETECTOR_PX,) * 2, det_pixel_mm=430.0 / DETECTOR_PX, views=("ap", "lat"))
    pts = torch.randn(20, 3, dtype=torch.float64) * 80
    for view in ("ap", "lat"):
        fr, fc, _ = film.project_points(pts, view)
        mr, mc, _ = g.project_points(pts, view)
        torch.testing.assert_close(mr, (fr + 0.5) / 2 - 0.5)  # 256 -> 128 px
        torch.testing.assert_close(mc, (fc + 0.5) / 2 - 0.5)


def test_render_gives_films_in_range():
    hu = np.full((8, 8, 8), -1000.0)
    hu[2:6, 2:6, 2:6] = 300.0
    films, pitch = render(hu, 40.0, Point(1000.0, None, turn_deg=3.0), None)
    assert films.shape == (2, DETECTOR_PX, DETECTOR_PX) and 0 <= films.min() and films.max() <= 1
    assert pitch > 0


def test_several_weights_share_one_table_with_their_own_nominal(monkeypatch, tmp_path):
    import xray2ct.robustness as R

    def fake(checkpoint, device, n, quick, refine=False):
        base = 29.0 if checkpoint == "new" else 28.0
        points = [{"label": p.label(), "known_psnr": [base - 0.5 * i] * n, "assumed_psnr": [20.0] * n,
                   "known_ssim": [0.9] * n, "assumed_ssim": [0.8] * n} for i, p in enumerate(grid(quick=True))]
        return {"checkpoint": checkpoint, "size": 32, "xray_size": 128, "nominal": {"psnr": [base] * n, "ssim": [0.9] * n},
                "points": points}

    monkeypatch.setattr(R, "measure", fake)
    result = R.robustness_suite(["old", "new"], n=2, quick=True, images_dir=tmp_path / "images")
    md = result.markdown
    assert "| acquisition | W1 known | W2 known | W1 − its nominal | W2 − its nominal |" in md
    assert "| nominal (training-geometry DRRs) | 28.00 | 29.00 | 0.00 | 0.00 |" in md
    assert "| 1800 mm, 430 mm, AP | 27.50 | 28.50 | -0.50 | -0.50 |" in md
    assert "W1: `old`" in md and "goal met" in md
    assert result.images and result.images[0].is_file()


def test_refined_scores_get_their_own_table_against_the_refined_nominal(monkeypatch):
    import xray2ct.robustness as R

    def fake(checkpoint, device, n, quick, refine=False):
        assert refine
        points = [{"label": p.label(), "known_psnr": [21.0] * n, "assumed_psnr": [18.0] * n, "known_ssim": [0.8] * n,
                   "assumed_ssim": [0.7] * n, "refined_psnr": [23.0 - 1.5 * i] * n}
                  for i, p in enumerate(grid(quick=True))]
        return {"checkpoint": checkpoint, "size": 32, "xray_size": 128, "points": points,
                "nominal": {"psnr": [22.0] * n, "ssim": [0.8] * n, "refined_psnr": [24.0] * n}}

    monkeypatch.setattr(R, "measure", fake)
    md = R.robustness_suite(None, n=2, quick=True, refine=True).markdown
    assert "grid mean 22.25 dB (-1.75), worst 21.50 dB (-2.50): goal not met" in md
    assert "| 1800 mm, 430 mm, AP | 21.00 | 21.50 | -2.50 |" in md


@pytest.mark.slow  # refines 6 cases with the bundled weights
def test_refined_measure_runs_with_the_bundled_weights():
    from xray2ct.robustness import measure

    data = measure(None, n=2, quick=True, refine=True)
    assert len(data["nominal"]["refined_psnr"]) == 2 and all(len(q["refined_psnr"]) == 2 for q in data["points"])
    assert np.mean(data["nominal"]["refined_psnr"]) > np.mean(data["nominal"]["psnr"])  # refinement helps at nominal
