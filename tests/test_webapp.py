"""The web app's functions, without a browser: reconstruct, bad input, the slice views."""
import numpy as np
import pytest

from xray2ct.engine.demo import bundled_examples
from xray2ct.errors import UserError
from xray2ct.webapp import AppInputError, Reconstructor, Result, build_app, render_views, summary_markdown


@pytest.fixture(scope="module")
def recon(tmp_path_factory):
    return Reconstructor(workdir=tmp_path_factory.mktemp("serve"))


def test_bundled_example_gives_files_metrics_and_views(recon):
    import nibabel as nib

    ex = next(e for e in bundled_examples() if e.ct is not None)
    steps = []
    result = recon(str(ex.pa), str(ex.lat), progress=lambda f, desc: steps.append(f))
    assert steps == sorted(steps) and 0 < steps[0] and steps[-1] < 1
    n = recon.cfg.model.volume_size
    img = nib.load(result.files["volume"])
    assert img.shape == (n, n, n) and np.allclose(img.header.get_zooms(), recon.cfg.geometry.fov_mm / n)
    assert np.abs(np.asarray(img.dataobj) - np.rint(result.hu)).max() <= 1  # stored as int16 HU
    assert set(result.files) == {"volume", "uncertainty", "surface", "report"}
    assert all(p.is_file() and p.stat().st_size > 0 for p in result.files.values())
    assert result.metrics["PSNR (dB)"] > 24  # the bundled weights on their own example (mean volume: ~21)
    assert "Done in" in summary_markdown(result) and "PSNR" in summary_markdown(result)


def test_unknown_upload_has_no_metrics(recon, tmp_path):
    import shutil

    ex = bundled_examples()[0]
    pa = tmp_path / "mine_pa.png"
    shutil.copy(ex.lat, pa)  # not a bundled PA: no ground truth to compare with
    assert recon(str(pa), str(ex.lat)).metrics == {}


def test_bad_inputs_are_readable_errors(recon, tmp_path, monkeypatch):
    ex = bundled_examples()[0]
    with pytest.raises(AppInputError, match="lateral X-ray is missing"):
        recon(str(ex.pa), None)
    with pytest.raises(AppInputError, match="PA X-ray is missing"):
        recon(None, str(ex.lat))
    text = tmp_path / "notes_pa.png"
    text.write_text("not an image")
    with pytest.raises(UserError, match="notes_pa.png") as info:
        recon(str(text), str(ex.lat))
    assert str(tmp_path) not in str(info.value)  # the upload folder is the server's business
    flat = tmp_path / "flat_lat.npy"
    np.save(flat, np.full((64, 64), 7.0))
    with pytest.raises(UserError, match="constant"):
        recon(str(ex.pa), str(flat))
    monkeypatch.setattr("xray2ct.data.xrayio.MAX_PIXELS", 1000)  # a "huge" image: refused from its header
    with pytest.raises(UserError, match="megapixels"):
        recon(str(ex.pa), str(ex.lat))
    monkeypatch.undo()
    monkeypatch.setattr("xray2ct.webapp.MAX_UPLOAD_MB", 0.001)
    with pytest.raises(AppInputError, match="limit is"):
        recon(str(ex.pa), str(ex.lat))


def test_render_views_window_overlay_and_clipping():
    hu = np.linspace(-1000, 1500, 16 ** 3, dtype=np.float32).reshape(16, 16, 16)
    result = Result(hu, np.full_like(hu, 50.0), (2.0,) * 3, {}, 0.1)
    soft = render_views(result, "soft tissue", False, (8, 8, 8))
    assert [v.shape for v in soft] == [(256, 256, 3)] * 3 and all(v.dtype == np.uint8 for v in soft)
    bone = render_views(result, "bone", False, (8, 8, 8))
    assert not np.array_equal(soft[0], bone[0])
    overlay = render_views(result, "soft tissue", True, (8, 8, 8))
    assert not np.array_equal(soft[0], overlay[0])
    grey = soft[0].reshape(-1, 3)
    assert (grey[:, 0] == grey[:, 1]).all()  # no overlay: grey; overlay: coloured
    np.testing.assert_array_equal(render_views(result, "lung", False, (99, -5, 8))[0],
                                  render_views(result, "lung", False, (15, 0, 8))[0])
    assert render_views(None, "lung", False, (0, 0, 0)) == [None, None, None]


def test_app_builds_with_the_documented_controls(recon):
    app = build_app(recon)
    ids = {getattr(b, "elem_id", None) for b in app.blocks.values()}
    assert {"pa-upload", "lat-upload", "reconstruct", "downloads", "surface", "view-axial"} <= ids


def test_port_in_use_is_a_clear_error():
    import socket

    from xray2ct.webapp import ServeError, serve

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServeError, match=f"127.0.0.1:{port}.*--port"):
            serve(host="127.0.0.1", port=port, block=False)
