"""The web app's functions, without a browser: reconstruct, bad input, the page's messages,
thumbnails and viewer, the server's start and stop."""
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from xray2ct.engine.demo import bundled_examples


def phantom_examples():
    """The bundled phantom DRR pairs (training geometry, refined by default; the DICOM pair is a wide film)."""
    return [e for e in bundled_examples(pairs_only=True) if e.id.startswith("phantom_")]
from xray2ct.errors import UserError
from xray2ct.webapp import (OUTPUTS, AppInputError, Reconstructor, Result, build_app, message_html, respond,
                            thumbnail, viewer_html)


@pytest.fixture(scope="module")
def recon(tmp_path_factory):
    return Reconstructor(workdir=tmp_path_factory.mktemp("serve"))


def test_bundled_example_gives_files_metrics_and_views(recon):
    import nibabel as nib

    ex = next(e for e in phantom_examples() if e.ct is not None)
    steps = []
    result = recon(str(ex.pa), str(ex.lat), progress=lambda f, desc: steps.append(f))
    assert steps == sorted(steps) and 0 < steps[0] and steps[-1] < 1
    n = recon.cfg.model.volume_size
    img = nib.load(result.files["volume"])
    assert img.shape == (n, n, n) and np.allclose(img.header.get_zooms(), recon.cfg.geometry.fov_mm / n)
    assert np.abs(np.asarray(img.dataobj) - np.rint(result.hu)).max() <= 1  # stored as int16 HU
    assert set(result.files) == {"volume", "uncertainty", "surface", "report"}
    assert all(p.is_file() and p.stat().st_size > 0 for p in result.files.values())
    assert result.metrics["PSNR (dB)"] > 21  # the bundled weights on their own example (v2 mean volume: ~15)
    assert "Done in" in message_html(result) and "PSNR" in message_html(result)
    assert result.warnings == [] and result.mesh is not None and result.mesh.num_faces > 0


def test_metrics_only_when_both_files_are_the_same_examples(recon):
    """The PA of one bundled example with the lateral of another is not that example: no metrics."""
    a, b = [e for e in phantom_examples() if e.ct is not None][:2]
    assert recon(str(a.pa), str(b.lat)).metrics == {}
    assert recon(str(b.pa), str(a.lat)).metrics == {}
    assert recon(str(b.pa), str(b.lat)).metrics  # the pair itself still is


def test_unknown_upload_has_no_metrics(recon, tmp_path):
    import shutil

    ex = phantom_examples()[0]
    pa = tmp_path / "mine_pa.png"
    shutil.copy(ex.lat, pa)  # not a bundled PA: no ground truth to compare with
    assert recon(str(pa), str(ex.lat)).metrics == {}


def test_bad_inputs_are_readable_errors(recon, tmp_path, monkeypatch):
    ex = phantom_examples()[0]
    with pytest.raises(AppInputError, match="No X-ray uploaded"):
        recon(None, "")
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


def test_two_bad_uploads_are_both_reported(recon, tmp_path):
    text = tmp_path / "notes_pa.png"
    text.write_text("not an image")
    flat = tmp_path / "flat_lat.npy"
    np.save(flat, np.full((64, 64), 7.0))
    with pytest.raises(AppInputError) as info:
        recon(str(text), str(flat))
    pa_problem, lat_problem = info.value.problems
    assert "PA" in pa_problem and "notes_pa.png" in pa_problem
    assert "lateral" in lat_problem and "flat_lat.npy" in lat_problem and "constant" in lat_problem


def test_one_upload_reconstructs_and_says_which_mode(recon):
    ex = next(e for e in phantom_examples() if e.ct is not None)
    for pa, lat, mode, shown in ((str(ex.pa), None, "frontal only", ["PA"]), (None, str(ex.lat), "lateral only", ["lateral"])):
        result = recon(pa, lat, refine=True)
        assert result.mode == mode and f"Views used: {mode}" in message_html(result)
        assert result.metrics == {}  # an example's truth belongs to its pair
        assert np.isfinite(result.hu).all() and result.refinement is not None
        page = result.files["report"].read_text(encoding="utf-8")
        assert "frontal only" in page or "lateral only" in page
        # the physics check compares only the film that was given
        assert all(name in result.projections for name in shown)
    both = recon(str(ex.pa), str(ex.lat), refine=False)
    assert both.mode == "biplanar" and "Views used: PA and lateral" in message_html(both)


def test_a_failed_request_clears_the_result_and_the_message_stays_in_the_page(recon, tmp_path):
    ex = phantom_examples()[0]
    status, viewer, physics, downloads = respond(recon, str(ex.pa), str(ex.lat))
    assert "Done in" in status and "<iframe" in viewer and len(downloads) == 4 and "Physics check" in physics
    junk = tmp_path / "junk_lat.png"
    junk.write_bytes(b"\x89PNG not really")
    status, viewer, physics, downloads = respond(recon, None, str(junk))
    assert 'role="alert"' in status and "junk_lat.png" in status
    assert "<iframe" not in viewer and downloads is None and physics == ""  # the previous volume is gone
    assert OUTPUTS == ("status", "viewer", "physics", "downloads")


