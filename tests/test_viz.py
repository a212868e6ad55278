"""Plots from training runs: the learning curve of one run or several."""

import numpy as np
import pytest

from xray2ct import viz


def _csv(path, rows, timed=True):
    head = "step,epoch,elapsed_s,psnr,ssim3d,mae_hu" if timed else "step,epoch,psnr,ssim3d,mae_hu"
    lines = [head] + [
        f"{s},{s // 100},{t},{p},{q},50" if timed else f"{s},{s // 100},{p},{q},50" for s, t, p, q in rows
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def captured(monkeypatch):
    figs = []
    monkeypatch.setattr(viz, "save_figure", lambda fig, path: figs.append((fig, path)))
    return figs


def test_learning_curves_of_two_runs_against_minutes(tmp_path, captured):
    a = _csv(tmp_path / "a.csv", [(100, 60, 22.0, 0.75), (200, 120, 24.0, 0.84)])
    b = _csv(tmp_path / "b.csv", [(100, 90, 23.0, 0.80)])
    viz.plot_learning_curve({"run a": a, "run b": b}, tmp_path / "c.png")
    (fig, path), = captured
    psnr, ssim = fig.axes[:2]
    assert [line.get_label() for line in psnr.lines] == ["run a", "run b"]
    np.testing.assert_allclose(psnr.lines[0].get_xdata(), [1.0, 2.0])  # seconds -> minutes
    np.testing.assert_allclose(psnr.lines[0].get_ydata(), [22.0, 24.0])
    np.testing.assert_allclose(ssim.lines[1].get_ydata(), [0.80])
    assert psnr.get_xlabel() == "training time (min)"


def test_run_without_times_is_plotted_against_steps_and_png_written(tmp_path):
    run = _csv(tmp_path / "m.csv", [(100, 0, 22.0, 0.75), (200, 0, 24.0, 0.84)], timed=False)
    viz.plot_learning_curve(run, tmp_path / "c.png", title="one run")
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_orientation_labels_name_the_patient_side_at_each_edge_of_the_slice():
    # radiological convention: axial seen from the feet (patient right on the image's left), anterior up;
    # coronal head up, right on the left; sagittal head up, anterior on the left
    assert viz.orientation_labels("axial") == {"top": "A", "bottom": "P", "left": "R", "right": "L"}
    assert viz.orientation_labels("coronal") == {"top": "S", "bottom": "I", "left": "R", "right": "L"}
    assert viz.orientation_labels("sagittal") == {"top": "S", "bottom": "I", "left": "A", "right": "P"}
    # and they agree with the pixels plane_slice returns: index 0 of d, h, w is head, front, patient right
    first = {"S": 0, "A": 1, "R": 2}
    shape = (4, 5, 6)
    for plane in viz.PLANES:
        labels = viz.orientation_labels(plane)
        for axis_side, axis in first.items():
            if axis == viz.PLANE_AXIS[plane]:
                continue
            coord = np.broadcast_to(np.arange(shape[axis]).reshape([-1 if a == axis else 1 for a in range(3)]), shape)
            img = viz.plane_slice(coord, plane)
            edges = {"top": img[0], "bottom": img[-1], "left": img[:, 0], "right": img[:, -1]}
            assert [e for e, v in edges.items() if (v == 0).all()] == [k for k, s in labels.items() if s == axis_side]


def test_preview_writes_the_patient_sides_on_every_slice(tmp_path):
    """The preview PNG carries R/L, A/P, S/I at the edges (yellow letters) as the viewer does."""
    from PIL import Image

    from xray2ct.engine.outputs import save_preview

    hu = np.full((16, 16, 16), -1000.0, np.float32)
    plain, labelled = tmp_path / "plain.png", tmp_path / "labelled.png"
    from xray2ct.viz import PLANES, plane_slice, save_montage

    save_montage(plain, [{"image": plane_slice(hu, p), "vmin": -1000, "vmax": 1000} for p in PLANES])
    save_preview(labelled, hu)

    def yellow(path):
        rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
        return int(((rgb[..., 0] > 200) & (rgb[..., 1] > 170) & (rgb[..., 2] < 140)).sum())

    assert yellow(plain) == 0 and yellow(labelled) > 100