def test_refinement_toggle_shows_the_projection_error_before_and_after(recon):
    import re

    ex = phantom_examples()[0]
    status, _, physics, _ = respond(recon, str(ex.pa), str(ex.lat), refine=True)
    before, after = (float(v) for v in re.search(r"DRRs ([0-9.]+e[+-][0-9]+) → ([0-9.]+e[+-][0-9]+)", status).groups())
    assert after < 0.5 * before
    assert "from the network" in physics and "after refinement" in physics and "DRR of the network" in physics
    status, _, physics, _ = respond(recon, str(ex.pa), str(ex.lat), refine=False)
    assert "Not refined" in status and "DRR of the network" not in physics and "DRR of the result" in physics


def test_unexpected_failure_is_a_message_not_a_crash(recon, monkeypatch):
    ex = phantom_examples()[0]
    monkeypatch.setattr("xray2ct.engine.reconstruct.reconstruct_pair", lambda *a, **k: 1 / 0)
    status, viewer, _, downloads = respond(recon, str(ex.pa), str(ex.lat))
    assert "ZeroDivisionError" in status and "server's log" in status and downloads is None


def test_swapped_views_and_the_same_file_twice_warn_in_the_page(recon, tmp_path):
    ex = phantom_examples()[0]
    status, viewer, _, _ = respond(recon, str(ex.lat), str(ex.pa))
    assert "swapped" in status and "Upload the frontal film as the PA" in status and "--pa" not in status
    assert "<iframe" in viewer  # a warning, not a refusal: the user may know better
    copy = tmp_path / "copy.png"
    shutil.copy(ex.pa, copy)
    assert "same image" in respond(recon, str(ex.pa), str(copy))[0]
    assert "Check the inputs" not in respond(recon, str(ex.pa), str(ex.lat))[0]


def test_thumbnails_show_what_the_model_reads_with_the_sides_written(tmp_path):
    ex = phantom_examples()[0]
    pa = thumbnail(str(ex.pa), "PA")
    assert pa.shape == (256, 256, 3) and pa.dtype == np.uint8
    yellow = (pa[..., 0] > 200) & (pa[..., 1] > 150) & (pa[..., 2] < 120)  # the side letters
    left, right = yellow[:, :40].sum(), yellow[:, -40:].sum()
    assert left > 5 and right > 5  # R on the left, L on the right
    lat = thumbnail(str(ex.lat), "lateral")
    assert not np.array_equal(pa, lat)
    (tmp_path / "x.png").write_text("no")
    assert thumbnail(str(tmp_path / "x.png"), "PA") is None and thumbnail(None, "lateral") is None


def test_viewer_is_the_reports_viewer_in_an_iframe():
    import html as html_lib
    import re

    hu = np.full((16, 16, 16), -800.0, np.float32)
    hu[4:12, 6:10, 6:10] = 1000.0
    result = Result(hu, np.full_like(hu, 50.0), (2.0,) * 3, {}, 0.1)
    frame = viewer_html(result)
    page = html_lib.unescape(re.search(r'srcdoc="([^"]*)"', frame).group(1))
    assert 'class="embedded"' in page and 'id="c-sagittal"' in page and 'id="wl-c"' in page
    assert 'id="legend"' in page and 'id="readout"' in page
    assert "Input X-rays" not in page  # the viewer alone: the inputs are beside it in the app
    assert "<iframe" not in viewer_html(None)


def test_app_builds_with_the_documented_controls(recon):
    app = build_app(recon)
    ids = {getattr(b, "elem_id", None) for b in app.blocks.values()}
    assert {"pa-upload", "lat-upload", "pa-thumb", "lat-thumb", "reconstruct", "status", "viewer", "downloads"} <= ids


def test_port_in_use_is_a_clear_error_and_leaves_no_work_folder(tmp_path, monkeypatch):
    import socket
    import tempfile

    from xray2ct.webapp import ServeError, serve

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the server's work folder goes
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServeError, match=f"127.0.0.1:{port}.*--port"):
            serve(host="127.0.0.1", port=port, block=False)
    assert not list(tmp_path.glob("xray2ct-serve-*"))


def test_serve_is_quiet_about_sharing_and_removes_its_work_folder_on_sigterm(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "serve.log"
    work = tmp_path / "tmp"
    work.mkdir()
    env = {**os.environ, "TMPDIR": str(work), "GRADIO_ANALYTICS_ENABLED": "False"}
    exe = os.path.join(os.path.dirname(sys.executable), "xray2ct")
    with open(log, "w") as out:
        proc = subprocess.Popen([exe, "serve", "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read()
                break
            except OSError:
                assert proc.poll() is None, log.read_text()
                time.sleep(0.5)
        assert len(list(work.glob("xray2ct-serve-*"))) == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "share=True" not in text and "public link" not in text, text
    assert f"http://127.0.0.1:{port}" in text  # the CLI still says where it listens
    assert not list(work.glob("xray2ct-serve-*")), text
